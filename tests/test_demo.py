"""`cemsplit demo` across three real processes: report, failures, Ctrl-C and SIGTERM."""

import json
import math
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY, processes_mentioning

DEMO = [sys.executable, "-m", "cemsplit.cli", "demo", *TINY, "--epochs", "2", "--decoder-epochs", "2", "--batch-size", "32"]


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "run"
    threats = ["--threats", "white-box", "rmle", "--rmle-images", "16", "--rmle-steps", "20"]
    result = subprocess.run([*DEMO, *threats, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr

    report = json.loads((out / "report.json").read_text())
    assert 0.2 < report["test_accuracy"] <= 1.0  # chance is 0.1 on ten digit classes
    assert report["defense"]["name"] == "none"
    white_box = report["attack"]["white_box"]
    for key in ("mse", "psnr", "ssim"):
        assert math.isfinite(white_box[key]), key
    assert 0 < white_box["mse"] < 1
    assert white_box["images_scored"] == 640
    assert white_box["grid"] == "attacker/white_box.png"
    assert 0 <= white_box["target_accuracy"] <= 1
    assert white_box["train_time"]["images_scored"] == 200
    assert white_box["inference_time"]["images_scored"] == 20
    rmle = report["attack"]["rmle"]
    assert rmle["images_scored"] == 16
    assert math.isfinite(rmle["mse"])
    assert (out / "attacker" / "rmle.png").is_file()
    assert report["recording"]["received"] == 41  # one session start and 2 epochs of 20 steps
    assert report["recording"]["dropped"] == 0
    for phase in ("startup_s", "training_s", "attack_s", "total_s"):
        assert report["timing"][phase] > 0
    assert report["dataset"]["disjoint"] is True

    assert (out / "config.yaml").is_file()
    assert len((out / "client" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "client" / "encoder.pt").is_file()
    assert (out / "attacker" / "white_box.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "server" / "checkpoints").glob("*/step-*.pt"))
    assert list((out / "server" / "snapshots").glob(f"server-{report['session_id']}-epoch-0002.pt"))
    assert "| test accuracy |" in (out / "report.md").read_text()
    assert "test accuracy" in result.stdout
    assert processes_mentioning(str(out)) == []


def test_demo_reports_failing_role_and_stops_all(tmp_path):
    out = tmp_path / "run"
    missing = tmp_path / "no-cifar-here"
    result = subprocess.run([*DEMO, "--out", str(out), "--dataset", "cifar10", "--root", str(missing)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "attacker failed with exit status 1" in result.stdout
    assert f"dataset directory {missing} not found" in result.stdout
    assert processes_mentioning(str(out)) == []


def test_demo_refuses_existing_run_directory(tmp_path):
    (tmp_path / "report.json").write_text("{}")
    result = subprocess.run([*DEMO, "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "already holds files" in result.stderr
    assert (tmp_path / "report.json").read_text() == "{}"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_interrupt_stops_all_roles(tmp_path, signum):
    out = tmp_path / "run"
    # A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT,
    # so the demo gets the default disposition back to turn SIGINT into KeyboardInterrupt.
    demo = subprocess.Popen(
        [*DEMO, "--out", str(out), "--epochs", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not (out / "client" / "manifest.jsonl").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(processes_mentioning(str(out))) == 4  # the launcher and its three roles
    demo.send_signal(signum)
    output, _ = demo.communicate(timeout=60)
    assert demo.returncode == 130, output
    assert "interrupted" in output
    assert processes_mentioning(str(out)) == []
