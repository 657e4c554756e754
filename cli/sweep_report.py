"""Sweep results: sweep.csv and sweep.json, privacy-utility plots and a markdown report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display is needed or used
import matplotlib.pyplot as plt  # noqa: E402

ATTACK_METRICS = ("mse", "psnr", "ssim")
ACCURACY_DROPS = (0.01, 0.02, 0.05, 0.10)  # below the sweep's best test accuracy, as fractions
GRID_DROP = 0.05  # reconstruction grids compare defences at most this far below the best accuracy


def collect_rows(runs_dir: Path, settings: dict[str, dict[str, object]]) -> list[dict[str, object]]:
    """Return one flat row per finished run: its grid settings, accuracy and attack scores."""
    rows = []
    for name, values in settings.items():
        report_path = runs_dir / name / "report.json"
        if not report_path.is_file():
            continue
        report = json.loads(report_path.read_text(encoding="utf-8"))
        row: dict[str, object] = {"run": name, **values}
        row["defense_name"] = report["defense"]["name"]
        row["test_accuracy"] = report["test_accuracy"]
        for threat, scores in sorted(report.get("attack", {}).items()):
            for metric in ATTACK_METRICS:
                if metric in scores:
                    row[f"{threat}_{metric}"] = scores[metric]
            if "grid" in scores:
                row[f"{threat}_grid"] = str(Path(name) / scores["grid"])
        row["defense_parameters"] = report["defense"].get("parameters", 0)
        row["training_s"] = report.get("timing", {}).get("training_s")
        row["total_s"] = report.get("timing", {}).get("total_s")
        last_epoch = report.get("epochs", [{}])[-1]
        for key, value in last_epoch.items():
            if isinstance(value, (int, float)) and key not in ("epoch", "step", "test_accuracy"):
                row[f"last_epoch_{key}"] = value
        rows.append(row)
    return rows


def write_tables(rows: list[dict[str, object]], out: Path, skipped: list[dict[str, object]], failed: list[dict[str, object]]) -> None:
    """Write sweep.csv (one row per run) and sweep.json (rows, skipped and failed runs)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    with open(out / "sweep.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "sweep.json").write_text(json.dumps({"runs": rows, "skipped": skipped, "failed": failed}, indent=2), encoding="utf-8")


def pareto_front(points: list[tuple[float, float]], larger_x_is_better: bool) -> list[int]:
    """Return indices of points that no other point beats in both accuracy (y) and privacy (x)."""
    front = []
    for i, (x_i, y_i) in enumerate(points):
        dominated = False
        for j, (x_j, y_j) in enumerate(points):
            if i == j:
                continue
            better_x = x_j >= x_i if larger_x_is_better else x_j <= x_i
            strictly = (x_j != x_i) or (y_j != y_i)
            if better_x and y_j >= y_i and strictly:
                dominated = True
                break
        if not dominated:
            front.append(i)
    return front


def matched_accuracy(rows: list[dict[str, object]], drops: tuple[float, ...] = ACCURACY_DROPS, threat: str = "white_box") -> list[dict[str, object]]:
    """Return, per accuracy floor and defence, the run with the highest attack MSE at or above the floor.

    Floors lie `drops` below the best test accuracy of the sweep (0.02 = 2 percentage points). A
    defence with no run at or above a floor gets no row for it.
    """
    scored = [row for row in rows if isinstance(row.get(f"{threat}_mse"), (int, float))]
    if not scored:
        return []
    best = max(float(row["test_accuracy"]) for row in scored)
    table = []
    for drop in drops:
        floor = best - drop
        for defense in sorted({str(row["defense_name"]) for row in scored}):
            eligible = [row for row in scored if row["defense_name"] == defense and float(row["test_accuracy"]) >= floor - 1e-9]
            if eligible:
                pick = max(eligible, key=lambda row: float(row[f"{threat}_mse"]))
                table.append({"drop": drop, "floor": floor, "defense_name": defense, **pick})
    return table


def plot_tradeoff(rows: list[dict[str, object]], metric: str, path: Path, threat: str = "white_box") -> Path | None:
    """Plot test accuracy against one attack metric, a series per defence, Pareto front marked."""
    column = f"{threat}_{metric}"
    usable = [row for row in rows if isinstance(row.get(column), (int, float))]
    if not usable:
        return None
    larger_is_better = metric != "ssim" and metric != "psnr"  # a private defence has high MSE, low SSIM and PSNR
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    for defense in sorted({str(row["defense_name"]) for row in usable}):
        series = [row for row in usable if row["defense_name"] == defense]
        axes.scatter([row[column] for row in series], [row["test_accuracy"] for row in series], label=defense, s=36)
    points = [(float(row[column]), float(row["test_accuracy"])) for row in usable]
    front = sorted(pareto_front(points, larger_is_better), key=lambda i: points[i][0])
    axes.plot([points[i][0] for i in front], [points[i][1] for i in front], "k--", linewidth=1, label="Pareto front")
    axes.scatter([points[i][0] for i in front], [points[i][1] for i in front], s=120, facecolors="none", edgecolors="black")
    direction = "higher" if larger_is_better else "lower"
    axes.set_xlabel(f"{threat.replace('_', '-')} attack {metric.upper()} ({direction} is more private)")
    axes.set_ylabel("test accuracy")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_markdown(rows: list[dict[str, object]], out: Path, command: str, skipped: list, failed: list) -> Path:
    """Write sweep.md: the command, a results table, the plots and one grid per defence."""
    lines = ["# cemsplit sweep", "", f"Command: `{command}`", "", f"{len(rows)} finished runs, {len(failed)} failed, {len(skipped)} skipped.", ""]
    header = ["run", "defence", "test accuracy", "attack MSE", "attack SSIM", "attack PSNR"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in sorted(rows, key=lambda r: (str(r["defense_name"]), str(r["run"]))):
        cells = [
            str(row["run"]), str(row["defense_name"]), f"{row['test_accuracy']:.4f}",
            *(f"{row.get(f'white_box_{m}', float('nan')):.4f}" for m in ("mse", "ssim", "psnr")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for plot in ("accuracy_vs_mse.png", "accuracy_vs_ssim.png"):
        if (out / plot).is_file():
            lines += [f"![{plot}]({plot})", ""]

    matched = matched_accuracy(rows)
    if matched:
        lines += [
            "## Privacy at matched accuracy", "",
            "For each accuracy floor (a drop below the sweep's best test accuracy), the run of each defence with the highest "
            "white-box attack MSE among its runs at or above the floor. Extra parameters are the defence's own trainable "
            "weights on the client; training time is the client process's wall time from start to exit (training, evaluation "
            "and checkpoints).", "",
        ]
        header = ["floor", "defence", "run", "test accuracy", "attack MSE", "attack SSIM", "extra parameters", "training (s)"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in matched:
            training = row.get("training_s")
            cells = [
                f"{row['floor']:.4f} (best - {row['drop']:g})", str(row["defense_name"]), str(row["run"]),
                f"{row['test_accuracy']:.4f}", f"{row['white_box_mse']:.4f}", f"{row.get('white_box_ssim', float('nan')):.4f}",
                f"{int(row.get('defense_parameters') or 0):,}", f"{training:.0f}" if isinstance(training, (int, float)) else "-",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    grids = out / "grids"
    grids.mkdir(exist_ok=True)
    lines += [
        "## Reconstructions", "",
        f"Per defence, its most private run (highest white-box attack MSE) within {GRID_DROP:g} of the sweep's best test "
        "accuracy, or its most accurate run when none comes that close: originals above white-box reconstructions.", "",
    ]
    comparable = {str(row["defense_name"]): row for row in matched_accuracy(rows, drops=(GRID_DROP,))}
    for defense in sorted({str(row["defense_name"]) for row in rows}):
        chosen = comparable.get(defense) or max((row for row in rows if row["defense_name"] == defense), key=lambda r: float(r["test_accuracy"]))
        source = out / "runs" / str(chosen.get("white_box_grid", ""))
        if chosen.get("white_box_grid") and source.is_file():
            target = grids / f"{defense}.png"
            shutil.copyfile(source, target)
            lines += [f"**{defense}** ({chosen['run']}, accuracy {chosen['test_accuracy']:.4f}):", "", f"![{defense}](grids/{defense}.png)", ""]
    if skipped:
        lines += ["## Skipped combinations", ""] + [f"- {item['settings']}: {item['reason']}" for item in skipped] + [""]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {item['run']}: see logs/{item['run']}.log" for item in failed] + [""]
    path = out / "sweep.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
