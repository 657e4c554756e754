"""Privacy of the CEM variants on the embedded digits: one table, same sigma, lambda, seed and epochs.

Runs `cemsplit demo` once per defence: none, noise, cem, cem-att, cem-mix and cem-enhanced,
each with the same noise sigma, CEM weight lambda, seed, epochs and decoder epochs (none has
no noise). Each demo runs server, client and attacker as three processes. The white-box,
noise-aware decoder trains on the auxiliary digits and then reconstructs the recorded training
images of the final epoch.

The log-det column is computed here, the same way for every run, from the run's final
encoder: encode the client-training split (eval mode, no noise), k-means with K = 5 per class,
then the mean over classes of sum_k pi_k (1/D) log det(vbar_k I + sigma^2 I). The runs without
noise use the same sigma for it.

A run whose report.json exists is not repeated, so an interrupted sweep resumes.

Usage: python benchmarks/cem_variants_privacy.py [--sigma S] [--weight L] [--epochs E]
       [--decoder-epochs N] [--defenses ...] [--out DIR] [-- extra demo flags]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import git_revision, write_result  # noqa: E402
from cemsplit.attacker.white_box import load_encoder  # noqa: E402
from cemsplit.shared.config import DataConfig  # noqa: E402
from cemsplit.shared.datasets import load_splits  # noqa: E402
from cemsplit.shared.defenses.cem.clustering import fit_class_clusters  # noqa: E402
from cemsplit.shared.defenses.cem.clusters import log_det_diagnostic  # noqa: E402

DEFENSES = ["none", "noise", "cem", "cem-att", "cem-mix", "cem-enhanced"]
DIAGNOSTIC_CLUSTERS = 5


def defense_flags(defense: str, sigma: float, weight: float) -> list[str]:
    """Return the demo flags of one defence."""
    if defense == "none":
        return ["--defense", "none"]
    if defense == "noise":
        return ["--defense", "noise", "--noise-std", str(sigma)]
    return ["--defense", defense, "--noise-std", str(sigma), "--cem-weight", str(weight)]


def run_demo(out: Path, flags: list[str]) -> dict:
    """Run one demo unless its report exists; returns the report."""
    report_path = out / "report.json"
    if report_path.is_file():
        print(f"{out.name}: reusing {report_path}", flush=True)
        return json.loads(report_path.read_text())
    if out.exists():
        raise SystemExit(f"{out} contains an unfinished run; remove it to rerun that setting")
    command = [sys.executable, "-m", "cemsplit.cli", "demo", "--out", str(out), *flags]
    print(f"{out.name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"{out.name}: finished in {time.monotonic() - started:.0f} s", flush=True)
    return json.loads(report_path.read_text())


@torch.no_grad()
def final_log_det(encoder_path: Path, sigma: float) -> float:
    """Return the log-det diagnostic of a run's final encoder on the client-training split."""
    encoder = load_encoder(encoder_path)
    splits = load_splits(DataConfig())
    images, labels = splits.train.floats(), splits.train.labels
    features = torch.cat([encoder(images[start:start + 128]) for start in range(0, len(images), 128)])
    clusters, _ = fit_class_clusters(features, labels, splits.num_classes, DIAGNOSTIC_CLUSTERS, "kmeans", 50, seed=0)
    return log_det_diagnostic(clusters, sigma)


def summarise(report: dict, out: Path, sigma: float) -> dict:
    """Return the numbers of one run that the table shows."""
    attack = report["attack"]["white_box"]
    epochs = report["epochs"]
    train_seconds = sum(row["train_seconds"] for row in epochs)
    steps = epochs[-1]["step"]
    row = {
        "test_accuracy": report["test_accuracy"],
        "attack_mse": attack["mse"],
        "attack_psnr": attack["psnr"],
        "attack_ssim": attack["ssim"],
        "log_det": final_log_det(out / "client" / "encoder.pt", sigma),
        "train_seconds": train_seconds,
        "ms_per_step": 1000 * train_seconds / steps,
        "parameters": report["defense"].get("parameters", 0),
    }
    if "cem_mix_weight_clustering" in epochs[-1]:
        row["mix_weights"] = [[e.get("cem_mix_weight_clustering"), e.get("cem_mix_weight_attention")] for e in epochs]
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| defence | test accuracy | attack MSE | MSE vs cem | PSNR dB | SSIM | log-det | ms per step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    reference = next((row["attack_mse"] for row in rows if row["defense"] == "cem"), None)
    for row in rows:
        change = "-" if reference is None or row["defense"] == "cem" else f"{row['attack_mse'] / reference - 1:+.1%}"
        lines.append(
            f"| {row['defense']} | {row['test_accuracy']:.4f} | {row['attack_mse']:.5f} | {change} | {row['attack_psnr']:.2f} | "
            f"{row['attack_ssim']:.4f} | {row['log_det']:.3f} | {row['ms_per_step']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigma", type=float, default=0.025, help="noise standard deviation sigma of every noisy run")
    parser.add_argument("--weight", type=float, default=16.0, help="CEM weight lambda of every CEM run")
    parser.add_argument("--epochs", type=int, default=5, help="client training epochs of every run")
    parser.add_argument("--decoder-epochs", type=int, default=30, help="attacker decoder epochs of every run")
    parser.add_argument("--defenses", nargs="+", default=DEFENSES, choices=DEFENSES, help="defences to run, in table order")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/variants"), help="directory of the runs and results")
    parser.add_argument("extra", nargs="*", help="extra `cemsplit demo` flags after --")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    common = ["--epochs", str(args.epochs), "--decoder-epochs", str(args.decoder_epochs), *args.extra]
    for defense in args.defenses:
        out = args.out / defense
        report = run_demo(out, [*defense_flags(defense, args.sigma, args.weight), *common])
        rows.append({"defense": defense, **summarise(report, out, args.sigma)})

    table = markdown(rows)
    print(table)
    (args.out / "variants.md").write_text(table, encoding="utf-8")
    settings = {"sigma": args.sigma, "lambda": args.weight, "epochs": args.epochs, "decoder_epochs": args.decoder_epochs, "demo_flags": args.extra}
    write_result(args.out / "variants.json", {"revision": git_revision(), **settings, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
