"""CEM-att, CEM-mix and CEM-enhanced: gradients, invariances, reductions to CEM, edge cases, guards."""

import math

import pytest
import torch

from cemsplit.cli.main import build_parser
from cemsplit.client.trainer import SplitClient
from cemsplit.shared.checkpoint import load_checkpoint, save_checkpoint
from cemsplit.shared.config import ConfigError, DataConfig, DefenseConfig, RunConfig, config_from_args
from cemsplit.shared.datasets import load_splits
from cemsplit.shared.defenses import StepTensors, build_defense
from cemsplit.shared.defenses.attention.cem_att import CEMAttention
from cemsplit.shared.defenses.attention.cem_enhanced import assignment_distances, improved_clustering_loss
from cemsplit.shared.defenses.attention.cem_mix import WeightNetwork, guarded_blend
from cemsplit.shared.defenses.attention.slot_loss import responsibility_cem_loss
from cemsplit.shared.defenses.cem.clustering import fit_class_clusters
from cemsplit.shared.defenses.cem.loss import cem_loss
from cemsplit.shared.vgg import ClientNet, SplitSpec

VARIANTS = ["cem-att", "cem-mix", "cem-enhanced"]
SIGMA = 0.05
TAU = 0.125
FEATURE_DIM = 8 * 7 * 7
SPEC = SplitSpec(input_shape=(1, 28, 28), num_classes=10)


@pytest.fixture(scope="module")
def digit_features():
    """Client features [400, 8, 7, 7] of real mnist5k digits from a freshly initialised default split."""
    splits = load_splits(DataConfig(train_limit=400))
    torch.manual_seed(0)
    encoder = ClientNet(SPEC).eval()
    with torch.no_grad():
        return encoder(splits.train.floats()), splits.train.labels


def fitted_loss(variant, digit_features, seed=0, **settings):
    """The variant's client loss after one per-epoch clustering of the digit features."""
    config = DefenseConfig(defense=variant, noise_std=SIGMA, **settings)
    defense = build_defense(config, num_classes=10, client_sigmoid=True, seed=seed, feature_dim=FEATURE_DIM)
    features, labels = digit_features
    defense.end_epoch(1, lambda: (features, labels))
    return defense.losses[0]


def batch_of(digit_features, size=64, offset=0):
    features, labels = digit_features
    return features[offset:offset + size].clone().requires_grad_(True), labels[offset:offset + size]


def step_of(features, labels):
    return StepTensors(torch.zeros(len(labels), 1, 28, 28), labels, features, features, torch.zeros_like(features), lr=0.05)


def loss_with_generator_state(client_loss, features, labels, state):
    """The loss value (no autograd) with the loss's random draws restarted from state."""
    client_loss.generator.set_state(state)
    return client_loss.loss(step_of(features, labels)).detach()


# -- Gradients ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant,settings", [*[(variant, {}) for variant in VARIANTS], ("cem-att", {"att_dim": 56}), ("cem-enhanced", {"enhanced_dim": 64})])
def test_every_parameter_gets_gradient(variant, settings, digit_features):
    client_loss = fitted_loss(variant, digit_features, **settings)
    features, labels = batch_of(digit_features)
    value = client_loss.loss(step_of(features, labels))
    assert value is not None
    assert float(value.detach()) > 0
    value.backward()

    assert float(features.grad.abs().sum()) > 0
    without_gradient = [name for name, parameter in client_loss.module.named_parameters() if parameter.grad is None or float(parameter.grad.abs().sum()) == 0]
    assert without_gradient == []


@pytest.mark.parametrize("variant", ["cem-att", "cem-mix"])
def test_q_and_k_projections_get_gradient(variant, digit_features):
    client_loss = fitted_loss(variant, digit_features)
    features, labels = batch_of(digit_features)
    client_loss.loss(step_of(features, labels)).backward()
    parameters = dict(client_loss.module.named_parameters())
    prefix = "attention." if variant == "cem-mix" else ""
    for block in ("slot_attention", "cross_attention"):
        for projection in ("to_q", "to_k"):
            gradient = parameters[f"{prefix}{block}.{projection}.weight"].grad
            assert gradient is not None, f"{block}.{projection}"
            assert float(gradient.abs().max()) > 0, f"{block}.{projection}"


def test_enhanced_q_and_k_projections_get_gradient(digit_features):
    client_loss = fitted_loss("cem-enhanced", digit_features)
    features, labels = batch_of(digit_features)
    client_loss.loss(step_of(features, labels)).backward()
    parameters = dict(client_loss.module.named_parameters())
    names = [f"slot_attention.layers.{layer}.{projection}.weight" for layer in (0, 1) for projection in ("to_q", "to_k")]
    names += ["cross_attention.to_q.weight", "cross_attention.to_k.weight"]
    for name in names:
        assert float(parameters[name].grad.abs().max()) > 0, name


# -- Invariances and determinism ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_permutation_within_class_leaves_loss_unchanged(variant, digit_features):
    # Dropout masks are drawn per padded position, so the permutation test runs without dropout.
    client_loss = fitted_loss(variant, digit_features, enhanced_dropout=0.0)
    features, labels = batch_of(digit_features)
    state = client_loss.generator.get_state()

    # Reverse the order of the samples of each class, keeping every class's positions in the batch.
    order = torch.arange(len(labels))
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        order[members] = members.flip(0)
    assert not torch.equal(order, torch.arange(len(labels)))
    assert torch.equal(labels[order], labels)

    original = loss_with_generator_state(client_loss, features, labels, state)
    permuted = loss_with_generator_state(client_loss, features[order], labels, state)
    assert float(original) > 0
    assert float(permuted) == pytest.approx(float(original), rel=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_seed_gives_same_loss(variant, digit_features):
    features, labels = batch_of(digit_features)
    first = fitted_loss(variant, digit_features, seed=3).loss(step_of(features, labels))
    second = fitted_loss(variant, digit_features, seed=3).loss(step_of(features, labels))
    other = fitted_loss(variant, digit_features, seed=4).loss(step_of(features, labels))
    assert float(first.detach()) == float(second.detach())
    assert float(other.detach()) != float(first.detach())


# -- Reductions to the reference CEM loss -----------------------------------------------------------------


def test_hard_responsibilities_reduce_to_reference(digit_features):
    features, labels = digit_features
    clusters, _ = fit_class_clusters(features, labels, 10, 5, "kmeans", 50, seed=0)
    z, batch_labels = features[:96].flatten(1), labels[:96]

    # One-hot responsibilities on the nearest centroid of the sample's class, reconstructions = that centroid.
    own = clusters.centroids[batch_labels]
    distances = (z[:, None, :] - own).pow(2).sum(dim=-1).masked_fill(clusters.weights[batch_labels] == 0, math.inf)
    nearest = distances.argmin(dim=1)
    responsibilities = torch.nn.functional.one_hot(nearest, 5).float()
    reconstructions = own[torch.arange(96), nearest]

    for mode in ("hinge", "plain"):
        expected = cem_loss(z, batch_labels, clusters, SIGMA, TAU, mode)
        got = responsibility_cem_loss(z, batch_labels, reconstructions, responsibilities, clusters, SIGMA, TAU, mode)
        assert float(expected.detach()) > 0
        assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-6)


@pytest.mark.parametrize("width", [FEATURE_DIM, 56])
def test_one_slot_reduces_to_per_class_variance_term(width, digit_features):
    features, labels = digit_features
    clusters, _ = fit_class_clusters(features, labels, 10, 1, "kmeans", 50, seed=0)
    z, batch_labels = features[:96].flatten(1), labels[:96]

    # No slot iterations and no slot draw: the single slot is the stored class centroid, and the
    # identity-initialised cross attention returns it for every sample, also through a projection.
    torch.manual_seed(0)
    module = CEMAttention(FEATURE_DIM, width, iterations=0, heads=4, init_std=0.01)
    reconstructions, responsibilities = module(z, batch_labels, clusters.centroids, clusters.weights > 0, generator=None)
    assert torch.equal(responsibilities, torch.ones(96, 1))
    assert torch.allclose(reconstructions, clusters.centroids[batch_labels, 0], atol=1e-6)

    expected = cem_loss(z, batch_labels, clusters, SIGMA, TAU)
    got = responsibility_cem_loss(z, batch_labels, reconstructions, responsibilities, clusters, SIGMA, TAU)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


# -- Edge cases --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_single_sample_classes(variant, digit_features):
    client_loss = fitted_loss(variant, digit_features)
    features, labels = digit_features
    # Class 0 three times, every other class once.
    index = torch.cat([(labels == 0).nonzero().flatten()[:3], *[(labels == label).nonzero().flatten()[:1] for label in range(1, 10)]])
    batch = features[index].clone().requires_grad_(True)
    value = client_loss.loss(step_of(batch, labels[index]))
    assert math.isfinite(float(value.detach()))
    value.backward()
    assert bool(torch.isfinite(batch.grad).all())


@pytest.mark.parametrize("variant", VARIANTS)
def test_constant_features_give_finite_loss(variant, digit_features):
    client_loss = fitted_loss(variant, digit_features)
    constant = torch.full((32, 8, 7, 7), 0.5, requires_grad=True)
    labels = torch.arange(32) % 10
    value = client_loss.loss(step_of(constant, labels))
    assert math.isfinite(float(value.detach()))
    value.backward()
    assert bool(torch.isfinite(constant.grad).all())


@pytest.mark.parametrize("variant", VARIANTS)
def test_inactive_before_clustering_and_skips_unclustered_classes(variant, digit_features):
    config = DefenseConfig(defense=variant, noise_std=SIGMA)
    client_loss = build_defense(config, 10, True, seed=0, feature_dim=FEATURE_DIM).losses[0]
    features, labels = batch_of(digit_features)
    assert client_loss.loss(step_of(features, labels)) is None

    # Cluster only classes 0 to 4: a batch of classes 5 to 9 has nothing to measure.
    all_features, all_labels = digit_features
    low = all_labels < 5
    client_loss.end_epoch(1, lambda: (all_features[low], all_labels[low]))
    high = labels >= 5
    assert client_loss.loss(step_of(features[high], labels[high])) is None
    assert math.isfinite(float(client_loss.loss(step_of(features, labels)).detach()))


# -- Soundness: measured on z, not lowered by shrinking outputs ----------------------------------------------


def test_att_shrunk_output_map_does_not_lower_loss(digit_features):
    client_loss = fitted_loss("cem-att", digit_features)
    features, labels = batch_of(digit_features)
    state = client_loss.generator.get_state()
    trained = float(loss_with_generator_state(client_loss, features, labels, state))
    with torch.no_grad():
        client_loss.module.cross_attention.out.weight.mul_(1e-3)
    shrunk = float(loss_with_generator_state(client_loss, features, labels, state))
    assert shrunk > trained


def test_enhanced_shrunk_outputs_leave_loss_in_feature_units(digit_features):
    client_loss = fitted_loss("cem-enhanced", digit_features, enhanced_dropout=0.0)
    features, labels = batch_of(digit_features)
    state = client_loss.generator.get_state()
    original = float(loss_with_generator_state(client_loss, features, labels, state))
    with torch.no_grad():
        norm = client_loss.module.reconstruction.layers[-1]
        norm.weight.mul_(1e-3)
        norm.bias.mul_(1e-3)
    shrunk = float(loss_with_generator_state(client_loss, features, labels, state))
    assert original > 0
    assert shrunk == pytest.approx(original, rel=0.2)


def test_enhanced_pipeline_is_not_in_transmitted_path():
    features = torch.rand(16, 8, 7, 7)
    enhanced = build_defense(DefenseConfig(defense="cem-enhanced", noise_std=SIGMA), 10, True, seed=5, feature_dim=FEATURE_DIM)
    noise = build_defense(DefenseConfig(defense="noise", noise_std=SIGMA), 10, True, seed=5)
    assert torch.equal(enhanced.transmit(features), noise.transmit(features))


def test_improved_loss_floors():
    z = torch.rand(40, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 2
    clusters, _ = fit_class_clusters(z, labels, 2, 2, "kmeans", 50, seed=0)
    assignments = torch.full((40, 2), 0.5)
    noise_small = improved_clustering_loss(z, labels, assignments, clusters, 0.01, TAU, "noise")
    noise_large = improved_clustering_loss(z, labels, assignments, clusters, 1.0, TAU, "noise")
    adaptive_small = improved_clustering_loss(z, labels, assignments, clusters, 0.01, TAU, "adaptive")
    adaptive_large = improved_clustering_loss(z, labels, assignments, clusters, 1.0, TAU, "adaptive")
    # The noise floor rises with sigma until the hinge is 0; the adaptive floor ignores sigma.
    assert float(noise_small) > 0
    assert float(noise_large) == 0
    assert float(adaptive_small) == float(adaptive_large) > 0


def test_enhanced_distances():
    refined = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    centroids = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 1.0]]])
    euclidean = assignment_distances(refined, centroids, "euclidean")
    cosine = assignment_distances(refined, centroids, "cosine")
    assert euclidean.tolist() == [[0.5, 1.0], [4.0, 0.5]]
    assert torch.allclose(cosine, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    beta = torch.sigmoid(refined.var(dim=0, unbiased=False).mean())
    assert torch.allclose(assignment_distances(refined, centroids, "blend"), beta * euclidean + (1 - beta) * cosine)


# -- CEM-mix blend weights -------------------------------------------------------------------------------------


def train_blend_weights(guarded: bool, steps: int = 300) -> float:
    """Train a weight network on fixed branch losses, the clustering one 10x smaller; returns w_clustering."""
    torch.manual_seed(0)
    network = WeightNetwork(8)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.5)
    statistics = torch.rand(48, generator=torch.Generator().manual_seed(1))
    clustering, attention = torch.tensor(0.1), torch.tensor(1.0)
    for _ in range(steps):
        weights = network(statistics)
        if guarded:
            loss = guarded_blend(clustering, attention, weights, 0.1, 1.0, prior_weight=1.0)
        else:
            loss = weights[0] * clustering + weights[1] * attention
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(network(statistics)[0].detach())


def test_mix_guard_keeps_weights_off_the_smaller_branch():
    assert train_blend_weights(guarded=False) > 0.95
    assert 0.4 < train_blend_weights(guarded=True) < 0.6


def test_mix_blend_value_and_branch_gradients():
    clustering = torch.tensor(0.2, requires_grad=True)
    attention = torch.tensor(0.6, requires_grad=True)
    logits = torch.tensor([0.3, -0.1], requires_grad=True)
    weights = torch.softmax(logits, dim=0)
    blended = guarded_blend(clustering, attention, weights, 0.2, 0.6, prior_weight=1.0)
    first, second = (float(weight) for weight in weights.detach())
    assert float(blended.detach()) == pytest.approx(first * 0.2 + second * 0.6, rel=1e-6)
    blended.backward()
    assert float(clustering.grad) == pytest.approx(first, rel=1e-6)
    assert float(attention.grad) == pytest.approx(second, rel=1e-6)


def test_mix_logs_blend_weights(digit_features):
    config = DefenseConfig(defense="cem-mix", noise_std=SIGMA)
    defense = build_defense(config, 10, True, seed=0, feature_dim=FEATURE_DIM)
    features, labels = digit_features
    defense.end_epoch(1, lambda: (features, labels))
    for offset in (0, 64):
        batch, batch_labels = batch_of(digit_features, offset=offset)
        defense.backward(StepTensors(torch.zeros(64, 1, 28, 28), batch_labels, batch, batch, torch.zeros_like(batch), 0.05))
    metrics = defense.epoch_metrics()
    assert metrics["cem_active_steps"] == 2
    assert metrics["cem_mix_weight_clustering"] + metrics["cem_mix_weight_attention"] == pytest.approx(1.0)
    assert 0 < metrics["cem_mix_weight_clustering"] < 1
    assert metrics["cem_mix_clustering_loss"] > 0
    assert metrics["cem_mix_attention_loss"] > 0
    assert "cem_mix_weight_clustering" not in defense.epoch_metrics()


# -- Cost, state and wiring ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_at_512_dimensions(variant):
    defense = build_defense(DefenseConfig(defense=variant, noise_std=SIGMA), 10, True, seed=0, feature_dim=512)
    count = sum(parameter.numel() for parameter in defense.parameters())
    assert 0 < count < 5_000_000
    assert defense.describe()["parameters"] == count


@pytest.mark.parametrize("variant", VARIANTS)
def test_unbottlenecked_features_are_projected(variant):
    # 64 x 14 x 14 features of 28x28 digits cut after one convolution without a bottleneck.
    defense = build_defense(DefenseConfig(defense=variant, noise_std=SIGMA), 10, True, seed=0, feature_dim=64 * 14 * 14)
    description = defense.describe()
    assert description.get("att_dim", description.get("enhanced_dim")) == 256
    assert sum(parameter.numel() for parameter in defense.parameters()) < 10_000_000


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_survives_a_checkpoint(variant, digit_features, tmp_path):
    client_loss = fitted_loss(variant, digit_features)
    features, labels = batch_of(digit_features)
    client_loss.loss(step_of(features, labels)).backward()
    with torch.no_grad():
        for parameter in client_loss.parameters():
            parameter.sub_(0.01 * parameter.grad)
    save_checkpoint({"loss": client_loss.state_dict()}, tmp_path / "client.pt")
    state = load_checkpoint(tmp_path / "client.pt", required_keys=("loss",))

    restored = build_defense(DefenseConfig(defense=variant, noise_std=SIGMA), 10, True, seed=99, feature_dim=FEATURE_DIM).losses[0]
    restored.load_state_dict(state["loss"])
    for (name, original), copy in zip(client_loss.module.named_parameters(), restored.parameters()):
        assert torch.equal(original, copy), name
    assert restored.loss(step_of(features, labels)).item() == client_loss.loss(step_of(features, labels)).item()


def test_client_optimizer_trains_defense_parameters(tmp_path):
    config = RunConfig.model_validate(
        {"data": {"train_limit": 64, "test_limit": 16, "aux_limit": 16}, "defense": {"defense": "cem-att", "noise_std": SIGMA}}
    )
    client = SplitClient(config, tmp_path)
    optimized = {id(parameter) for group in client.optimizer.param_groups for parameter in group["params"]}
    assert len(client.defense.parameters()) > 0
    assert all(id(parameter) in optimized for parameter in client.defense.parameters())
    assert all(id(parameter) in optimized for parameter in client.encoder.parameters())


# -- Configuration ---------------------------------------------------------------------------------------------------


def parse(*argv):
    return config_from_args(build_parser().parse_args(["client", *argv]))


def test_variant_flags_and_defaults():
    config = parse("--defense", "cem-att", "--noise-std", "0.025", "--att-slots", "6", "--att-iterations", "2", "--att-heads", "2")
    assert config.defense.cem_variant == "cem-att"
    assert config.defense.gaussian_noise
    assert (config.defense.att_slots, config.defense.att_iterations, config.defense.att_heads) == (6, 2, 2)
    assert config.defense.combine == "separate"

    defaults = DefenseConfig(defense="cem-enhanced", noise_std=0.025)
    assert defaults.combine == "fused"
    assert (defaults.enhanced_slots, defaults.enhanced_iterations, defaults.enhanced_layers, defaults.enhanced_heads) == (12, 4, 2, 8)
    assert (defaults.enhanced_temperature_decay, defaults.enhanced_competition_temperature, defaults.enhanced_dropout) == (0.9, 0.1, 0.1)
    assert defaults.enhanced_floor == "noise"
    assert defaults.enhanced_distance == "blend"
    assert DefenseConfig(defense="cem-enhanced", noise_std=0.025, cem_combine="separate").combine == "separate"
    att = DefenseConfig(defense="cem-att", noise_std=0.025)
    assert (att.att_slots, att.att_iterations, att.att_heads) == (8, 3, 4)
    assert parse("--defense", "nopeek+cem-mix", "--noise-std", "0.025").defense.components == ("nopeek", "cem-mix")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--defense", "cem+cem-att", "--noise-std", "0.025"], "combines the CEM variants"),
        (["--defense", "cem-mix"], "needs noise_std > 0"),
        (["--defense", "laplace+cem-enhanced", "--noise-std", "0.025"], "drop laplace or cem-enhanced"),
        (["--defense", "cem-att", "--noise-std", "0.025", "--att-slots", "0"], "att_slots"),
    ],
)
def test_invalid_variant_settings(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(*argv)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="3 attention heads do not divide the attention width 392; set --att-heads"):
        build_defense(DefenseConfig(defense="cem-att", noise_std=SIGMA, att_heads=3), 10, True, seed=0, feature_dim=FEATURE_DIM)
