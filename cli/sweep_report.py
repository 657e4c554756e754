"""Sweep results: sweep.csv and sweep.json, privacy-utility plots and a markdown report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display is needed or used
import matplotlib.pyplot as plt  # noqa: E402

ATTACK_METRICS = ("mse", "psnr", "ssim", "mean_image_mse")
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
    defence with no run at or above a floor gets a row whose "run" is None.
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
                table.append({"drop": drop, "floor": floor, **pick})
            else:
                table.append({"drop": drop, "floor": floor, "defense_name": defense, "run": None})
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


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(cells) + " |" for cells in rows), ""]


def _number(row: dict[str, object], key: str, digits: int = 4) -> str:
    value = row.get(key)
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _results_section(rows: list[dict[str, object]]) -> list[str]:
    """Return the table of every run, by defence and then by falling accuracy, and a warning about failed attacks."""
    ordered = sorted(rows, key=lambda r: (str(r["defense_name"]), -float(r["test_accuracy"]), str(r["run"])))
    header = ["run", "defence", "test accuracy", "attack MSE", "mean-image MSE", "attack SSIM", "attack PSNR (dB)"]
    cells = [
        [
            str(row["run"]), str(row["defense_name"]), _number(row, "test_accuracy"), _number(row, "white_box_mse"),
            _number(row, "white_box_mean_image_mse"), _number(row, "white_box_ssim"), _number(row, "white_box_psnr", 2),
        ]
        for row in ordered
    ]
    lines = _table(header, cells)
    beaten = [row for row in ordered if _attack_failed(row)]
    if beaten:
        lines += [
            f"**Warning:** in {len(beaten)} of {len(rows)} runs the attack's MSE is no lower than that of the mean image "
            "(the average auxiliary image, the same for every input): there the attack learned nothing, and ranking those runs "
            "by attack MSE compares failures. Train longer (more epochs, more training images) or give the decoder more "
            f"epochs. Runs: {', '.join(str(row['run']) for row in beaten)}.", "",
        ]
    return lines


def _attack_failed(row: dict[str, object]) -> bool:
    mse, baseline = row.get("white_box_mse"), row.get("white_box_mean_image_mse")
    return isinstance(mse, (int, float)) and isinstance(baseline, (int, float)) and mse >= baseline


def _matched_section(rows: list[dict[str, object]]) -> list[str]:
    """Return the table of the most private run per accuracy floor and defence (see matched_accuracy)."""
    matched = matched_accuracy(rows)
    if not matched:
        return []
    lines = [
        "## Privacy at matched accuracy", "",
        "For each accuracy floor (a drop below the sweep's best test accuracy), the run of each defence with the highest "
        "white-box attack MSE among its runs at or above the floor. Extra parameters are the defence's own trainable "
        "weights on the client; training time is the client process's wall time from start to exit (training, evaluation "
        "and checkpoints).", "",
    ]
    header = ["floor", "defence", "run", "test accuracy", "attack MSE", "mean-image MSE", "attack SSIM", "extra parameters", "training (s)"]
    cells = []
    for row in matched:
        floor = f"{row['floor']:.4f} (best - {row['drop']:g})"
        if row["run"] is None:
            cells.append([floor, str(row["defense_name"]), "no run at or above the floor", *["-"] * 6])
            continue
        cells.append([
            floor, str(row["defense_name"]), str(row["run"]), _number(row, "test_accuracy"), _number(row, "white_box_mse"),
            _number(row, "white_box_mean_image_mse"), _number(row, "white_box_ssim"),
            f"{int(row.get('defense_parameters') or 0):,}", _number(row, "training_s", 0),
        ])
    return lines + _table(header, cells)


def _grids_section(rows: list[dict[str, object]], out: Path) -> list[str]:
    """Copy one reconstruction grid per defence into out/grids and return the section that shows them."""
    grids = out / "grids"
    grids.mkdir(exist_ok=True)
    lines = [
        "## Reconstructions", "",
        f"Per defence, its most private run (highest white-box attack MSE) within {GRID_DROP:g} of the sweep's best test "
        "accuracy, or its most accurate run when none comes that close: originals above white-box reconstructions.", "",
    ]
    comparable = {str(row["defense_name"]): row for row in matched_accuracy(rows, drops=(GRID_DROP,)) if row["run"] is not None}
    for defense in sorted({str(row["defense_name"]) for row in rows}):
        chosen = comparable.get(defense)
        reason = f"most private within {GRID_DROP:g} of the best accuracy"
        if chosen is None:
            chosen = max((row for row in rows if row["defense_name"] == defense), key=lambda r: float(r["test_accuracy"]))
            reason = f"most accurate; no run within {GRID_DROP:g} of the best accuracy"
        source = out / "runs" / str(chosen.get("white_box_grid", ""))
        if chosen.get("white_box_grid") and source.is_file():
            shutil.copyfile(source, grids / f"{defense}.png")
            lines += [
                f"**{defense}** ({chosen['run']}, accuracy {chosen['test_accuracy']:.4f}, {reason}):", "",
                f"![{defense}](grids/{defense}.png)", "",
            ]
    return lines


def write_markdown(rows: list[dict[str, object]], out: Path, command: str, skipped: list, failed: list) -> Path:
    """Write sweep.md: the command, a results table, the plots, the matched-accuracy table and one grid per defence."""
    lines = ["# cemsplit sweep", "", f"Command: `{command}`", "", f"{len(rows)} finished runs, {len(failed)} failed, {len(skipped)} skipped.", ""]
    lines += _results_section(rows)
    for plot in ("accuracy_vs_mse.png", "accuracy_vs_ssim.png"):
        if (out / plot).is_file():
            lines += [f"![{plot}]({plot})", ""]
    lines += _matched_section(rows)
    lines += _grids_section(rows, out)
    if skipped:
        lines += ["## Skipped combinations", ""] + [f"- {item['settings']}: {item['reason']}" for item in skipped] + [""]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {item['run']}: see logs/{item['run']}.log" for item in failed] + [""]
    path = out / "sweep.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
