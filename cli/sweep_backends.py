"""Where sweep runs execute: local processes, or tasks on a Ray cluster.

Every run is a full `cemsplit demo` (server, attacker and client as separate processes) into
its own run directory. A run is finished when its report.json exists.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

from cemsplit.cli.processes import die_with_parent
from cemsplit.cli.sweep_plan import PlannedRun

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """The result of one run: its name, whether it finished, its wall time in seconds, and the end of its log on failure."""

    name: str
    ok: bool
    message: str = ""
    seconds: float = 0.0


def demo_command(run_dir: Path, base_config: Path, run: PlannedRun, threads: int) -> list[str]:
    return [
        sys.executable, "-m", "cemsplit.cli", "demo",
        "--out", str(run_dir), "--config", str(base_config), "--threads", str(threads), *run.overrides(),
    ]


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


class LocalBackend:
    """Runs up to `parallel` demos at a time as local processes."""

    def __init__(self, parallel: int = 1, threads: int = 0) -> None:
        if parallel < 1:
            raise ValueError(f"parallel {parallel} must be at least 1")
        self.parallel = parallel
        self.threads = threads
        self._running: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def _run_one(self, run: PlannedRun, run_dir: Path, base_config: Path, log_dir: Path) -> RunOutcome:
        log_path = log_dir / f"{run.name}.log"
        started = time.monotonic()
        with open(log_path, "wb") as handle:
            process = subprocess.Popen(
                demo_command(run_dir, base_config, run, self.threads), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
            with self._lock:
                self._running.add(process)
            code = process.wait()
            with self._lock:
                self._running.discard(process)
        seconds = time.monotonic() - started
        if code == 0 and (run_dir / "report.json").is_file():
            return RunOutcome(run.name, True, seconds=seconds)
        return RunOutcome(run.name, False, f"exit status {code}; end of {log_path}:\n{_tail(log_path.read_text(errors='replace'))}", seconds)

    def run(self, runs: list[tuple[PlannedRun, Path]], base_config: Path, log_dir: Path, on_done) -> list[RunOutcome]:
        """Run every (run, run directory) pair; on_done(outcome) is called as each one ends."""
        log_dir.mkdir(parents=True, exist_ok=True)
        outcomes = []
        with futures.ThreadPoolExecutor(self.parallel) as pool:
            pending = [pool.submit(self._run_one, run, run_dir, base_config, log_dir) for run, run_dir in runs]
            try:
                for future in futures.as_completed(pending):
                    outcome = future.result()
                    on_done(outcome)
                    outcomes.append(outcome)
            except KeyboardInterrupt:
                for future in pending:
                    future.cancel()
                self.interrupt()
                raise
        return outcomes

    def interrupt(self) -> None:
        """Send SIGINT to running demos, which stop their roles and exit."""
        with self._lock:
            running = list(self._running)
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in running:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


def _remote_demo(name: str, base_yaml: str, overrides: list[str], threads: int) -> dict[str, object]:
    """Run one demo on a Ray worker and return its report and images as bytes.

    The run directory on the worker, with its checkpoints and traffic log, is deleted afterwards.
    """
    with tempfile.TemporaryDirectory(prefix=f"cemsplit-sweep-{name}-") as workdir:
        base = Path(workdir) / "base.yaml"
        base.write_text(base_yaml, encoding="utf-8")
        out = Path(workdir) / "run"
        command = [sys.executable, "-m", "cemsplit.cli", "demo", "--out", str(out), "--config", str(base), "--threads", str(threads), *overrides]
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.monotonic() - started
        files: dict[str, bytes] = {}
        if out.is_dir():
            for path in out.rglob("*"):
                if path.is_file() and (path.suffix in (".png", ".md") or path.name in ("report.json", "metrics.jsonl", "config.yaml")):
                    files[str(path.relative_to(out))] = path.read_bytes()
    return {"code": result.returncode, "files": files, "log": result.stdout + result.stderr, "seconds": seconds}


class RayBackend:
    """Runs demos as tasks on a Ray cluster; reports and images come back to this machine.

    Every node needs cemsplit installed in the Python that runs its Ray workers.
    """

    def __init__(self, address: str, threads: int = 0, cpus_per_run: float = 1.0) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("the Ray backend needs the ray package; install it with: pip install 'cemsplit[ray]'") from None
        self._ray = ray
        self.address = address
        self.threads = threads
        self.cpus_per_run = cpus_per_run

    def run(self, runs: list[tuple[PlannedRun, Path]], base_config: Path, log_dir: Path, on_done) -> list[RunOutcome]:
        ray = self._ray
        log_dir.mkdir(parents=True, exist_ok=True)
        ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
        try:
            remote = ray.remote(num_cpus=self.cpus_per_run)(_remote_demo)
            base_yaml = base_config.read_text(encoding="utf-8")
            handles = {remote.remote(run.name, base_yaml, run.overrides(), self.threads): (run, run_dir) for run, run_dir in runs}
            outcomes = []
            remaining = list(handles)
            while remaining:
                done, remaining = ray.wait(remaining, num_returns=1)
                run, run_dir = handles[done[0]]
                outcome = self._collect(ray.get(done[0]), run, run_dir, log_dir)
                on_done(outcome)
                outcomes.append(outcome)
            return outcomes
        finally:
            ray.shutdown()

    @staticmethod
    def _collect(result: dict, run: PlannedRun, run_dir: Path, log_dir: Path) -> RunOutcome:
        log_path = log_dir / f"{run.name}.log"
        log_path.write_text(result["log"], encoding="utf-8")
        if result["code"] != 0 or "report.json" not in result["files"]:
            return RunOutcome(run.name, False, f"exit status {result['code']} on the Ray worker; end of {log_path}:\n{_tail(result['log'])}", result["seconds"])
        # report.json marks a finished run, so it is written last.
        for relative, data in sorted(result["files"].items(), key=lambda item: item[0] == "report.json"):
            target = run_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return RunOutcome(run.name, True, seconds=result["seconds"])
