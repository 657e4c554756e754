"""Split model and inversion decoder shapes for grayscale and RGB inputs."""

import pytest
import torch

from cemsplit.shared.decoder import InversionDecoder, upsampling_steps
from cemsplit.shared.vgg import ClientNet, ServerNet, SplitSpec


@pytest.mark.parametrize(
    "input_shape,feature_shape",
    [((1, 28, 28), (8, 7, 7)), ((3, 32, 32), (8, 8, 8)), ((3, 48, 48), (8, 12, 12)), ((1, 8, 8), (8, 2, 2))],
)
def test_split_shapes(input_shape, feature_shape):
    spec = SplitSpec(input_shape=input_shape, num_classes=10)
    client, server = ClientNet(spec), ServerNet(spec)
    features = client(torch.rand(3, *input_shape))
    assert spec.feature_shape == feature_shape
    assert features.shape == (3, *feature_shape)
    assert server(features).shape == (3, 10)


def test_client_ends_in_sigmoid():
    spec = SplitSpec(input_shape=(1, 28, 28), num_classes=10)
    torch.manual_seed(0)
    with torch.no_grad():
        features = ClientNet(spec)(torch.rand(4, 1, 28, 28))
    assert float(features.min()) > 0
    assert float(features.max()) < 1


def test_unbottlenecked_cut_sends_conv_output():
    spec = SplitSpec(input_shape=(1, 28, 28), num_classes=10, bottleneck_channels=0)
    assert spec.feature_shape == (128, 7, 7)
    features = ClientNet(spec)(torch.rand(2, 1, 28, 28))
    assert features.shape == (2, 128, 7, 7)
    assert ServerNet(spec)(features).shape == (2, 10)


@pytest.mark.parametrize("cut_layer,shape", [(1, (8, 14, 14)), (3, (8, 7, 7)), (4, (8, 4, 4))])
def test_other_cut_layers(cut_layer, shape):
    spec = SplitSpec(input_shape=(1, 28, 28), num_classes=100, cut_layer=cut_layer)
    features = ClientNet(spec)(torch.rand(2, 1, 28, 28))
    assert spec.feature_shape == shape
    assert features.shape == (2, *shape)
    assert ServerNet(spec)(features).shape == (2, 100)


def test_invalid_specs_are_rejected():
    with pytest.raises(ValueError, match="cut_layer 8 is out of range"):
        SplitSpec(input_shape=(1, 28, 28), num_classes=10, cut_layer=8)
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        SplitSpec(input_shape=(1, 28, 28), num_classes=10, arch="resnet")


@pytest.mark.parametrize("feature_shape,image_shape", [((8, 7, 7), (1, 28, 28)), ((8, 8, 8), (3, 32, 32)), ((8, 12, 12), (3, 48, 48)), ((8, 7, 7), (1, 30, 30))])
def test_decoder_output_shape(feature_shape, image_shape):
    decoder = InversionDecoder(feature_shape, image_shape, blocks=2)
    with torch.no_grad():
        images = decoder(torch.rand(2, *feature_shape))
    assert images.shape == (2, *image_shape)
    assert float(images.min()) >= 0
    assert float(images.max()) <= 1


def test_upsampling_count_follows_sizes():
    assert upsampling_steps(7, 28) == 2
    assert upsampling_steps(8, 32) == 2
    assert upsampling_steps(2, 8) == 2
    assert upsampling_steps(14, 28) == 1
    assert upsampling_steps(28, 28) == 0
    decoder = InversionDecoder((8, 7, 7), (1, 28, 28), blocks=8)
    transposed = [m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(transposed) == 2
