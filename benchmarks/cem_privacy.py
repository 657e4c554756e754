"""Privacy effect of CEM on the embedded digits: noise + CEM against noise alone.

Runs `cemsplit demo` once per noise level sigma and CEM weight lambda, with the same seed and
epochs. Each demo runs server, client and attacker as three processes, trains for 5 epochs on
3,500 mnist5k digits and trains the white-box, noise-aware decoder for 30 epochs on 1,000
auxiliary digits. lambda = 0 is noise alone: `--defense cem --cem-weight 0` trains exactly like `--defense noise` (the clustering
draws from its own generator and only feeds the log-det diagnostic), so the baseline gets the
diagnostic too. Writes one JSON file and a markdown table with test accuracy, attack MSE,
per-image PSNR, SSIM, the final log-det diagnostic and the change in attack MSE against lambda = 0.

A run whose report.json exists is not repeated, so an interrupted sweep resumes where it stopped.

Usage: python benchmarks/cem_privacy.py [--sigmas ...] [--lambdas ...] [--out DIR] [-- extra demo flags]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import git_revision, write_result  # noqa: E402


def run_name(sigma: float, weight: float) -> str:
    return f"sigma{sigma:g}-lambda{weight:g}"


def run_demo(out: Path, sigma: float, weight: float, extra: list[str]) -> dict:
    """Run one demo unless its report exists; returns the report."""
    report_path = out / "report.json"
    if report_path.is_file():
        print(f"{out.name}: reusing {report_path}", flush=True)
        return json.loads(report_path.read_text())
    if out.exists():
        raise SystemExit(f"{out} contains an unfinished run; remove it to rerun that setting")

    command = [
        sys.executable, "-m", "cemsplit.cli", "demo", "--out", str(out),
        "--defense", "cem", "--noise-std", str(sigma), "--cem-weight", str(weight), *extra,
    ]
    print(f"{out.name}: {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"{out.name}: finished in {time.monotonic() - started:.0f} s", flush=True)
    return json.loads(report_path.read_text())


def summarise(report: dict) -> dict:
    """Return the numbers of one run that the table shows."""
    attack = report["attack"]["white_box"]
    last = report["epochs"][-1]
    train_seconds = sum(row["train_seconds"] for row in report["epochs"])
    update_seconds = sum(row.get("cem_encode_seconds", 0) + row.get("cem_cluster_seconds", 0) for row in report["epochs"])
    return {
        "test_accuracy": report["test_accuracy"],
        "attack_mse": attack["mse"],
        "attack_psnr": attack["psnr"],
        "attack_ssim": attack["ssim"],
        "cem_logdet": last.get("cem_logdet"),
        "cem_loss_last_epoch": last.get("cem_loss"),
        "train_seconds": train_seconds,
        "cem_update_seconds": update_seconds,
        "cem_update_share": update_seconds / train_seconds,
        "total_seconds": report["timing"]["total_s"],
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| sigma | lambda | test accuracy | attack MSE | MSE vs lambda 0 | PSNR dB | SSIM | log-det | clustering share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        change = row.get("mse_change")
        change_text = "-" if change is None else f"{change:+.1%}"
        logdet = "-" if row["cem_logdet"] is None else f"{row['cem_logdet']:.3f}"
        lines.append(
            f"| {row['sigma']:g} | {row['lambda']:g} | {row['test_accuracy']:.4f} | {row['attack_mse']:.5f} | {change_text} | "
            f"{row['attack_psnr']:.2f} | {row['attack_ssim']:.4f} | {logdet} | {row['cem_update_share']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.025, 0.05, 0.1], help="noise standard deviations sigma")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 8.0, 16.0], help="CEM weights lambda; include 0 for the baseline")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/privacy"), help="directory of the runs and results")
    parser.add_argument("extra", nargs="*", help="extra `cemsplit demo` flags after --, for example -- --epochs 3")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rows = []
    for sigma in args.sigmas:
        baseline_mse = None
        for weight in args.lambdas:
            report = run_demo(args.out / run_name(sigma, weight), sigma, weight, args.extra)
            row = {"sigma": sigma, "lambda": weight, **summarise(report)}
            if weight == 0:
                baseline_mse = row["attack_mse"]
            elif baseline_mse is not None:
                row["mse_change"] = row["attack_mse"] / baseline_mse - 1
            rows.append(row)

    table = markdown(rows)
    print(table)
    (args.out / "privacy.md").write_text(table, encoding="utf-8")
    write_result(args.out / "privacy.json", {"revision": git_revision(), "demo_flags": args.extra, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
