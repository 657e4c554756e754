"""Replying before the server's optimizer step leaves training bit-identical: real processes, same seed."""

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, RoleProcess

# 10 steps of 64 digits; steps 4, 8 and 10 checkpoint and so update before replying, the rest after.
TRAIN = [*TINY, "--epochs", "1", "--checkpoint-every", "4", "--retry-max-elapsed-s", "60"]
SERVER = ["--train-limit", "640", "--test-limit", "200", "--aux-limit", "256", "--threads", "1"]


def train_once(workdir: Path, update_after_reply: str) -> tuple[dict, dict, dict]:
    """Run a server and a client to the end; returns the summary, encoder weights and server snapshot weights."""
    server = RoleProcess("server", [*SERVER, "--update-after-reply", update_after_reply], workdir)
    try:
        server.wait_port()
        client = RoleProcess("client", [*TRAIN, "--server", server.address], workdir)
        client.process.wait(300)
        assert client.process.returncode == 0, client.log()
    finally:
        server.stop()
    expected = "after" if update_after_reply == "true" else "before"
    assert f"optimizer step {expected} the reply" in server.log()

    summary = json.loads((workdir / "client" / "summary.json").read_text())
    encoder = torch.load(workdir / "client" / "encoder.pt", weights_only=True)["encoder"]
    snapshots = sorted((workdir / "server" / "snapshots").rglob("*.pt"))
    assert snapshots, f"no server snapshot in {workdir / 'server' / 'snapshots'}"
    server_half = torch.load(snapshots[-1], weights_only=True)["model"]
    return summary, encoder, server_half


def assert_same_tensors(left: dict, right: dict, what: str) -> None:
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), f"{what} {name} differs"


@pytest.mark.slow
def test_update_after_reply_is_bit_identical(tmp_path):
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()

    before = train_once(tmp_path / "before", "false")
    after = train_once(tmp_path / "after", "true")

    summary_before, summary_after = before[0], after[0]
    assert summary_after["steps"] == summary_before["steps"] == 10
    assert summary_after["epochs"][0]["train_loss"] == summary_before["epochs"][0]["train_loss"]
    assert summary_after["epochs"][0]["test_loss"] == summary_before["epochs"][0]["test_loss"]
    assert_same_tensors(before[1], after[1], "encoder weight")
    assert_same_tensors(before[2], after[2], "server weight")
