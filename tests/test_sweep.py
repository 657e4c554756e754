"""`cemsplit sweep`: grid parsing, a resumable local sweep and the Ray backend on loopback."""

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from cemsplit.cli.sweep import _prepare_output, run_sweep
from cemsplit.cli.sweep_plan import parse_axis, plan_runs
from cemsplit.cli.sweep_report import matched_accuracy, pareto_front, write_markdown
from cemsplit.shared.config import ConfigError, RunConfig
from conftest import processes_mentioning

SMALL = ["--train-limit", "256", "--test-limit", "100", "--aux-limit", "128", "--epochs", "1", "--decoder-epochs", "1", "--batch-size", "64", "--threads", "1"]
GRID = ["--grid", "defense=noise,laplace", "--grid", "noise_std=0.05"]


def sweep(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cemsplit.cli", "sweep", "--out", str(out), *GRID, *SMALL, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=1200)


def test_grid_keys_and_values():
    axis = parse_axis("noise_std=0.01,0.025")
    assert (axis.section, axis.field, axis.values) == ("defense", "noise_std", (0.01, 0.025))
    assert parse_axis("train.epochs=1,2").values == (1, 2)
    with pytest.raises(ConfigError, match="is not a config key"):
        parse_axis("noise=0.1")
    with pytest.raises(ConfigError, match="listen is ambiguous"):
        parse_axis("listen=a,b")
    with pytest.raises(ConfigError, match="must look like KEY=V1,V2"):
        parse_axis("noise_std")
    with pytest.raises(ConfigError, match="lists a value twice"):
        parse_axis("noise_std=0.1,0.1")
    with pytest.raises(ConfigError, match="did you mean noise_std"):
        parse_axis("noise_sd=0.05")
    with pytest.raises(ConfigError, match="gives noise_std no values"):
        parse_axis("noise_std=")


def test_grid_rejects_invalid_values():
    # Each value fails whatever the other keys are, so it is named at once instead of being
    # skipped in every combination.
    with pytest.raises(ConfigError, match=r"'abc' is not a valid defense.noise_std: Input should be a valid number"):
        parse_axis("noise_std=0.05,abc")
    with pytest.raises(ConfigError, match=r"-1 is not a valid defense.noise_std: .*greater than or equal to 0"):
        parse_axis("noise_std=-1")
    with pytest.raises(ConfigError, match=r"'float8' is not a valid transport.wire_dtype"):
        parse_axis("wire_dtype=float8")
    with pytest.raises(ConfigError, match="names defense.noise_std more than once"):
        plan_runs([parse_axis("noise_std=0.05"), parse_axis("noise_std=0.1")], RunConfig())


def test_sweep_without_valid_runs_fails(tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match="no combination of the grid is a valid run(.|\n)*set --noise-std"):
        run_sweep(RunConfig(), ["defense=noise,cem"], out)
    assert not out.exists()


def test_invalid_combinations_are_skipped():
    runs, skipped = plan_runs([parse_axis("defense=none,noise"), parse_axis("noise_std=0,0.05")], RunConfig())
    names = [run.name for run in runs]
    assert names == ["defense-none__noise_std-0", "defense-noise__noise_std-0.05"]
    assert [entry["settings"] for entry in skipped] == [
        {"defense.defense": "none", "defense.noise_std": 0.05},
        {"defense.defense": "noise", "defense.noise_std": 0},
    ]
    assert "adds no noise" in skipped[0]["reason"]
    assert "needs noise_std > 0" in skipped[1]["reason"]


def test_repeats_of_a_run_are_skipped():
    runs, skipped = plan_runs([parse_axis("defense=noise,cem"), parse_axis("cem_weight=0,8")], RunConfig(defense={"defense": "noise", "noise_std": 0.05}))
    assert [run.name for run in runs] == ["defense-noise__cem_weight-0", "defense-cem__cem_weight-8"]
    assert skipped == [
        {
            "settings": {"defense.defense": "noise", "defense.cem_weight": 8},
            "reason": "same run as defense-noise__cem_weight-0: --defense noise does not use the settings that differ",
            "same_as": "defense-noise__cem_weight-0",
        },
        {
            "settings": {"defense.defense": "cem", "defense.cem_weight": 0},
            "reason": "same run as defense-noise__cem_weight-0: at cem_weight 0 a CEM variant adds only its Gaussian noise, as --defense noise does",
            "same_as": "defense-noise__cem_weight-0",
        },
    ]


def test_cem_at_weight_zero_plans_as_noise():
    base = RunConfig(defense={"defense": "noise", "noise_std": 0.05})
    runs, skipped = plan_runs([parse_axis("cem_weight=0,8"), parse_axis("defense=cem-att+nopeek,noise+nopeek")], base)
    assert [run.name for run in runs] == ["cem_weight-0__defense-cem-att+nopeek", "cem_weight-8__defense-cem-att+nopeek"]
    assert [entry["same_as"] for entry in skipped] == ["cem_weight-0__defense-cem-att+nopeek"] * 2
    assert "a CEM variant adds only its Gaussian noise" in skipped[0]["reason"]

    # The default grid: 5 noise runs, and 4 variants x 5 noise levels x 2 non-zero weights.
    axes = [parse_axis("noise_std=0.01,0.025,0.05,0.1,0.15"), parse_axis("cem_weight=0,8,16"), parse_axis("defense=noise,cem,cem-att,cem-mix,cem-enhanced")]
    runs, skipped = plan_runs(axes, RunConfig())
    assert (len(runs), len(skipped)) == (45, 30)


def test_settings_a_defence_uses_are_never_merged():
    base = RunConfig(defense={"defense": "cem-att", "noise_std": 0.05})
    axes = [parse_axis("att_iterations=1,3"), parse_axis("att_slots=4,8"), parse_axis("var_threshold=0.1,0.2")]
    runs, skipped = plan_runs(axes, base)
    assert (len(runs), skipped) == (8, [])
    runs, skipped = plan_runs([parse_axis("enhanced_slots=6,12"), parse_axis("defense=cem-enhanced,cem-att")], base)
    assert [run.name for run in runs] == ["enhanced_slots-6__defense-cem-enhanced", "enhanced_slots-6__defense-cem-att", "enhanced_slots-12__defense-cem-enhanced"]
    assert skipped[0]["same_as"] == "enhanced_slots-6__defense-cem-att"


def test_pareto_front():
    points = [(0.01, 0.99), (0.02, 0.98), (0.015, 0.97), (0.03, 0.90), (0.03, 0.85)]
    assert sorted(pareto_front(points, larger_x_is_better=True)) == [0, 1, 3]
    assert sorted(pareto_front(points, larger_x_is_better=False)) == [0]


def test_matched_accuracy_per_floor():
    rows = [
        {"run": "a", "defense_name": "noise", "test_accuracy": 0.98, "white_box_mse": 0.010},
        {"run": "b", "defense_name": "noise", "test_accuracy": 0.95, "white_box_mse": 0.020},
        {"run": "c", "defense_name": "cem", "test_accuracy": 0.975, "white_box_mse": 0.015},
        {"run": "d", "defense_name": "cem", "test_accuracy": 0.90, "white_box_mse": 0.050},
        {"run": "e", "defense_name": "cem", "test_accuracy": 0.99, "white_box_mse": None},
    ]
    table = matched_accuracy(rows, drops=(0.001, 0.01, 0.05))
    picks = {(row["drop"], row["defense_name"]): row["run"] for row in table}

    # The best scored accuracy is 0.98 ("e" has no attack score and sets nothing).
    assert picks == {
        (0.001, "cem"): None, (0.001, "noise"): "a",
        (0.01, "cem"): "c", (0.01, "noise"): "a",
        (0.05, "cem"): "c", (0.05, "noise"): "b",
    }
    assert table[2]["floor"] == pytest.approx(0.97)
    assert matched_accuracy([]) == []


def test_report_flags_unreachable_and_failed(tmp_path):
    rows = [
        {"run": "n", "defense_name": "noise", "test_accuracy": 0.98, "white_box_mse": 0.010, "white_box_mean_image_mse": 0.067},
        {"run": "c", "defense_name": "cem", "test_accuracy": 0.50, "white_box_mse": 0.090, "white_box_mean_image_mse": 0.067},
    ]
    report = write_markdown(rows, tmp_path, "cemsplit sweep ...", [], []).read_text()

    assert "in 1 of 2 runs the attack's MSE is no lower than that of the mean image" in report
    assert report.count("| cem | no run at or above the floor |") == 4
    assert "| 0.9700 (best - 0.01) | noise | n | 0.9800 | 0.0100 | 0.0670 |" in report


def test_sweep_resumes_after_new_setting(tmp_path):
    base = RunConfig()
    _prepare_output(tmp_path, base)
    stored = yaml.safe_load((tmp_path / "base.yaml").read_text())
    del stored["transport"]["train_call"]  # as written by a cemsplit without that setting
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(stored))

    assert _prepare_output(tmp_path, base) == tmp_path / "base.yaml"
    with pytest.raises(FileExistsError, match=r"another base config .*transport.train_call \('stream' there, 'unary' now\)"):
        _prepare_output(tmp_path, base.model_copy(update={"transport": base.transport.model_copy(update={"train_call": "unary"})}))


@pytest.mark.slow
def test_sweep_sigterm_stops_all_processes(tmp_path):
    out = tmp_path / "sweep"
    # The later --epochs wins: 20 epochs keep the first run busy until the signal comes.
    command = [sys.executable, "-m", "cemsplit.cli", "sweep", "--out", str(out), *GRID, *SMALL, "--epochs", "20"]
    sweep_process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    manifest = out / "runs" / "defense-noise__noise_std-0.05" / "client" / "manifest.jsonl"
    deadline = time.monotonic() + 180
    while not manifest.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert manifest.is_file(), "the first run's client never started training"
    assert len(processes_mentioning(str(out))) == 5  # the sweep, its demo and the demo's three roles

    sweep_process.send_signal(signal.SIGTERM)
    output, _ = sweep_process.communicate(timeout=120)
    assert sweep_process.returncode == 130, output
    assert processes_mentioning(str(out)) == []
    assert not (out / "runs" / "defense-noise__noise_std-0.05" / "report.json").exists()


@pytest.mark.slow
def test_local_sweep_writes_results_and_resumes(tmp_path):
    out = tmp_path / "sweep"
    first = sweep(out)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "2 runs (0 finished earlier, 2 to run)" in first.stdout

    data = json.loads((out / "sweep.json").read_text())
    assert sorted(row["run"] for row in data["runs"]) == ["defense-laplace__noise_std-0.05", "defense-noise__noise_std-0.05"]
    for row in data["runs"]:
        assert 0 <= row["test_accuracy"] <= 1
        assert row["white_box_mse"] > 0
    assert (out / "sweep.csv").read_text().startswith("run,defense,noise_std,")
    for name in ("accuracy_vs_mse.png", "accuracy_vs_ssim.png", "grids/laplace.png", "grids/noise.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    report = (out / "sweep.md").read_text()
    assert "![accuracy_vs_mse.png](accuracy_vs_mse.png)" in report
    assert "grids/noise.png" in report
    assert "## Privacy at matched accuracy" in report
    assert "| 0." in report.split("## Privacy at matched accuracy")[1]

    second = sweep(out)
    assert second.returncode == 0
    assert "2 runs (2 finished earlier, 0 to run)" in second.stdout

    (out / "runs" / "defense-noise__noise_std-0.05" / "report.json").unlink()
    third = sweep(out)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "2 runs (1 finished earlier, 1 to run)" in third.stdout
    assert (out / "runs" / "defense-noise__noise_std-0.05.incomplete-1").is_dir()

    changed = sweep(out, "--epochs", "2")
    assert changed.returncode == 1
    assert "holds a sweep with another base config" in changed.stderr


RAY_SCRIPT = """
set -eu
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0
ray=$(dirname "$PYTHON")/ray
"$ray" start --head --node-ip-address 127.0.0.1 --port 6399 --num-cpus 2 --include-dashboard false \\
    --disable-usage-stats --temp-dir "$RAY_TMP" > "$OUT.ray.log" 2>&1
trap '"$ray" stop --force > /dev/null 2>&1' EXIT
"$PYTHON" -m cemsplit.cli sweep --backend ray --address 127.0.0.1:6399 --out "$OUT" {arguments}
"""


@pytest.mark.slow
def test_ray_backend_on_loopback(tmp_path):
    pytest.importorskip("ray", reason="the Ray backend test needs the ray package (pip install -e '.[dev]')")
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("unshare and ip (util-linux, iproute2) are needed to keep Ray inside a loopback-only namespace")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.decode().strip()}")

    # Ray binds the host's addresses as well as loopback, so the head, its workers and the
    # sweep run inside a new network namespace that has only a loopback interface.
    out = tmp_path / "sweep"
    arguments = " ".join([*GRID, *SMALL])
    script = textwrap.dedent(RAY_SCRIPT).format(arguments=arguments)
    # Ray's socket paths must stay under 107 bytes, so its session lives in a short temporary path.
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    worker_tmp = tmp_path / "worker-tmp"
    worker_tmp.mkdir()
    environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHON": sys.executable, "OUT": str(out), "RAY_TMP": ray_tmp, "TMPDIR": str(worker_tmp)}
    try:
        result = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=1800, env=environment)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr + (Path(f"{out}.ray.log").read_text() if Path(f"{out}.ray.log").exists() else "")

    data = json.loads((out / "sweep.json").read_text())
    assert len(data["runs"]) == 2
    assert data["failed"] == []
    assert (out / "runs" / "defense-noise__noise_std-0.05" / "attacker" / "white_box.png").is_file()
    assert (out / "accuracy_vs_ssim.png").is_file()
    assert list(worker_tmp.glob("cemsplit-sweep-*")) == [], "the Ray workers left run directories behind"
