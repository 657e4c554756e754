"""Checkpoint files: written atomically with mode 0600, read back exactly, never left half written."""

import re
import stat
import threading

import pytest
import torch

from cemsplit.shared.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_checkpoint_round_trip_is_private(tmp_path):
    path = tmp_path / "run" / "step-1.pt"
    state = {"model": {"weight": torch.randn(64, 32)}, "step": 7}

    save_checkpoint(state, path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_checkpoint(path, ("model", "step"))
    assert loaded["step"] == 7
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "step-1.pt"
    save_checkpoint({"step": 1}, path)

    # torch.save raises on a lock, after the temporary file was opened.
    with pytest.raises(Exception):
        save_checkpoint({"step": 2, "lock": threading.Lock()}, path)

    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-1.pt"]


def test_missing_key_names_the_file(tmp_path):
    path = tmp_path / "step-1.pt"
    save_checkpoint({"step": 1}, path)

    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {path} lacks ['model']")):
        load_checkpoint(path, ("model",))
