"""The runtime.device setting: resolution and clear errors where the machine lacks the device."""

import subprocess
import sys

import pytest
import torch

from cemsplit.shared.config import ConfigError, RunConfig, build_config
from cemsplit.shared.device import DeviceError, resolve_device

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert RunConfig().runtime.device == "auto"


def test_malformed_device_is_a_config_error():
    with pytest.raises(ConfigError, match="runtime.device"):
        build_config({"runtime": {"device": "gpu0"}}, "test")
    with pytest.raises(DeviceError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")


@NO_GPU
def test_cuda_without_gpu_names_the_setting():
    with pytest.raises(DeviceError, match=r"runtime.device 'cuda' needs CUDA.*--device cpu"):
        resolve_device("cuda")


@NO_GPU
def test_server_cuda_without_gpu_fails(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cemsplit.cli", "server", "--run-dir", str(tmp_path), "--device", "cuda", "--server-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert "runtime.device 'cuda' needs CUDA" in result.stderr
    assert "Traceback" not in result.stderr
