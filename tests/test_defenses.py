"""Client defences: transmit transforms, NoPeek, the combined backward pass, state and config."""

import math

import numpy as np
import pytest
import torch

from cemsplit.cli.main import build_parser
from cemsplit.shared.checkpoint import load_checkpoint, save_checkpoint
from cemsplit.shared.config import ConfigError, DefenseConfig, config_from_args
from cemsplit.shared.defenses import StepTensors, TransmitTransform, build_defense
from cemsplit.shared.defenses.cem.clusters import ClassClusters
from cemsplit.shared.defenses.cem.loss import cem_loss, separate_scale
from cemsplit.shared.defenses.nopeek import distance_correlation
from cemsplit.shared.vgg import ClientNet, ServerNet, SplitSpec
from cemsplit.v1 import attacker_pb2, defense_pb2

SPEC = SplitSpec(input_shape=(1, 28, 28), num_classes=10)


def parse(*argv):
    return config_from_args(build_parser().parse_args(["client", *argv]))


# -- Transmit transforms -------------------------------------------------------------------------


def test_gaussian_noise_has_configured_std():
    features = torch.full((200, 8, 7, 7), 0.5)
    sent = TransmitTransform(noise="gaussian", noise_std=0.05).apply(features, torch.Generator().manual_seed(0))
    noise = sent - features
    assert float(noise.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(noise.std()) == pytest.approx(0.05, rel=0.01)


def test_laplace_noise_has_configured_std_and_heavier_tails():
    features = torch.zeros(200, 8, 7, 7)
    noise = TransmitTransform(noise="laplace", noise_std=0.05).apply(features, torch.Generator().manual_seed(0))
    assert float(noise.std()) == pytest.approx(0.05, rel=0.01)
    # Excess kurtosis of a Laplace distribution is 3 (0 for a Gaussian).
    centred = noise - noise.mean()
    kurtosis = float(centred.pow(4).mean() / centred.pow(2).mean() ** 2) - 3
    assert kurtosis == pytest.approx(3.0, abs=0.3)


def test_dropout_zeroes_rate_and_keeps_mean():
    features = torch.full((200, 8, 7, 7), 0.5)
    sent = TransmitTransform(dropout_rate=0.3).apply(features, torch.Generator().manual_seed(0))
    assert float((sent == 0).float().mean()) == pytest.approx(0.3, abs=0.01)
    assert float(sent.mean()) == pytest.approx(0.5, rel=0.02)
    assert torch.allclose(sent[sent != 0], torch.tensor(0.5 / 0.7))


def test_topk_keeps_largest_entries_per_sample():
    features = torch.rand(6, 8, 7, 7, generator=torch.Generator().manual_seed(0))
    sent = TransmitTransform(topk_ratio=0.25).apply(features, torch.Generator())
    kept = sent.flatten(1) != 0
    assert kept.sum(dim=1).tolist() == [98] * 6  # round(0.25 * 392)
    smallest_kept = sent.flatten(1).masked_fill(~kept, math.inf).min(dim=1).values
    largest_dropped = features.flatten(1).masked_fill(kept, -math.inf).max(dim=1).values
    assert bool((smallest_kept >= largest_dropped).all())


def test_noise_comes_before_pruning():
    features = torch.rand(4, 8, 7, 7, generator=torch.Generator().manual_seed(0))
    sent = TransmitTransform(noise="gaussian", noise_std=0.1, topk_ratio=0.5).apply(features, torch.Generator().manual_seed(1))
    # Pruned entries are exactly zero on the wire, the kept ones carry noise.
    assert (sent.flatten(1) == 0).sum(dim=1).tolist() == [196] * 4
    assert not torch.equal(sent[sent != 0], features[sent != 0])


def test_transform_keeps_gradient_path():
    features = torch.rand(4, 8, 7, 7, requires_grad=True)
    sent = TransmitTransform(noise="gaussian", noise_std=0.1, dropout_rate=0.5).apply(features, torch.Generator().manual_seed(0))
    sent.sum().backward()
    kept = sent.detach() != 0
    assert torch.allclose(features.grad[kept], torch.tensor(2.0))
    assert float(features.grad[~kept].abs().max()) == 0.0


def test_transform_message_round_trip():
    transform = TransmitTransform(noise="laplace", noise_std=0.07, dropout_rate=0.1, defense="laplace+dropout")
    message = transform.to_message()
    assert message.noise == defense_pb2.NOISE_LAPLACE
    assert TransmitTransform.from_message(defense_pb2.TransmitTransform.FromString(message.SerializeToString())) == transform


@pytest.mark.parametrize(
    "fields,error",
    [
        (dict(noise=7), "not a known NoiseKind"),
        (dict(noise=defense_pb2.NOISE_GAUSSIAN, noise_std=-1.0), "noise_std -1.0 is invalid"),
        (dict(noise=defense_pb2.NOISE_GAUSSIAN, noise_std=float("nan")), "is invalid"),
        (dict(noise=defense_pb2.NOISE_GAUSSIAN), "inconsistent"),
        (dict(dropout_rate=1.0), "dropout_rate 1.0 is out of range"),
        (dict(topk_ratio=1.5), "topk_ratio 1.5 is out of range"),
        (dict(dropout_rate=0.1, topk_ratio=0.5), "both enabled"),
    ],
)
def test_invalid_transform_messages(fields, error):
    with pytest.raises(ValueError, match=error):
        TransmitTransform.from_message(defense_pb2.TransmitTransform(**fields))


def test_transform_from_config():
    assert TransmitTransform.from_config(DefenseConfig()).is_identity
    cem = TransmitTransform.from_config(DefenseConfig(defense="topk+cem", noise_std=0.025, topk_ratio=0.3))
    assert (cem.noise, cem.noise_std, cem.topk_ratio, cem.dropout_rate, cem.defense) == ("gaussian", 0.025, 0.3, 0.0, "topk+cem")
    nopeek = TransmitTransform.from_config(DefenseConfig(defense="nopeek"))
    assert nopeek.is_identity


def test_attacker_builds_transform_from_request():
    from cemsplit.attacker.transmit import transmit_transform

    plain = transmit_transform(attacker_pb2.AttackRequest(noise_std=0.05))
    assert (plain.noise, plain.noise_std) == ("gaussian", 0.05)
    assert transmit_transform(attacker_pb2.AttackRequest()).is_identity

    described = TransmitTransform(noise="gaussian", noise_std=0.025, dropout_rate=0.2, defense="dropout+cem")
    request = attacker_pb2.AttackRequest(transmit=described.to_message())
    assert transmit_transform(request) == described
    request.noise_std = 0.025
    assert transmit_transform(request) == described
    request.noise_std = 0.1
    with pytest.raises(ValueError, match="disagrees with transmit"):
        transmit_transform(request)


# -- NoPeek --------------------------------------------------------------------------------------


def reference_distance_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Szekely's sample distance correlation with explicit loops."""
    n = len(x)

    def centred(samples):
        distances = np.array([[np.linalg.norm(samples[i] - samples[j]) for j in range(n)] for i in range(n)])
        return distances - distances.mean(0) - distances.mean(1)[:, None] + distances.mean()

    a, b = centred(x.reshape(n, -1)), centred(y.reshape(n, -1))
    return math.sqrt((a * b).mean() / math.sqrt((a * a).mean() * (b * b).mean()))


def test_distance_correlation_matches_definition():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 4, 4, generator=generator, dtype=torch.float64)
    y = torch.tanh(x.flatten(1)[:, :5] * 3) + 0.3 * torch.rand(12, 5, generator=generator, dtype=torch.float64)
    assert float(distance_correlation(x, y)) == pytest.approx(reference_distance_correlation(x.numpy(), y.numpy()), rel=1e-6)


def test_distance_correlation_extremes():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(64, 10, generator=generator, dtype=torch.float64)
    assert float(distance_correlation(x, 3 * x + 1)) == pytest.approx(1.0, abs=1e-6)
    # The sample statistic of independent data is biased upwards and shrinks as B grows.
    small = distance_correlation(torch.rand(64, 10, generator=generator), torch.rand(64, 10, generator=generator))
    large = distance_correlation(torch.rand(1024, 10, generator=generator), torch.rand(1024, 10, generator=generator))
    assert float(large) < float(small)
    assert float(large) < 0.3


def test_distance_correlation_gradient_is_finite_with_duplicates():
    x = torch.rand(8, 4)
    z = torch.cat([torch.rand(4, 3), torch.rand(4, 3)])
    z[1] = z[0]
    z.requires_grad_(True)
    distance_correlation(x, z).backward()
    assert bool(torch.isfinite(z.grad).all())


# -- The combined backward pass --------------------------------------------------------------------


def fitted_cem_defense(combine: str, cem_weight: float = 16.0, parts: str = "cem"):
    """A defence whose CEM clusters come from the encoder's features of the first batch."""
    config = DefenseConfig(defense=parts, noise_std=0.05, cem_weight=cem_weight, cem_combine=combine, num_clusters=2)
    defense = build_defense(config, num_classes=10, client_sigmoid=True, seed=0)
    torch.manual_seed(0)
    encoder = ClientNet(SPEC)
    images = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(40) % 10

    def encode():
        with torch.no_grad():
            return encoder.eval()(images), labels

    defense.end_epoch(1, encode)
    encoder.train()
    return defense, encoder, images, labels


@pytest.mark.parametrize("combine", ["separate", "fused"])
def test_cem_gradient_reaches_only_client_parameters(combine):
    defense, encoder, images, labels = fitted_cem_defense(combine)
    server = ServerNet(SPEC)
    features = encoder(images)
    transmitted = defense.transmit(features)
    logits = server(transmitted)
    assert logits.shape == (40, 10)

    # Zero server gradient: the whole client update is the CEM term.
    defense.backward(StepTensors(images, labels, features, transmitted, torch.zeros_like(transmitted), lr=0.05))
    assert all(parameter.grad is None for parameter in server.parameters())
    client_norm = sum(float(parameter.grad.abs().sum()) for parameter in encoder.parameters())
    assert client_norm > 0


@pytest.mark.parametrize("combine,lr", [("separate", 0.05), ("separate", 1e-4), ("fused", 0.05)])
def test_backward_equals_reference_two_pass_update(combine, lr):
    defense, encoder, images, labels = fitted_cem_defense(combine)
    cem = defense.losses[0]
    features = encoder(images)
    transmitted = defense.transmit(features)
    server_gradient = torch.randn(transmitted.shape, generator=torch.Generator().manual_seed(3))
    parameters = list(encoder.parameters())

    # The reference: gradients of the CEM loss alone, then the task gradients, then their sum
    # with the CEM part scaled by lambda * s(lr) (separate) or lambda (fused).
    cem_value = cem_loss(features, labels, cem.clusters, 0.05, 0.125)
    cem_gradients = torch.autograd.grad(cem_value, parameters, retain_graph=True)
    task_gradients = torch.autograd.grad(transmitted, parameters, server_gradient, retain_graph=True)
    scale = 16.0 * (separate_scale(lr) if combine == "separate" else 1.0)
    expected = [task + scale * extra for task, extra in zip(task_gradients, cem_gradients)]

    defense.backward(StepTensors(images, labels, features, transmitted, server_gradient, lr))
    # Compared as one vector: conv biases before batch norm have gradients of rounding size.
    got = torch.cat([parameter.grad.flatten() for parameter in parameters])
    expected_flat = torch.cat([gradient.flatten() for gradient in expected])
    assert float((got - expected_flat).norm() / expected_flat.norm()) < 1e-5


def test_cem_inactive_until_first_clustering():
    config = DefenseConfig(defense="cem", noise_std=0.05)
    defense = build_defense(config, num_classes=10, client_sigmoid=True, seed=0)
    encoder = ClientNet(SPEC)
    images = torch.rand(8, 1, 28, 28)
    features = encoder(images)
    transmitted = defense.transmit(features)
    defense.backward(StepTensors(images, torch.arange(8), features, transmitted, torch.ones_like(transmitted), 0.05))
    assert defense.epoch_metrics() == {"cem_active_steps": 0}


def test_zero_weight_cem_records_loss_without_gradient():
    defense, encoder, images, labels = fitted_cem_defense("fused", cem_weight=0.0)
    features = encoder(images)
    transmitted = defense.transmit(features)
    defense.backward(StepTensors(images, labels, features, transmitted, torch.zeros_like(transmitted), 0.05))
    assert all(float(parameter.grad.abs().sum()) == 0 for parameter in encoder.parameters())
    metrics = defense.epoch_metrics()
    assert metrics["cem_active_steps"] == 1
    assert metrics["cem_loss"] > 0


def test_nopeek_and_cem_metrics_and_description():
    defense, encoder, images, labels = fitted_cem_defense("separate", parts="nopeek+cem")
    for _ in range(2):
        features = encoder(images)
        transmitted = defense.transmit(features)
        defense.backward(StepTensors(images, labels, features, transmitted, torch.zeros_like(transmitted), 0.05))
    metrics = defense.epoch_metrics()
    assert metrics["nopeek_active_steps"] == 2
    assert 0 < metrics["nopeek_loss"] <= 1
    assert metrics["cem_active_steps"] == 2
    assert defense.epoch_metrics() == {"nopeek_active_steps": 0, "cem_active_steps": 0}

    description = defense.describe()
    assert description["name"] == "nopeek+cem"
    assert description["noise"] == "gaussian"
    assert description["noise_std"] == 0.05
    assert description["nopeek_weight"] == 1.0
    assert description["cem_weight"] == 16.0
    assert description["num_clusters"] == 2
    assert description["var_threshold"] == 0.125


def test_end_epoch_reports_diagnostics():
    defense, _, _, _ = fitted_cem_defense("separate")
    encoder = ClientNet(SPEC).eval()
    images = torch.rand(30, 1, 28, 28)
    with torch.no_grad():
        features = encoder(images)
    diagnostics = defense.end_epoch(2, lambda: (features, torch.arange(30) % 10))
    assert math.isfinite(diagnostics["cem_logdet"])
    assert diagnostics["cem_logdet"] > math.log(0.05**2)
    for key in ("cem_cluster_seconds", "cem_encode_seconds", "cem_cluster_iterations", "cem_unconverged_classes"):
        assert key in diagnostics


def test_state_survives_a_checkpoint(tmp_path):
    defense, _, _, _ = fitted_cem_defense("separate")
    defense.transmit(torch.rand(2, 8, 7, 7))
    save_checkpoint({"defense": defense.state_dict()}, tmp_path / "client.pt")
    state = load_checkpoint(tmp_path / "client.pt", required_keys=("defense",))

    restored = build_defense(DefenseConfig(defense="cem", noise_std=0.05, num_clusters=2), 10, True, seed=99)
    restored.load_state_dict(state["defense"])
    original_clusters = defense.losses[0].clusters
    assert torch.equal(restored.losses[0].clusters.centroids, original_clusters.centroids)
    assert torch.equal(restored.losses[0].clusters.class_counts, original_clusters.class_counts)
    features = torch.rand(3, 8, 7, 7)
    assert torch.equal(restored.transmit(features), defense.transmit(features))

    other = build_defense(DefenseConfig(defense="noise", noise_std=0.05), 10, True, seed=0)
    with pytest.raises(ValueError, match="checkpoint's defence is 'cem'"):
        other.load_state_dict(state["defense"])


def test_default_clusters_depend_on_sigmoid():
    config = DefenseConfig(defense="cem", noise_std=0.05)
    assert build_defense(config, 10, client_sigmoid=True, seed=0).describe()["num_clusters"] == 5
    assert build_defense(config, 10, client_sigmoid=False, seed=0).describe()["num_clusters"] == 15


def test_clusters_loaded_as_class_clusters():
    defense, _, _, _ = fitted_cem_defense("separate")
    assert isinstance(defense.losses[0].clusters, ClassClusters)


# -- Configuration ---------------------------------------------------------------------------------


def test_issue_example_command_line():
    config = parse("--defense", "cem", "--noise-std", "0.025", "--cem-weight", "16", "--var-threshold", "0.125", "--num-clusters", "5")
    assert config.defense.components == ("cem",)
    assert config.defense.gaussian_noise
    assert (config.defense.noise_std, config.defense.cem_weight, config.defense.var_threshold, config.defense.num_clusters) == (0.025, 16, 0.125, 5)


@pytest.mark.parametrize(
    "name,canonical",
    [
        ("none", "none"),
        ("NoPeek", "nopeek"),
        ("cem+nopeek", "nopeek+cem"),
        ("noise+cem", "cem"),
        ("cem + topk", "topk+cem"),
        ("noise+dropout", "dropout+noise"),
    ],
)
def test_defense_names_are_normalised(name, canonical):
    noisy = any(part in canonical for part in ("noise", "cem"))
    config = DefenseConfig(defense=name, noise_std=0.05 if noisy else 0.0)
    assert config.defense == canonical


@pytest.mark.parametrize(
    "argv,error",
    [
        (["--defense", "cem"], "needs noise_std > 0 because CEM shrinks each class's clusters relative to the noise variance"),
        (["--defense", "nopeek+cem"], "needs noise_std > 0"),
        (["--defense", "laplace"], "needs noise_std > 0 to add Laplacian noise"),
        (["--defense", "none", "--noise-std", "0.1"], "adds no noise"),
        (["--defense", "dropout", "--noise-std", "0.1"], "adds no noise"),
        (["--defense", "noise+laplace", "--noise-std", "0.1"], "choose noise or laplace"),
        (["--defense", "laplace+cem", "--noise-std", "0.1"], "assume Gaussian noise"),
        (["--defense", "dropout+topk"], "choose dropout or topk"),
        (["--defense", "cem+cem", "--noise-std", "0.1"], "repeats a part"),
        (["--defense", "none+noise", "--noise-std", "0.1"], "unknown part"),
        (["--defense", "arl"], r"unknown part\(s\) \['arl'\]"),
        (["--defense", "dropout", "--dropout-rate", "1"], "dropout_rate"),
        (["--defense", "topk", "--topk-ratio", "0"], "topk_ratio"),
        (["--defense", "cem", "--noise-std", "0.1", "--var-threshold", "0"], "var_threshold"),
        (["--defense", "cem", "--noise-std", "0.1", "--cem-combine", "both"], None),
    ],
)
def test_invalid_defense_settings(argv, error, capsys):
    if error is None:
        with pytest.raises(SystemExit):
            parse(*argv)
        assert "invalid choice: 'both'" in capsys.readouterr().err
        return
    with pytest.raises(ConfigError, match=error):
        parse(*argv)


def test_help_lists_defense_settings(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["client", "--help"])
    output = " ".join(capsys.readouterr().out.split())
    for flag in ("--defense", "--noise-std", "--dropout-rate", "--topk-ratio", "--nopeek-weight", "--cem-weight",
                 "--var-threshold", "--num-clusters", "--cem-combine", "--cem-mode", "--cem-clustering", "--cem-max-iter"):
        assert flag in output
    assert "nopeek+cem" in output
    assert "(default: 16.0)" in output
    assert "tau * noise_std^2" in output


def test_zero_weight_cem_trains_like_noise():
    # The privacy benchmark uses cem with lambda = 0 as its noise-alone baseline.
    noise = build_defense(DefenseConfig(defense="noise", noise_std=0.05), 10, True, seed=3)
    cem = build_defense(DefenseConfig(defense="cem", noise_std=0.05, cem_weight=0.0, num_clusters=2), 10, True, seed=3)
    torch.manual_seed(0)
    encoder = ClientNet(SPEC)
    images = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    labels = torch.arange(20) % 10
    with torch.no_grad():
        clean = encoder.eval()(images)
    cem.end_epoch(1, lambda: (clean, labels))
    encoder.train()

    gradients = []
    for defense in (noise, cem):
        encoder.zero_grad(set_to_none=True)
        features = encoder(images)
        transmitted = defense.transmit(features)
        defense.backward(StepTensors(images, labels, features, transmitted, torch.ones_like(transmitted), 0.05))
        gradients.append((transmitted.detach(), [parameter.grad.clone() for parameter in encoder.parameters()]))
    assert torch.equal(gradients[0][0], gradients[1][0])
    for first, second in zip(gradients[0][1], gradients[1][1]):
        assert torch.equal(first, second)
