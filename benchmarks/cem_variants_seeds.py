"""Combine runs of cem_variants_privacy.py made with different seeds into one paired table.

Each input is a variants.json written by cem_variants_privacy.py. A row of the output is one
setting (defence, lambda, combination). It shows the test accuracy, the white-box attack MSE and
SSIM as mean and spread over the seeds. It also shows, per seed, the MSE relative to the
reference CEM at lambda 16 trained with the same seed. Pairing by seed removes what the seed does to every defence alike
(weights, batch order, noise draws), so the per-seed ratios show whether a variant's gain is
larger than the seed-to-seed spread.

Usage: python benchmarks/cem_variants_seeds.py RESULT.json [RESULT.json ...] [--result FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import git_revision, write_result  # noqa: E402

DEFAULT_SEED = 125
ORDER = ("none", "noise", "cem", "cem-att", "cem-mix", "cem-enhanced")
REFERENCE = ("cem", 16.0, "separate")


def _flag(flags: list[str], name: str, default: str) -> str:
    return flags[flags.index(name) + 1] if name in flags else default


def setting_of(row: dict, result: dict) -> tuple[str, float | None, str]:
    """Return (defence, lambda, combination) of one row of a variants.json."""
    defense = row["defense"]
    if defense in ("none", "noise"):
        return defense, None, "-"
    default_combine = "fused" if defense == "cem-enhanced" else "separate"
    return defense, float(result["lambda"]), _flag(result["demo_flags"], "--cem-combine", default_combine)


def collect(paths: list[Path]) -> dict[tuple, dict[int, dict]]:
    """Return {setting: {seed: row}} from the variants.json files; a repeated cell is an error."""
    cells: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for path in paths:
        result = json.loads(path.read_text(encoding="utf-8"))
        seed = int(_flag(result["demo_flags"], "--seed", str(DEFAULT_SEED)))
        for row in result["rows"]:
            setting = setting_of(row, result)
            if seed in cells[setting]:
                raise SystemExit(f"{path}: {setting} with seed {seed} is also in another input; pass each run once")
            cells[setting][seed] = {**row, "revision": result["revision"]}
    return cells


def summarise(cells: dict[tuple, dict[int, dict]]) -> list[dict]:
    """Return one summary per setting, with the per-seed MSE ratio to the reference CEM."""
    reference = cells.get(REFERENCE, {})
    summaries = []
    for setting, by_seed in sorted(cells.items(), key=lambda item: (ORDER.index(item[0][0]), -(item[0][1] or 0), item[0][2])):
        seeds = sorted(by_seed)
        accuracy = [by_seed[seed]["test_accuracy"] for seed in seeds]
        mse = [by_seed[seed]["attack_mse"] for seed in seeds]
        ssim = [by_seed[seed]["attack_ssim"] for seed in seeds]
        ratios = {seed: by_seed[seed]["attack_mse"] / reference[seed]["attack_mse"] for seed in seeds if seed in reference}
        summaries.append({
            "defense": setting[0], "lambda": setting[1], "combine": setting[2], "seeds": seeds,
            "test_accuracy": accuracy, "attack_mse": mse, "attack_ssim": ssim,
            "mse_vs_cem": [ratios[seed] for seed in sorted(ratios)],
            "revisions": sorted({by_seed[seed]["revision"] for seed in seeds}),
        })
    return summaries


def _mean_spread(values: list[float], scale: float = 1.0, digits: int = 4) -> str:
    if len(values) < 2:
        return f"{values[0] * scale:.{digits}f}"
    return f"{statistics.mean(values) * scale:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def markdown(summaries: list[dict]) -> str:
    """Return the table: mean ± sample standard deviation over seeds, and the per-seed ratios."""
    lines = [
        "| defence | lambda | combine | seeds | test accuracy | attack MSE | attack SSIM | MSE vs cem, per seed | mean MSE vs cem |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summaries:
        ratios = ", ".join(f"{ratio - 1:+.1%}" for ratio in row["mse_vs_cem"]) or "-"
        mean_ratio = f"{statistics.mean(row['mse_vs_cem']) - 1:+.1%}" if row["mse_vs_cem"] else "-"
        lam = "-" if row["lambda"] is None else f"{row['lambda']:g}"
        lines.append(
            f"| {row['defense']} | {lam} | {row['combine']} | {len(row['seeds'])} | {_mean_spread(row['test_accuracy'])} | "
            f"{_mean_spread(row['attack_mse'], digits=5)} | {_mean_spread(row['attack_ssim'])} | {ratios} | {mean_ratio} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, help="variants.json files of cem_variants_privacy.py")
    parser.add_argument("--result", type=Path, default=Path("runs/bench/variants-seeds.json"), help="JSON result file")
    args = parser.parse_args()
    missing = [str(path) for path in args.results if not path.is_file()]
    if missing:
        parser.error(f"no such result file: {', '.join(missing)}; run benchmarks/cem_variants_privacy.py first")

    summaries = summarise(collect(args.results))
    print(markdown(summaries))
    write_result(args.result, {"revision": git_revision(), "inputs": [str(path) for path in args.results], "rows": summaries})
    return 0


if __name__ == "__main__":
    sys.exit(main())
