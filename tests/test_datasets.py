"""Embedded data splits and the on-disk readers, fed with real digits written in each format."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from cemsplit.shared.config import DataConfig
from cemsplit.shared.datasets import DataError, augment_batch, load_splits


@pytest.fixture(scope="module")
def mnist5k():
    return load_splits(DataConfig())


def test_mnist5k_split_sizes_and_disjoint(mnist5k):
    assert (len(mnist5k.train), len(mnist5k.test), len(mnist5k.aux)) == (3500, 500, 1000)
    ids = [set(part.ids.tolist()) for part in (mnist5k.train, mnist5k.test, mnist5k.aux)]
    assert not ids[0] & ids[1]
    assert not ids[0] & ids[2]
    assert not ids[1] & ids[2]
    assert mnist5k.input_shape == (1, 28, 28)


def test_mnist5k_is_real_and_stratified(mnist5k):
    counts = torch.bincount(mnist5k.test.labels, minlength=10)
    assert counts.tolist() == [50] * 10
    images = mnist5k.train.floats()
    assert 0.1 < float(images.mean()) < 0.2  # MNIST digits are mostly black background
    assert float(images.max()) == 1.0


def test_split_is_deterministic_and_seeded():
    first = load_splits(DataConfig())
    second = load_splits(DataConfig())
    other = load_splits(DataConfig(split_seed=1))
    assert torch.equal(first.train.ids, second.train.ids)
    assert not torch.equal(first.train.ids, other.train.ids)


def test_limits_and_sklearn_digits():
    splits = load_splits(DataConfig(dataset="sklearn-digits", train_limit=100, test_limit=50, aux_limit=20))
    assert (len(splits.train), len(splits.test), len(splits.aux)) == (100, 50, 20)
    assert splits.input_shape == (1, 8, 8)


def _write_idx(path, array, gz=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", n) for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def test_mnist_idx_reader(tmp_path, mnist5k):
    images = mnist5k.aux.images[:, 0].numpy()
    labels = mnist5k.aux.labels.numpy()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    _write_idx(raw / "train-images-idx3-ubyte", images[:800], gz=True)
    _write_idx(raw / "train-labels-idx1-ubyte", labels[:800], gz=True)
    _write_idx(raw / "t10k-images-idx3-ubyte", images[800:])
    _write_idx(raw / "t10k-labels-idx1-ubyte", labels[800:])

    splits = load_splits(DataConfig(dataset="mnist", root=tmp_path, aux_fraction=0.25))
    assert len(splits.test) == 200
    assert len(splits.train) + len(splits.aux) == 800
    assert len(splits.aux) == pytest.approx(200, abs=10)
    assert splits.test.ids.min() >= 800
    test_order = splits.test.ids - 800
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(images[800:])[test_order])


def test_missing_idx_file_names_file_and_layout(tmp_path):
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte \(or train-images-idx3-ubyte.gz\) not found under .*expected layout"):
        load_splits(DataConfig(dataset="fashion-mnist", root=tmp_path))


def test_dataset_root_required_and_must_exist(tmp_path):
    with pytest.raises(DataError, match="set data.root"):
        load_splits(DataConfig(dataset="cifar10"))
    with pytest.raises(DataError, match="not found"):
        load_splits(DataConfig(dataset="cifar10", root=tmp_path / "nope"))


def _cifar_batch(images, labels, key=b"labels"):
    return {b"data": images.reshape(len(images), -1), key: list(map(int, labels)), b"batch_label": b"x"}


def test_cifar10_reader(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(1, 6):
        batch = _cifar_batch(rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 20))
        (folder / f"data_batch_{index}").write_bytes(pickle.dumps(batch))
    test_images = rng.integers(0, 256, (30, 3, 32, 32), dtype=np.uint8)
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(test_images, rng.integers(0, 10, 30))))

    splits = load_splits(DataConfig(dataset="cifar10", root=tmp_path))
    assert splits.input_shape == (3, 32, 32)
    assert len(splits.test) == 30
    assert len(splits.train) + len(splits.aux) == 100
    first = int(splits.test.ids[0]) - 100
    assert torch.equal(splits.test.images[0], torch.from_numpy(test_images[first]))


def test_cifar_reader_refuses_code_in_pickle(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()

    class Exploit:
        def __reduce__(self):
            return (print, ("unpickled code ran",))

    (folder / "train").write_bytes(pickle.dumps({b"data": Exploit()}))
    (folder / "test").write_bytes(pickle.dumps({}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        load_splits(DataConfig(dataset="cifar100", root=tmp_path))


def test_image_folder_reader(tmp_path, mnist5k):
    from PIL import Image

    for label in range(3):
        folder = tmp_path / f"class{label}"
        folder.mkdir()
        members = torch.nonzero(mnist5k.aux.labels == label).flatten()[:20]
        for index in members.tolist():
            Image.fromarray(mnist5k.aux.images[index, 0].numpy()).save(folder / f"{index}.png")
    splits = load_splits(DataConfig(dataset="image-folder", root=tmp_path, image_size=32))
    assert splits.num_classes == 3
    assert splits.input_shape == (3, 32, 32)
    assert len(splits.train) + len(splits.test) + len(splits.aux) == 60


def test_augment_keeps_shape_and_changes_pixels():
    images = torch.rand(8, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    out = augment_batch(images, "cifar10", generator)
    assert out.shape == images.shape
    assert not torch.equal(out, images)
    digits = augment_batch(torch.rand(4, 1, 28, 28), "mnist5k", generator)
    assert digits.shape == (4, 1, 28, 28)
