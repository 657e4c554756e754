from cemsplit.v1 import defense_pb2 as _defense_pb2
from cemsplit.v1 import split_pb2 as _split_pb2
from cemsplit.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    TRAIN: _ClassVar[Phase]
    EVAL: _ClassVar[Phase]
PHASE_UNSPECIFIED: Phase
TRAIN: Phase
EVAL: Phase

class SessionStart(_message.Message):
    __slots__ = ("model", "wire_dtype", "client_name")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    model: _split_pb2.ModelSpec
    wire_dtype: _tensor_pb2.DType
    client_name: str
    def __init__(self, model: _Optional[_Union[_split_pb2.ModelSpec, _Mapping]] = ..., wire_dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., client_name: _Optional[str] = ...) -> None: ...

class ActivationRecord(_message.Message):
    __slots__ = ("step", "epoch", "phase", "activations", "labels")
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    step: int
    epoch: int
    phase: Phase
    activations: _tensor_pb2.Tensor
    labels: _tensor_pb2.Tensor
    def __init__(self, step: _Optional[int] = ..., epoch: _Optional[int] = ..., phase: _Optional[_Union[Phase, str]] = ..., activations: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class TrafficRecord(_message.Message):
    __slots__ = ("session_id", "timestamp_ns", "session_start", "activations")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_NS_FIELD_NUMBER: _ClassVar[int]
    SESSION_START_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    timestamp_ns: int
    session_start: SessionStart
    activations: ActivationRecord
    def __init__(self, session_id: _Optional[str] = ..., timestamp_ns: _Optional[int] = ..., session_start: _Optional[_Union[SessionStart, _Mapping]] = ..., activations: _Optional[_Union[ActivationRecord, _Mapping]] = ...) -> None: ...

class RecordSummary(_message.Message):
    __slots__ = ("received",)
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    received: int
    def __init__(self, received: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecorderStats(_message.Message):
    __slots__ = ("received", "rejected", "bytes")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    received: int
    rejected: int
    bytes: int
    def __init__(self, received: _Optional[int] = ..., rejected: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class AttackRequest(_message.Message):
    __slots__ = ("threat", "session_id", "encoder_checkpoint", "manifest", "noise_std", "out_dir", "transmit", "server_snapshot", "epoch")
    THREAT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODER_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    OUT_DIR_FIELD_NUMBER: _ClassVar[int]
    TRANSMIT_FIELD_NUMBER: _ClassVar[int]
    SERVER_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    threat: str
    session_id: str
    encoder_checkpoint: str
    manifest: str
    noise_std: float
    out_dir: str
    transmit: _defense_pb2.TransmitTransform
    server_snapshot: str
    epoch: int
    def __init__(self, threat: _Optional[str] = ..., session_id: _Optional[str] = ..., encoder_checkpoint: _Optional[str] = ..., manifest: _Optional[str] = ..., noise_std: _Optional[float] = ..., out_dir: _Optional[str] = ..., transmit: _Optional[_Union[_defense_pb2.TransmitTransform, _Mapping]] = ..., server_snapshot: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class AttackReply(_message.Message):
    __slots__ = ("threat", "metrics", "images_scored", "grid_path", "seconds", "result_json")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    THREAT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_SCORED_FIELD_NUMBER: _ClassVar[int]
    GRID_PATH_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    threat: str
    metrics: _containers.ScalarMap[str, float]
    images_scored: int
    grid_path: str
    seconds: float
    result_json: str
    def __init__(self, threat: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ..., images_scored: _Optional[int] = ..., grid_path: _Optional[str] = ..., seconds: _Optional[float] = ..., result_json: _Optional[str] = ...) -> None: ...
