"""Tensor codec: round trips for every wire dtype and each rejection."""

import zlib

import pytest
import torch

from cemsplit.shared import codec
from cemsplit.v1 import tensor_pb2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8])
def test_round_trip_exact(dtype):
    tensor = (torch.arange(24).reshape(2, 3, 4) - 5).to(dtype)
    decoded = codec.decode(codec.encode(tensor))
    assert decoded.dtype == dtype
    assert torch.equal(decoded, tensor)


def test_round_trip_scalar_and_empty():
    assert torch.equal(codec.decode(codec.encode(torch.tensor(3.5))), torch.tensor(3.5))
    empty = codec.decode(codec.encode(torch.zeros(0, 8, 7, 7)))
    assert empty.shape == (0, 8, 7, 7)


@pytest.mark.parametrize("name,tolerance", [("float16", 1e-3), ("bfloat16", 1e-2)])
def test_half_precision_wire_decodes_to_float32(name, tolerance):
    tensor = torch.rand(4, 8, 7, 7)
    message = codec.encode(tensor, wire_dtype=codec.wire_dtype_from_name(name))
    assert len(message.data) == tensor.numel() * 2
    decoded = codec.decode(message)
    assert decoded.dtype == torch.float32
    assert torch.allclose(decoded, tensor, atol=tolerance)


def test_integers_are_never_cast():
    labels = torch.tensor([1, 2, 3])
    message = codec.encode(labels, wire_dtype=tensor_pb2.FLOAT16)
    assert message.dtype == tensor_pb2.INT64


def test_compression_round_trip():
    tensor = torch.zeros(16, 8, 7, 7)
    message = codec.encode(tensor, compress=True)
    assert message.compression == tensor_pb2.ZLIB
    assert len(message.data) < tensor.numel() * 4 // 10
    assert torch.equal(codec.decode(message), tensor)


def test_bytes_are_little_endian():
    message = codec.encode(torch.tensor([1], dtype=torch.int32))
    assert message.data == b"\x01\x00\x00\x00"


def test_rejects_byte_length_mismatch():
    message = codec.encode(torch.rand(2, 3))
    message.data = message.data[:-4]
    with pytest.raises(codec.TensorDecodeError, match=r"activations: 20 bytes do not match shape \[2, 3\] of FLOAT32 \(24 bytes expected\)"):
        codec.decode(message, "activations")


def test_rejects_unsupported_dtype():
    message = tensor_pb2.Tensor(dtype=99, shape=[1], data=b"\x00")
    with pytest.raises(codec.TensorDecodeError, match="unsupported dtype 99"):
        codec.decode(message)
    message = tensor_pb2.Tensor(dtype=tensor_pb2.DTYPE_UNSPECIFIED, shape=[1], data=b"\x00")
    with pytest.raises(codec.TensorDecodeError, match="unsupported dtype 0"):
        codec.decode(message)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_rejects_non_finite(bad):
    tensor = torch.rand(2, 4)
    tensor[1, 2] = bad
    with pytest.raises(codec.TensorDecodeError, match="1 of 8 values are NaN or infinite"):
        codec.decode(codec.encode(tensor), "activations")


def test_non_finite_allowed_when_not_required():
    tensor = torch.tensor([float("nan")])
    assert torch.isnan(codec.decode(codec.encode(tensor), require_finite=False)).all()


def test_rejects_negative_and_huge_shapes():
    with pytest.raises(codec.TensorDecodeError, match="negative dimension"):
        codec.decode(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[-1, 4], data=b""))
    with pytest.raises(codec.TensorDecodeError, match="more than the limit"):
        codec.decode(tensor_pb2.Tensor(dtype=tensor_pb2.FLOAT32, shape=[2**20, 2**20], data=b""))


def test_rejects_corrupt_and_oversized_compression():
    message = codec.encode(torch.rand(8), compress=True)
    message.data = b"not zlib at all"
    with pytest.raises(codec.TensorDecodeError, match="compressed data is corrupt"):
        codec.decode(message)
    bomb = tensor_pb2.Tensor(dtype=tensor_pb2.UINT8, shape=[4], data=zlib.compress(bytes(10_000_000)), compression=tensor_pb2.ZLIB)
    with pytest.raises(codec.TensorDecodeError, match="5 bytes do not match shape"):
        codec.decode(bomb)


def test_rejects_unknown_wire_dtype_name():
    with pytest.raises(ValueError, match="unsupported wire dtype 'float8'"):
        codec.wire_dtype_from_name("float8")
