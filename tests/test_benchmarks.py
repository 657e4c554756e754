"""The transport benchmark runs its three ways on real digits and writes its JSON result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODES = ["in_process", "grpc_stream_overlap", "torch_rpc"]


@pytest.mark.slow
def test_transport_benchmark_writes_ratios(tmp_path):
    result = tmp_path / "transport.json"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    command = [
        sys.executable, "-m", "benchmarks.transport", "--steps", "2", "--batch-size", "32", "--repeats", "1",
        "--settings", "bottleneck", "--modes", *MODES, "--result", str(result),
    ]
    environment = {**os.environ, "TMPDIR": str(scratch)}
    output = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert output.returncode == 0, output.stdout[-3000:] + output.stderr[-3000:]
    # The run directories of all modes, hundreds of MB, are removed at the end. torch may leave
    # its own compiler cache (torchinductor_<user>) there, which is not the benchmark's.
    assert [path.name for path in scratch.iterdir() if not path.name.startswith("torchinductor")] == []

    data = json.loads(result.read_text())
    rows = data["results"]["bottleneck"]
    assert sorted(rows) == sorted(MODES)
    grpc_row = rows["grpc_stream_overlap"]
    assert grpc_row["samples_per_s"] > 0
    assert grpc_row["over_in_process"] == pytest.approx(grpc_row["samples_per_s"] / rows["in_process"]["samples_per_s"])
    assert grpc_row["over_torch_rpc"] == pytest.approx(grpc_row["samples_per_s"] / rows["torch_rpc"]["samples_per_s"])
    # Activations out and gradients back, 8 x 7 x 7 float32 values each per sample, plus labels and fields.
    assert 2 * 8 * 7 * 7 * 4 < grpc_row["wire_bytes_per_sample"] < 2 * 8 * 7 * 7 * 4 + 100
    assert grpc_row["server_peak_rss_mib"] > 0
    assert 0 <= grpc_row["test_accuracy"] <= 1
    assert data["profile"]["setting"] == "bottleneck"
    assert "function calls" in data["profile"]["top_tottime"]
    assert data["decoder_epoch_seconds_1000_images"] > 0
