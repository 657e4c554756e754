from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NoiseKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NOISE_NONE: _ClassVar[NoiseKind]
    NOISE_GAUSSIAN: _ClassVar[NoiseKind]
    NOISE_LAPLACE: _ClassVar[NoiseKind]
NOISE_NONE: NoiseKind
NOISE_GAUSSIAN: NoiseKind
NOISE_LAPLACE: NoiseKind

class TransmitTransform(_message.Message):
    __slots__ = ("defense", "noise", "noise_std", "dropout_rate", "topk_ratio")
    DEFENSE_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_RATE_FIELD_NUMBER: _ClassVar[int]
    TOPK_RATIO_FIELD_NUMBER: _ClassVar[int]
    defense: str
    noise: NoiseKind
    noise_std: float
    dropout_rate: float
    topk_ratio: float
    def __init__(self, defense: _Optional[str] = ..., noise: _Optional[_Union[NoiseKind, str]] = ..., noise_std: _Optional[float] = ..., dropout_rate: _Optional[float] = ..., topk_ratio: _Optional[float] = ...) -> None: ...
