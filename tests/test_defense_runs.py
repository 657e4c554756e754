"""Two-epoch runs of every defence across real server, attacker and client processes.

One server and one attacker serve the whole module. Each defence runs its own client session
against them, and then the attacker trains its decoder under the client's transmit transform.
The recorded traffic shows that the transform happened on the wire.
"""

import json
import math
import subprocess
import sys

import grpc
import pytest
import torch

from cemsplit.attacker.traffic import load_session_traffic
from cemsplit.cli.main import build_parser
from cemsplit.shared.checkpoint import load_checkpoint
from cemsplit.shared.config import config_from_args
from cemsplit.shared.defenses import TransmitTransform, build_defense
from cemsplit.shared.grpc_util import wait_until_serving
from cemsplit.v1 import attacker_pb2, attacker_pb2_grpc

from conftest import RoleProcess, newest_client_checkpoint

# 160 training digits in batches of 32: 5 steps per epoch.
TRAIN_IMAGES = 160
DATA = ["--train-limit", str(TRAIN_IMAGES), "--test-limit", "64", "--aux-limit", "64", "--threads", "1"]
CLIENT = [*DATA, "--batch-size", "32", "--epochs", "2"]
ATTACKER = [*DATA, "--decoder-epochs", "1", "--decoder-batch-size", "32"]
FEATURE_ENTRIES = 8 * 7 * 7

DEFENSES = {
    "noise": ["--defense", "noise", "--noise-std", "0.05"],
    "laplace": ["--defense", "laplace", "--noise-std", "0.05"],
    "dropout": ["--defense", "dropout", "--dropout-rate", "0.3"],
    "topk": ["--defense", "topk", "--topk-ratio", "0.25"],
    "nopeek": ["--defense", "nopeek", "--nopeek-weight", "0.5"],
    "cem": ["--defense", "cem", "--noise-std", "0.025", "--cem-weight", "16", "--var-threshold", "0.125", "--num-clusters", "3"],
    # nopeek+cem runs in test_demo_reports_defense.
    # The attention variants with small settings, so that two epochs stay short on 2 cores.
    "cem-att": ["--defense", "cem-att", "--noise-std", "0.025", "--num-clusters", "3", "--att-slots", "4", "--att-iterations", "2"],
    "cem-mix": ["--defense", "cem-mix", "--noise-std", "0.025", "--num-clusters", "3", "--att-slots", "4", "--att-iterations", "1"],
    "cem-enhanced": [
        "--defense", "cem-enhanced", "--noise-std", "0.025", "--num-clusters", "3", "--enhanced-slots", "4",
        "--enhanced-iterations", "2", "--enhanced-layers", "1", "--enhanced-dim", "64",
    ],
    "dropout+cem-fused-gmm": [
        "--defense", "dropout+cem", "--noise-std", "0.05", "--dropout-rate", "0.3",
        "--cem-combine", "fused", "--cem-clustering", "gmm", "--num-clusters", "2",
    ],
}


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """A server mirroring to an attacker, shared by the module's client runs."""
    workdir = tmp_path_factory.mktemp("services")
    started = []
    try:
        attacker = RoleProcess("attacker", ATTACKER, workdir)
        started.append(attacker)
        attacker.wait_port()
        server = RoleProcess("server", [*DATA, "--attacker", f"127.0.0.1:{attacker.port}"], workdir)
        started.append(server)
        server.wait_port()
        for role in started:
            channel = grpc.insecure_channel(role.address)
            wait_until_serving(channel, "", 60, role.role)
            channel.close()
        yield server, attacker, workdir
    finally:
        for role in started:
            role.stop()


def run_client(server, args, tmp_path):
    client = RoleProcess("client", [*CLIENT, *args, "--server", server.address], tmp_path)
    try:
        returncode = client.process.wait(timeout=600)
    except subprocess.TimeoutExpired:
        client.stop()
        raise AssertionError(f"client did not finish within 600 s:\n{client.log()}") from None
    assert returncode == 0, client.log()
    summary = json.loads((tmp_path / "client" / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "client" / "metrics.jsonl").read_text().splitlines()]
    return summary, rows


def attack(attacker, transform, session_id, tmp_path):
    channel = grpc.insecure_channel(attacker.address)
    try:
        stub = attacker_pb2_grpc.AttackerStub(channel)
        request = attacker_pb2.AttackRequest(
            threat="white-box",
            session_id=session_id,
            encoder_checkpoint=str(tmp_path / "client" / "encoder.pt"),
            manifest=str(tmp_path / "client" / "manifest.jsonl"),
            out_dir=str(tmp_path),
            transmit=transform.to_message(),
        )
        stub.Attack(request, timeout=600)
    finally:
        channel.close()
    return json.loads((tmp_path / "white_box.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DEFENSES))
def test_two_epochs_with_defense(name, services, tmp_path):
    server, attacker, workdir = services
    args = DEFENSES[name]
    config = config_from_args(build_parser().parse_args(["client", *CLIENT, *args]))
    transform = TransmitTransform.from_config(config.defense)

    summary, rows = run_client(server, args, tmp_path)
    assert summary["defense"]["name"] == config.defense.defense
    assert len(rows) == 2
    assert all(0 <= row["test_accuracy"] <= 1 for row in rows)

    result = attack(attacker, transform, summary["session_id"], tmp_path)
    assert result["transmit"] == transform.describe()
    assert result["images_scored"] == TRAIN_IMAGES
    for key in ("mse", "psnr", "ssim"):
        assert math.isfinite(result[key]), key

    sent = torch.cat(load_session_traffic(workdir / "attacker" / "traffic", summary["session_id"]).activations).flatten(1)
    assert sent.shape == (2 * TRAIN_IMAGES, FEATURE_ENTRIES)
    outside_sigmoid_range = float(((sent < 0) | (sent > 1)).float().mean())
    zeros = float((sent == 0).float().mean())
    if transform.noise == "none" and transform.dropout_rate == 0:
        assert outside_sigmoid_range == 0
    else:
        assert outside_sigmoid_range > 0
    if transform.dropout_rate:
        assert zeros == pytest.approx(transform.dropout_rate, abs=0.02)
    if transform.topk_ratio:
        assert (sent != 0).sum(dim=1).tolist() == [round(transform.topk_ratio * FEATURE_ENTRIES)] * (2 * TRAIN_IMAGES)

    if "nopeek" in config.defense.components:
        assert all(row["nopeek_active_steps"] == 5 for row in rows)
        assert all(0 < row["nopeek_loss"] <= 1 for row in rows)
    variant = config.defense.cem_variant
    if variant is not None:
        # CEM starts once the first epoch's clustering exists.
        assert rows[0]["cem_active_steps"] == 0
        assert "cem_loss" not in rows[0]
        assert rows[1]["cem_active_steps"] == 5
        assert rows[1]["cem_loss"] >= 0
        for row in rows:
            assert math.isfinite(row["cem_logdet"])
            assert row["cem_cluster_seconds"] >= 0
        state = load_checkpoint(newest_client_checkpoint(tmp_path / "client"), required_keys=("defense",))
        saved = state["defense"]["losses"]["cem"]
        clusters = saved["clusters"] if variant == "cem" else saved["clusterings"]["reference"]["clusters"]
        clusters_per_class = config.defense.num_clusters
        assert clusters["centroids"].shape == (10, clusters_per_class, FEATURE_ENTRIES)
        assert int(clusters["class_counts"].sum()) == TRAIN_IMAGES
        assert ("covariances" in clusters) == (config.defense.cem_clustering == "gmm")
    if variant not in (None, "cem"):
        check_attention_variant(config.defense, summary, rows, saved)


def check_attention_variant(defense, summary, rows, saved):
    """The variant's settings reach the summary, its weights train and are checkpointed."""
    described = summary["defense"]
    assert described["cem_combine"] == defense.combine
    assert described["parameters"] > 0
    if defense.cem_variant in ("cem-att", "cem-mix"):
        assert (described["att_slots"], described["att_iterations"], described["att_heads"]) == (4, defense.att_iterations, 4)
    if defense.cem_variant == "cem-mix":
        assert 0 < rows[1]["cem_mix_weight_clustering"] < 1
        assert rows[1]["cem_mix_weight_attention"] == pytest.approx(1 - rows[1]["cem_mix_weight_clustering"])
        assert "cem_mix_weight_clustering" not in rows[0]
    if defense.cem_variant == "cem-enhanced":
        assert (described["enhanced_slots"], described["enhanced_layers"], described["enhanced_dim"]) == (4, 1, 64)
        assert described["enhanced_floor"] == "noise"
        assert described["cem_combine"] == "fused"

    # The module trained during epoch 2: its weights moved from their seeded initial values.
    seed = 125 + 1 + 1
    fresh = build_defense(defense, 10, True, seed=125 + 1, feature_dim=FEATURE_ENTRIES).losses[0]
    assert fresh.seed == seed
    module = saved["module"]
    assert set(module) == set(fresh.module.state_dict())
    moved = [name for name, value in fresh.module.state_dict().items() if not torch.equal(value, module[name])]
    assert moved


@pytest.mark.slow
def test_cem_at_weight_zero_trains_as_noise(services, tmp_path):
    """A CEM variant at cem_weight 0 trains the same encoder as plain noise; sweeps rely on it."""
    server, _, _ = services
    noise_dir = tmp_path / "noise"
    noise_dir.mkdir()
    run_client(server, ["--defense", "noise", "--noise-std", "0.025"], noise_dir)
    expected = load_checkpoint(noise_dir / "client" / "encoder.pt")["encoder"]

    for variant in ("cem", "cem-att", "cem-mix", "cem-enhanced"):
        run_dir = tmp_path / variant
        run_dir.mkdir()
        run_client(server, [*DEFENSES[variant], "--cem-weight", "0"], run_dir)  # the later --cem-weight wins
        trained = load_checkpoint(run_dir / "client" / "encoder.pt")["encoder"]
        differing = [name for name, value in expected.items() if not torch.equal(value, trained[name])]
        assert differing == [], f"{variant} at cem_weight 0 trained other encoder weights: {differing}"


@pytest.mark.slow
def test_demo_reports_defense(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "cemsplit.cli", "demo", *DATA, "--batch-size", "32", "--epochs", "2", "--decoder-epochs", "1",
        "--defense", "nopeek+cem", "--noise-std", "0.025", "--cem-weight", "8", "--num-clusters", "3", "--out", str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr

    report = json.loads((out / "report.json").read_text())
    defense = report["defense"]
    assert defense["name"] == "nopeek+cem"
    assert defense["noise"] == "gaussian"
    assert defense["noise_std"] == 0.025
    assert defense["cem_weight"] == 8.0
    assert defense["num_clusters"] == 3
    assert defense["var_threshold"] == 0.125
    assert defense["cem_combine"] == "separate"
    assert defense["nopeek_weight"] == 1.0
    assert math.isfinite(report["epochs"][-1]["cem_logdet"])
    assert "CEM log-det" in (out / "report.md").read_text()
    assert "nopeek+cem (noise=gaussian, noise_std=0.025" in result.stdout

    white_box = json.loads((out / "attacker" / "white_box.json").read_text())
    assert white_box["transmit"] == {"defense": "nopeek+cem", "noise": "gaussian", "noise_std": 0.025}


@pytest.mark.slow
def test_demo_reports_attention_variant(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "cemsplit.cli", "demo", *DATA, "--batch-size", "32", "--epochs", "2", "--decoder-epochs", "1",
        "--defense", "cem-mix", "--noise-std", "0.025", "--num-clusters", "3", "--att-slots", "4", "--att-iterations", "1",
        "--mix-prior-weight", "2", "--out", str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr

    report = json.loads((out / "report.json").read_text())
    defense = report["defense"]
    assert defense["name"] == "cem-mix"
    assert defense["noise"] == "gaussian"
    assert defense["noise_std"] == 0.025
    assert (defense["att_slots"], defense["att_iterations"], defense["att_heads"], defense["att_dim"]) == (4, 1, 4, FEATURE_ENTRIES)
    assert defense["mix_prior_weight"] == 2.0
    assert defense["cem_combine"] == "separate"
    last = report["epochs"][-1]
    assert math.isfinite(last["cem_logdet"])
    assert 0 < last["cem_mix_weight_clustering"] < 1
    assert "CEM-mix clustering weight" in (out / "report.md").read_text()

    white_box = json.loads((out / "attacker" / "white_box.json").read_text())
    assert white_box["transmit"] == {"defense": "cem-mix", "noise": "gaussian", "noise_std": 0.025}
