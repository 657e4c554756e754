"""The run report: report.json for programs, report.md and a summary table for people."""

from __future__ import annotations

import json
from pathlib import Path

from cemsplit.attacker.inputs import report_key
from cemsplit.shared.config import RunConfig
from cemsplit.shared.datasets import DataSplits, load_splits
from cemsplit.v1 import attacker_pb2

# One sentence per threat model for report.md.
THREAT_DESCRIPTIONS = {
    "white_box": (
        "White-box, defence-aware: the attacker holds the trained client encoder and the auxiliary images; a decoder "
        "trained on their features, transformed as the client transforms what it sends (noise, dropout or top-k "
        "pruning), reconstructs the recorded traffic. In the train-time regime the same decoder "
        "(trained on the auxiliary split, which stands in for training data) is tested on the test split; in the "
        "inference-time regime a second decoder is trained on the first part of the test split and tested on the rest."
    ),
    "shadow": (
        "Query-free shadow model: the attacker holds a snapshot of the server half and the labelled auxiliary images; it "
        "trains a stand-in client encoder through the frozen server half, then a decoder on the stand-in's features, "
        "and applies that decoder to the recorded traffic."
    ),
    "rmle": (
        "rMLE: the attacker holds the encoder's weights and optimises images to match the recorded features under a "
        "total-variation prior; only the first recorded images are reconstructed."
    ),
}


def _dataset_description(config: RunConfig) -> dict[str, object]:
    splits: DataSplits = load_splits(config.data)
    return splits.describe()


def attack_section(result: dict[str, object], base: Path) -> dict[str, object]:
    """Return a threat's report section: its results, with the grid path relative to `base` when it lies inside."""
    section = dict(result)
    grid = Path(str(section["grid"]))
    if grid.is_absolute() and grid.is_relative_to(base.resolve()):
        section["grid"] = str(grid.relative_to(base.resolve()))
    return section


def write_report(
    out: Path,
    config: RunConfig,
    client_summary: dict,
    attacks: dict[str, dict[str, object]],
    stats: attacker_pb2.RecorderStats,
    timing: dict[str, float],
    machine: dict[str, object],
) -> dict[str, object]:
    """Write report.json and report.md to out and return the report.

    `attacks` maps each threat model ("white-box", ...) to its results (from run_attack).
    """
    sections = {report_key(threat): attack_section(result, out) for threat, result in attacks.items()}
    mirror = client_summary["mirror"]
    report: dict[str, object] = {
        "test_accuracy": client_summary["test_accuracy"],
        "defense": client_summary["defense"],
        "attack": sections,
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
            "snapshots": "server/snapshots",
            "grids": {key: section["grid"] for key, section in sections.items()},
        },
    }
    server_log = client_summary.get("traffic_log")
    if server_log and server_log["enqueued"]:
        report["recording"]["server_traffic_log"] = server_log
    if "white_box" in sections:
        report["files"]["grid"] = sections["white_box"]["grid"]
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")
    return report


def _accuracy(value: object) -> str:
    return "n/a (needs encoder and server snapshot)" if value is None else f"{value:.4f}"


def attack_rows(sections: dict[str, dict]) -> list[tuple[str, str]]:
    """Return summary rows (name, value) for every threat model in a report's attack section."""
    rows = []
    for key, attack in sections.items():
        name = key.replace("_", "-")
        rows += [
            (f"attack MSE ({name})", f"{attack['mse']:.5f} (mean-image baseline {attack['mean_image_mse']:.5f})"),
            (f"attack PSNR, per image ({name})", f"{attack['psnr']:.2f} dB"),
            (f"attack SSIM ({name})", f"{attack['ssim']:.4f}"),
            (f"target accuracy on reconstructions ({name})", _accuracy(attack.get("target_accuracy"))),
            (f"images reconstructed ({name})", str(attack["images_scored"])),
        ]
        for regime in ("train_time", "inference_time"):
            if regime in attack:
                scores = attack[regime]
                rows.append((f"{regime.replace('_', '-')} MSE / SSIM ({name})", f"{scores['mse']:.5f} / {scores['ssim']:.4f}"))
    return rows


def _summary_rows(report: dict) -> list[tuple[str, str]]:
    defense = report["defense"]
    settings = ", ".join(f"{key}={value}" for key, value in defense.items() if key != "name")
    return [
        ("defence", f"{defense['name']} ({settings})" if settings else defense["name"]),
        ("test accuracy", f"{report['test_accuracy']:.4f}"),
        *attack_rows(report["attack"]),
        ("records received / dropped", f"{report['recording']['received']} / {report['recording']['dropped']}"),
        ("training time", f"{report['timing']['training_s']:.1f} s"),
        ("attack time", f"{report['timing']['attack_s']:.1f} s"),
        ("total time", f"{report['timing']['total_s']:.1f} s"),
    ]


def format_rows(rows: list[tuple[str, str]]) -> str:
    """Render (name, value) rows as a two-column text table."""
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)


def print_summary(report: dict) -> None:
    """Print the headline numbers as a two-column table."""
    print()
    print(format_rows(_summary_rows(report)))
    print()


def attack_markdown(sections: dict[str, dict]) -> list[str]:
    """Return report.md lines that describe each threat model and show its grid."""
    lines = []
    for key, attack in sections.items():
        lines += [
            f"## Attack: {key.replace('_', '-')}",
            "",
            THREAT_DESCRIPTIONS.get(key, ""),
            f"Epoch {attack['scored_epoch']} of session {attack['session_id']} is reconstructed. PSNR is the mean of per-image "
            f"values; the per-batch PSNR of the CEM reference code is {attack['psnr_batch']:.2f} dB.",
            "",
            f"![originals above reconstructions]({attack['grid']})",
            "",
        ]
    return lines


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
        *attack_markdown(report["attack"]),
        *_epoch_table(report["epochs"]),
        "",
    ]
    return "\n".join(lines)


# Per-epoch defence metrics shown in report.md when a run has them: (key, column, format).
DEFENSE_COLUMNS = (
    ("nopeek_loss", "NoPeek dCor", ".4f"),
    ("cem_loss", "CEM loss", ".4f"),
    ("cem_logdet", "CEM log-det", ".4f"),
    ("cem_mix_weight_clustering", "CEM-mix clustering weight", ".3f"),
    ("cem_mix_weight_attention", "CEM-mix attention weight", ".3f"),
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
