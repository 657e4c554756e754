"""Run the default `cemsplit demo` and check its targets.

Targets: undefended test accuracy >= 0.95, white-box attack SSIM >= 0.6 on the undefended
features, and wall time under 300 s.

Usage: python benchmarks/demo_targets.py [--out DIR] [--result FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import git_revision, write_result  # noqa: E402

TARGETS = {"test_accuracy": 0.95, "ssim": 0.6, "wall_s": 300.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="run directory (default: a new temporary directory)")
    parser.add_argument("--result", type=Path, default=Path("runs/bench/demo_targets.json"), help="JSON result file")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="cemsplit-demo-")) / "run"

    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "cemsplit.cli", "demo", "--out", str(out)], check=True)
    wall = time.monotonic() - started
    report = json.loads((out / "report.json").read_text())

    measured = {"test_accuracy": report["test_accuracy"], "ssim": report["attack"]["white_box"]["ssim"], "wall_s": wall}
    passed = {
        "test_accuracy": measured["test_accuracy"] >= TARGETS["test_accuracy"],
        "ssim": measured["ssim"] >= TARGETS["ssim"],
        "wall_s": measured["wall_s"] < TARGETS["wall_s"],
    }
    write_result(
        args.result,
        {
            "revision": git_revision(),
            "measured": measured,
            "targets": TARGETS,
            "passed": passed,
            "attack": report["attack"]["white_box"],
            "timing": report["timing"],
        },
    )
    for name, value in measured.items():
        print(f"{name}: {value:.4f} ({'meets' if passed[name] else 'misses'} target {TARGETS[name]})")
    return 0 if all(passed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
