"""`cemsplit report` after roles started one by one, as docker-compose starts them."""

import json
import math
import subprocess
import sys

import pytest

# Settings every role reads: a few hundred real digits and one torch thread per process.
DATA = ["--train-limit", "640", "--test-limit", "200", "--aux-limit", "256", "--threads", "1"]
TRAIN = ["--epochs", "2", "--batch-size", "32"]


def report(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cemsplit.cli", "report", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_report_without_client_outputs(tmp_path):
    result = report("--run-dir", str(tmp_path), "--attacker", "127.0.0.1:1")
    assert result.returncode == 1
    assert str(tmp_path / "client" / "summary.json") in result.stderr
    assert "cemsplit client --run-dir" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_report_unreachable_attacker(tmp_path):
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    (client_dir / "summary.json").write_text(json.dumps({"session_id": "s1", "training_seconds": 1.0}))
    (client_dir / "encoder.pt").write_bytes(b"")
    (client_dir / "manifest.jsonl").write_text("")

    result = report("--run-dir", str(tmp_path), "--attacker", "127.0.0.1:1", "--connect-timeout-s", "2")
    assert result.returncode == 1
    assert "attacker 127.0.0.1:1 was not serving" in result.stderr
    assert not (tmp_path / "report.json").exists()


@pytest.mark.slow
def test_report_after_separate_roles(start_role, tmp_path):
    attacker = start_role("attacker", *DATA, "--decoder-epochs", "2")
    server = start_role("server", *DATA, "--attacker", attacker.address)
    client = start_role("client", *DATA, *TRAIN, "--server", server.address)
    assert client.process.wait(600) == 0, client.log()

    result = report("--run-dir", str(tmp_path), "--attacker", attacker.address, *DATA, *TRAIN)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test accuracy" in result.stdout

    summary = json.loads((tmp_path / "client" / "summary.json").read_text())
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["session_id"] == summary["session_id"]
    assert 0.2 < written["test_accuracy"] <= 1.0  # chance is 0.1 on ten digit classes
    white_box = written["attack"]["white_box"]
    for key in ("mse", "psnr", "ssim"):
        assert math.isfinite(white_box[key]), key
    assert 0 < white_box["mse"] < 1
    assert white_box["images_scored"] == 640
    assert white_box["grid"] == "attacker/white_box.png"
    assert written["recording"]["received"] == 41  # one session start and 2 epochs of 20 steps
    assert written["timing"]["attack_s"] > 0
    assert written["timing"]["total_s"] > written["timing"]["training_s"] > 0
    assert (tmp_path / "attacker" / "white_box.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "config.yaml").is_file()
    assert "| test accuracy |" in (tmp_path / "report.md").read_text()
