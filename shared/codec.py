"""Tensor codec: torch tensors to and from the cemsplit.v1.Tensor message.

A tensor travels as its dtype, its shape and its raw little-endian bytes, optionally cast to a
16-bit float and optionally zlib-compressed. Nothing is pickled, so decoding untrusted bytes can
only yield numbers or a TensorDecodeError.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

from cemsplit.v1 import tensor_pb2

# Upper bound on the element count of one decoded tensor (2**31 elements, 8 GiB as float32), so a
# forged shape cannot make the receiver allocate without bound before the size check.
MAX_ELEMENTS = 2**31

# Wire dtype -> (numpy little-endian dtype of the bytes, torch dtype after decoding).
# bfloat16 has no numpy type: its bytes are read as uint16 and reinterpreted by torch.
_WIRE_TYPES: dict[int, tuple[np.dtype, torch.dtype]] = {
    tensor_pb2.FLOAT32: (np.dtype("<f4"), torch.float32),
    tensor_pb2.FLOAT16: (np.dtype("<f2"), torch.float16),
    tensor_pb2.BFLOAT16: (np.dtype("<u2"), torch.bfloat16),
    tensor_pb2.FLOAT64: (np.dtype("<f8"), torch.float64),
    tensor_pb2.INT64: (np.dtype("<i8"), torch.int64),
    tensor_pb2.INT32: (np.dtype("<i4"), torch.int32),
    tensor_pb2.UINT8: (np.dtype("u1"), torch.uint8),
}
_TORCH_TO_WIRE = {torch_dtype: wire for wire, (_, torch_dtype) in _WIRE_TYPES.items()}
FLOAT_WIRE_DTYPES = (tensor_pb2.FLOAT32, tensor_pb2.FLOAT16, tensor_pb2.BFLOAT16, tensor_pb2.FLOAT64)

WIRE_DTYPE_NAMES = {"float32": tensor_pb2.FLOAT32, "float16": tensor_pb2.FLOAT16, "bfloat16": tensor_pb2.BFLOAT16}


class TensorDecodeError(ValueError):
    """A Tensor message that cannot be decoded; the message names the field and the fix."""


def wire_dtype_from_name(name: str) -> int:
    """Return the DType enum value for "float32", "float16" or "bfloat16"."""
    try:
        return WIRE_DTYPE_NAMES[name]
    except KeyError:
        raise ValueError(f"unsupported wire dtype {name!r}; use one of {sorted(WIRE_DTYPE_NAMES)}") from None


def encode(tensor: torch.Tensor, wire_dtype: int | None = None, compress: bool = False) -> tensor_pb2.Tensor:
    """Encode a tensor as a Tensor message.

    Args:
        tensor: any shape; float32/16/64, bfloat16, int64, int32 or uint8, on any device.
        wire_dtype: DType to cast a floating-point tensor to before sending (for example FLOAT16);
            None sends the tensor's own dtype. Integer tensors are never cast.
        compress: zlib-compress the bytes (level 1, fast).
    """
    tensor = tensor.detach()
    if tensor.is_floating_point() and wire_dtype is not None:
        tensor = tensor.to(_WIRE_TYPES[wire_dtype][1])
    if tensor.dtype not in _TORCH_TO_WIRE:
        raise ValueError(f"cannot encode dtype {tensor.dtype}; supported: {sorted(map(str, _TORCH_TO_WIRE))}")

    dtype = _TORCH_TO_WIRE[tensor.dtype]
    tensor = tensor.cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        array = tensor.view(torch.int16).numpy().view(np.uint16)
    else:
        array = tensor.numpy()
    data = array.astype(_WIRE_TYPES[dtype][0], copy=False).tobytes()

    compression = tensor_pb2.COMPRESSION_NONE
    if compress:
        data = zlib.compress(data, 1)
        compression = tensor_pb2.ZLIB
    return tensor_pb2.Tensor(dtype=dtype, shape=list(tensor.shape), data=data, compression=compression)


def decode(
    message: tensor_pb2.Tensor,
    field: str = "tensor",
    require_finite: bool = True,
    max_elements: int = MAX_ELEMENTS,
) -> torch.Tensor:
    """Decode a Tensor message into a CPU tensor; 16-bit floats come back as float32.

    Args:
        message: the received Tensor.
        field: name of the request field, used in error messages (for example "activations").
        require_finite: reject floating-point tensors that contain NaN or infinity.
        max_elements: largest element count accepted.

    Raises:
        TensorDecodeError: unsupported dtype, negative or oversized shape, a byte length that does
            not match the shape, corrupt compressed data, or non-finite values.
    """
    if message.dtype not in _WIRE_TYPES:
        supported = [tensor_pb2.DType.Name(d) for d in _WIRE_TYPES]
        raise TensorDecodeError(f"{field}: unsupported dtype {message.dtype}; expected one of {supported}")

    shape = tuple(int(n) for n in message.shape)
    if any(n < 0 for n in shape):
        raise TensorDecodeError(f"{field}: shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if count > max_elements:
        raise TensorDecodeError(f"{field}: shape {list(shape)} has {count} elements, more than the limit {max_elements}")

    numpy_dtype, torch_dtype = _WIRE_TYPES[message.dtype]
    expected = count * numpy_dtype.itemsize
    data = message.data
    if message.compression == tensor_pb2.ZLIB:
        data = _decompress(data, expected, field)
    elif message.compression != tensor_pb2.COMPRESSION_NONE:
        raise TensorDecodeError(f"{field}: unsupported compression {message.compression}; use COMPRESSION_NONE or ZLIB")
    if len(data) != expected:
        dtype_name = tensor_pb2.DType.Name(message.dtype)
        raise TensorDecodeError(
            f"{field}: {len(data)} bytes do not match shape {list(shape)} of {dtype_name} "
            f"({expected} bytes expected)"
        )

    array = np.frombuffer(data, dtype=numpy_dtype).reshape(shape).astype(numpy_dtype.newbyteorder("="))
    if torch_dtype == torch.bfloat16:
        tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(array)
    if torch_dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()

    if require_finite and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise TensorDecodeError(f"{field}: {bad} of {count} values are NaN or infinite; send finite values only")
    return tensor


def _decompress(data: bytes, expected: int, field: str) -> bytes:
    """Inflate zlib data, reading at most one byte more than expected (a zip bomb stops there)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, expected + 1)
    except zlib.error as error:
        raise TensorDecodeError(f"{field}: compressed data is corrupt ({error})") from None
    return out
