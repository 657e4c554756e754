"""Threat models on real recorded traffic: each beats the mean-image baseline, live and offline agree.

The module fixture trains a small split model on real mnist5k digits in this process. It
writes the files a recorded run leaves: a traffic log of what the server would receive, the
client's manifest, the encoder checkpoint and a server snapshot. Every attack runs on these
real files, and the live attack runs in a real attacker process fed over gRPC.
"""

import json
import shutil
import subprocess
import sys
import time

import grpc
import pytest
import torch
from torch import nn

from cemsplit.attacker.attack import run_attack
from cemsplit.attacker.inputs import AttackInputs
from cemsplit.client.trainer import encoder_state
from cemsplit.shared import codec
from cemsplit.shared.checkpoint import save_checkpoint
from cemsplit.shared.config import build_config, save_config
from cemsplit.shared.datasets import load_splits
from cemsplit.shared.manifest import ManifestWriter
from cemsplit.shared.snapshots import SnapshotWriter
from cemsplit.shared.specs import model_spec_message, split_spec
from cemsplit.shared.traffic_log import TrafficLogWriter, read_records
from cemsplit.shared.vgg import ClientNet, ServerNet
from cemsplit.v1 import attacker_pb2, attacker_pb2_grpc, tensor_pb2

pytestmark = pytest.mark.slow

SESSION = "0123456789abcdef0123456789abcdef"
EPOCHS = 3
BATCH = 64
# SGD learning rate per epoch. The last epoch runs at a decayed rate, as under the default
# schedule, so that the released encoder is close to the one that produced its traffic.
RATES = {1: 0.05, 2: 0.05, 3: 0.005}
SETTINGS = {
    "data": {"train_limit": 800, "test_limit": 200, "aux_limit": 256},
    "train": {"seed": 7},
    "attacker": {
        "decoder_blocks": 1,
        "decoder_epochs": 8,
        "decoder_batch_size": 32,
        "shadow_epochs": 10,
        "rmle_images": 32,
        "rmle_steps": 150,
        "grid_images": 8,
    },
}


def train_and_record(directory):
    """Train the split model jointly and write the files a recorded run leaves behind."""
    config = build_config(SETTINGS, "test settings")
    splits = load_splits(config.data)
    spec = split_spec(config)
    torch.manual_seed(0)
    encoder, server = ClientNet(spec), ServerNet(spec)
    optimizer = torch.optim.SGD([*encoder.parameters(), *server.parameters()], lr=0.05, momentum=0.9, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    manifest = ManifestWriter(directory / "client" / "manifest.jsonl")
    start = attacker_pb2.SessionStart(model=model_spec_message(spec), wire_dtype=tensor_pb2.FLOAT32, client_name="test")
    step = 0

    with TrafficLogWriter(directory / "traffic") as log:
        log.append(attacker_pb2.TrafficRecord(session_id=SESSION, timestamp_ns=time.time_ns(), session_start=start))
        for epoch in range(1, EPOCHS + 1):
            for group in optimizer.param_groups:
                group["lr"] = RATES[epoch]
            order = torch.randperm(len(splits.train), generator=generator)
            for begin in range(0, len(order), BATCH):
                index = order[begin:begin + BATCH]
                labels = splits.train.labels[index]
                features = encoder(splits.train.floats(index))
                loss = nn.functional.cross_entropy(server(features), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
                activations = attacker_pb2.ActivationRecord(
                    step=step, epoch=epoch, phase=attacker_pb2.TRAIN, activations=codec.encode(features), labels=codec.encode(labels)
                )
                log.append(attacker_pb2.TrafficRecord(session_id=SESSION, timestamp_ns=time.time_ns(), activations=activations))
                manifest.write(SESSION, step, epoch, splits.train.ids[index].tolist())
    manifest.close()

    save_checkpoint(encoder_state(encoder, spec), directory / "client" / "encoder.pt")
    SnapshotWriter(directory / "server" / "snapshots", 0).session_closed(SESSION, EPOCHS, step, server, spec)
    save_config(config, directory / "config.yaml")
    return config, splits


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    directory = tmp_path_factory.mktemp("recorded")
    config, splits = train_and_record(directory)
    return directory, config, splits


def inputs_of(directory) -> AttackInputs:
    return AttackInputs(
        traffic_dir=directory / "traffic",
        manifest=directory / "client" / "manifest.jsonl",
        encoder=directory / "client" / "encoder.pt",
        server_snapshot=directory / "server" / "snapshots",
    )


def assert_beats_mean_image(result, images):
    assert result["images_scored"] == images
    assert result["mse"] < result["mean_image_mse"], result
    assert 0 < result["ssim"] <= 1
    assert result["psnr"] > 0


def assert_target_accuracy(result):
    assert 0 <= result["target_accuracy"] <= 1
    assert result["target_accuracy_originals"] > 0.3  # chance is 0.1 on ten digit classes


def test_shadow_beats_mean_image(recorded, tmp_path):
    directory, config, splits = recorded
    inputs = inputs_of(directory)
    inputs.encoder = None  # a shadow-model attacker has no client encoder
    # The stand-in's features match the real ones only roughly, so the decoder needs more
    # capacity than the white-box one to beat the baseline by a clear margin.
    config = config.model_copy(deep=True)
    config.attacker.decoder_epochs = 15
    config.attacker.decoder_blocks = 2
    result = run_attack("shadow", config, splits, inputs, tmp_path)
    assert_beats_mean_image(result, 800)
    assert result["target_accuracy"] is None
    assert result["stand_in_train_accuracy"] > 0.3
    assert (tmp_path / "shadow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "shadow.json").read_text())["mse"] == result["mse"]


def test_rmle_beats_mean_image(recorded, tmp_path):
    directory, config, splits = recorded
    inputs = inputs_of(directory)
    result = run_attack("rmle", config, splits, inputs, tmp_path)
    assert_beats_mean_image(result, 32)
    assert_target_accuracy(result)
    assert result["steps"] == 150
    assert (tmp_path / "rmle.png").is_file()


def stream_log(address: str, directory) -> int:
    """Send every record of a log to an attacker's Record call, as the server's mirror does."""
    channel = grpc.insecure_channel(address)
    try:
        summary = attacker_pb2_grpc.AttackerStub(channel).Record(read_records(directory), timeout=120)
    finally:
        channel.close()
    return summary.received


@pytest.fixture(scope="module")
def live_white_box(recorded, tmp_path_factory):
    """Run the white-box attack in a real attacker process; return its results and run directory."""
    from conftest import RoleProcess

    directory, _, _ = recorded
    workdir = tmp_path_factory.mktemp("live")
    attacker = RoleProcess("attacker", ["--config", str(directory / "config.yaml"), "--threads", "1"], workdir)
    try:
        attacker.wait_port()
        assert stream_log(attacker.address, directory / "traffic") == EPOCHS * 13 + 1
        channel = grpc.insecure_channel(attacker.address)
        request = attacker_pb2.AttackRequest(
            threat="white-box",
            encoder_checkpoint=str(directory / "client" / "encoder.pt"),
            manifest=str(directory / "client" / "manifest.jsonl"),
            server_snapshot=str(directory / "server" / "snapshots"),
            out_dir=str(workdir / "attack"),
        )
        reply = attacker_pb2_grpc.AttackerStub(channel).Attack(request, timeout=900)
        channel.close()
    finally:
        assert attacker.stop() == 0, attacker.log()
    return json.loads(reply.result_json), reply, workdir


def test_white_box_beats_mean_image(live_white_box):
    result, reply, workdir = live_white_box
    assert_beats_mean_image(result, 800)
    assert_target_accuracy(result)
    assert result["scored_epoch"] == EPOCHS
    assert result["session_id"] == SESSION

    train_time = result["train_time"]
    assert (train_time["trained_on"], train_time["tested_on"], train_time["images_scored"]) == ("aux", "test", 200)
    assert train_time["mse"] < train_time["mean_image_mse"]
    inference_time = result["inference_time"]
    assert (inference_time["trained_on"], inference_time["tested_on"]) == ("test[0:180]", "test[180:200]")
    assert inference_time["images_scored"] == 20
    assert 0 < inference_time["mse"] < 1

    assert reply.metrics["mse"] == result["mse"]
    assert reply.metrics["train_time_mse"] == train_time["mse"]
    assert reply.images_scored == 800
    assert (workdir / "attack" / "white_box.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_offline_attack_on_copied_log_matches_live(recorded, live_white_box, tmp_path):
    directory, _, _ = recorded
    live, _, workdir = live_white_box
    copy = tmp_path / "copy"
    shutil.copytree(workdir / "attacker" / "traffic", copy / "traffic")
    for name in ("config.yaml", "client", "server"):
        source = directory / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, copy / name)
    out = tmp_path / "offline"

    command = [
        sys.executable, "-m", "cemsplit.cli", "attack", "--config", str(copy / "config.yaml"), "--threads", "1",
        "--traffic", str(copy / "traffic"), "--threat", "white-box", "--out", str(out),
        "--manifest", str(copy / "client" / "manifest.jsonl"), "--encoder", str(copy / "client" / "encoder.pt"),
        "--server-snapshot", str(copy / "server" / "snapshots"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "attack MSE (white-box)" in result.stdout

    report = json.loads((out / "report.json").read_text())
    offline = report["attack"]["white_box"]
    assert set(offline) == set(live)
    assert offline["grid"] == "white_box.png"
    assert (out / "white_box.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key in ("mse", "psnr", "ssim", "psnr_batch", "mean_image_mse", "target_accuracy", "decoder_train_mse"):
        assert offline[key] == pytest.approx(live[key], rel=1e-4), key
    for regime in ("train_time", "inference_time"):
        assert offline[regime]["mse"] == pytest.approx(live[regime]["mse"], rel=1e-4), regime
    assert report["session_id"] == SESSION
    assert report["dataset"]["aux"] == 256

