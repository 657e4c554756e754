"""`cemsplit sweep`: every combination of a grid as a full run, then tables, plots and a report.

Output directory layout:
    base.yaml               config every run starts from
    runs/<name>/            one `cemsplit demo` run directory per combination
    logs/<name>.log         each run's console output
    sweep.csv, sweep.json   one row per finished run
    accuracy_vs_mse.png, accuracy_vs_ssim.png, grids/<defence>.png, sweep.md
A finished run (one with report.json) is never run again, so an interrupted sweep resumes where
it stopped; an unfinished run directory is moved aside, not deleted.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
from pathlib import Path

from cemsplit.cli.sweep_backends import LocalBackend, RayBackend, RunOutcome
from cemsplit.cli.sweep_plan import parse_axis, plan_runs
from cemsplit.cli.sweep_report import collect_rows, plot_tradeoff, write_markdown, write_tables
from cemsplit.shared.config import ConfigError, RunConfig, build_config, load_yaml, save_config

log = logging.getLogger(__name__)


def _prepare_output(out: Path, base: RunConfig) -> Path:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a directory; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    base_path = out / "base.yaml"
    if base_path.is_file():
        # Validating fills in settings added to cemsplit since the sweep began, at their defaults,
        # so that a newer cemsplit resumes an older sweep whose settings it reproduces.
        stored = build_config(load_yaml(base_path), str(base_path)).model_dump(mode="json")
        current = base.model_dump(mode="json")
        differing = [
            f"{section}.{key} ({stored[section][key]!r} there, {current[section][key]!r} now)"
            for section in current for key in current[section] if stored[section][key] != current[section][key]
        ]
        if differing:
            raise FileExistsError(
                f"{out} holds a sweep with another base config ({base_path}): {', '.join(differing)}; "
                "resume it with the same settings or choose a new --out"
            )
    else:
        save_config(base, base_path)
    return base_path


def _set_aside(run_dir: Path) -> Path:
    number = 1
    while (target := run_dir.with_name(f"{run_dir.name}.incomplete-{number}")).exists():
        number += 1
    run_dir.rename(target)
    return target


def run_sweep(
    base: RunConfig,
    grid: list[str],
    out: Path,
    backend: str = "local",
    parallel: int = 1,
    address: str | None = None,
    cpus_per_run: float = 1.0,
    threads: int = 0,
) -> int:
    """Run every grid combination not finished yet and write the sweep's tables, plots and report.

    Returns 0 when every run finished, 1 when some failed.
    """
    if not grid:
        raise ConfigError("give at least one --grid KEY=V1,V2,...")
    axes = [parse_axis(text) for text in grid]
    runs, skipped = plan_runs(axes, base)
    if not runs:
        reasons = sorted({str(item["reason"]) for item in skipped})
        raise ConfigError(
            "no combination of the grid is a valid run; set each setting named below with its flag, or give it a --grid "
            "of its own (for example --grid noise_std=0.025,0.05):\n" + "\n".join(reasons)
        )
    base_path = _prepare_output(out, base)
    runs_dir = out / "runs"
    runs_dir.mkdir(exist_ok=True)

    todo = []
    finished_before = 0
    for run in runs:
        run_dir = runs_dir / run.name
        if (run_dir / "report.json").is_file():
            finished_before += 1
            continue
        if run_dir.exists():
            log.warning("run %s did not finish earlier; moved its directory to %s", run.name, _set_aside(run_dir))
        todo.append((run, run_dir))
    print(
        f"cemsplit sweep: {len(runs)} runs ({finished_before} finished earlier, {len(todo)} to run), "
        f"{len(skipped)} combinations skipped (invalid, or the same run as another); output {out}",
        flush=True,
    )
    for item in skipped:
        print(f"  skipped {item['settings']}: {item['reason']}", flush=True)

    if backend == "ray":
        if not address:
            raise ConfigError("--backend ray needs --address HOST:PORT of the Ray head")
        executor = RayBackend(address, threads, cpus_per_run)
    else:
        executor = LocalBackend(parallel, threads)

    started = time.monotonic()
    counter = {"done": 0}

    def on_done(outcome: RunOutcome) -> None:
        counter["done"] += 1
        state = "finished" if outcome.ok else f"FAILED ({outcome.message.splitlines()[0]})"
        print(
            f"  [{counter['done']}/{len(todo)}] {outcome.name}: {state} in {outcome.seconds:.0f} s "
            f"({time.monotonic() - started:.0f} s since the sweep began)",
            flush=True,
        )

    outcomes = executor.run(todo, base_path, out / "logs", on_done) if todo else []
    failed = [{"run": o.name, "message": o.message} for o in outcomes if not o.ok]

    rows = collect_rows(runs_dir, {run.name: {axis_key.split(".", 1)[1]: value for axis_key, value in run.settings} for run in runs})
    write_tables(rows, out, skipped, failed)
    plot_tradeoff(rows, "mse", out / "accuracy_vs_mse.png")
    plot_tradeoff(rows, "ssim", out / "accuracy_vs_ssim.png")
    command = " ".join(shlex.quote(part) for part in ["cemsplit", *sys.argv[1:]])
    report = write_markdown(rows, out, command, skipped, failed)
    print(f"cemsplit sweep: {len(rows)} of {len(runs)} runs finished; wrote {out / 'sweep.csv'} and {report}", flush=True)
    for item in failed:
        print(f"  failed {item['run']}: {item['message']}", flush=True)
    return 1 if failed else 0
