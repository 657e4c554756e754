"""The run report: report.json for programs, report.md and a summary table for people."""

from __future__ import annotations

import json
from pathlib import Path

from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import DataSplits, load_splits
from cemsplit.v1 import attacker_pb2


def _dataset_description(config: RunConfig) -> dict[str, object]:
    splits: DataSplits = load_splits(config.data)
    return splits.describe()


def write_report(
    out: Path,
    config: RunConfig,
    client_summary: dict,
    attack: attacker_pb2.AttackReply,
    stats: attacker_pb2.RecorderStats,
    timing: dict[str, float],
    machine: dict[str, object],
) -> dict[str, object]:
    """Write report.json and report.md to out and return the report."""
    white_box = dict(attack.metrics)
    white_box.update(images_scored=attack.images_scored, grid=str(Path(attack.grid_path).relative_to(out)), seconds=attack.seconds)
    mirror = client_summary["mirror"]
    report: dict[str, object] = {
        "test_accuracy": client_summary["test_accuracy"],
        "defense": client_summary["defense"],
        "attack": {"white_box": white_box},
        "recording": {"received": stats.received, "dropped": mirror["dropped"], "enqueued": mirror["enqueued"], "bytes": stats.bytes},
        "timing": timing,
        "dataset": _dataset_description(config),
        "model": config.model.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json"),
        "epochs": client_summary["epochs"],
        "session_id": client_summary["session_id"],
        "machine": machine,
        "files": {
            "config": "config.yaml",
            "metrics": "client/metrics.jsonl",
            "manifest": "client/manifest.jsonl",
            "encoder": "client/encoder.pt",
            "traffic": "attacker/traffic",
            "grid": white_box["grid"],
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")
    return report


def _summary_rows(report: dict) -> list[tuple[str, str]]:
    attack = report["attack"]["white_box"]
    defense = report["defense"]
    settings = ", ".join(f"{key}={value}" for key, value in defense.items() if key != "name")
    return [
        ("defence", f"{defense['name']} ({settings})" if settings else defense["name"]),
        ("test accuracy", f"{report['test_accuracy']:.4f}"),
        ("attack MSE (white-box)", f"{attack['mse']:.5f}"),
        ("attack PSNR, per image", f"{attack['psnr']:.2f} dB"),
        ("attack SSIM", f"{attack['ssim']:.4f}"),
        ("images reconstructed", str(attack["images_scored"])),
        ("records received / dropped", f"{report['recording']['received']} / {report['recording']['dropped']}"),
        ("training time", f"{report['timing']['training_s']:.1f} s"),
        ("attack time", f"{report['timing']['attack_s']:.1f} s"),
        ("total time", f"{report['timing']['total_s']:.1f} s"),
    ]


def print_summary(report: dict) -> None:
    """Print the headline numbers as a two-column table."""
    rows = _summary_rows(report)
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    print()


def _markdown(report: dict) -> str:
    dataset = report["dataset"]
    lines = [
        "# cemsplit run report",
        "",
        f"Dataset {dataset['name']}: {dataset['train']} client-training, {dataset['test']} test and "
        f"{dataset['aux']} attacker-auxiliary images, disjoint.",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in _summary_rows(report)],
        "",
        "The white-box attacker holds the trained client encoder and the auxiliary images; its decoder is",
        "trained on encoder features of the auxiliary images, transformed as the client transforms what it",
        "sends (noise, dropout or top-k pruning), and applied to the recorded training",
        f"traffic of the final epoch. PSNR is the mean of per-image values; the per-batch PSNR of the CEM",
        f"reference code is {report['attack']['white_box']['psnr_batch']:.2f} dB.",
        "",
        f"![originals above reconstructions]({report['files']['grid']})",
        "",
        *_epoch_table(report["epochs"]),
        "",
    ]
    return "\n".join(lines)


# Per-epoch defence metrics shown in report.md when a run has them: (key, column, format).
DEFENSE_COLUMNS = (
    ("nopeek_loss", "NoPeek dCor", ".4f"),
    ("cem_loss", "CEM loss", ".4f"),
    ("cem_logdet", "CEM log-det", ".4f"),
    ("cem_cluster_seconds", "clustering s", ".2f"),
)


def _epoch_table(epochs: list[dict]) -> list[str]:
    extra = [column for column in DEFENSE_COLUMNS if any(column[0] in row for row in epochs)]
    header = ["epoch", "train loss", "train accuracy", "test accuracy", *[title for _, title, _ in extra], "seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in epochs:
        cells = [str(row["epoch"]), f"{row['train_loss']:.4f}", f"{row['train_accuracy']:.4f}", f"{row['test_accuracy']:.4f}"]
        for key, _, style in extra:
            cells.append(format(row[key], style) if key in row else "-")
        cells.append(f"{row['seconds']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
