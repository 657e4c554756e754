from cemsplit.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelSpec(_message.Message):
    __slots__ = ("architecture", "cut_layer", "bottleneck_channels", "input_shape", "feature_shape", "num_classes")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    CUT_LAYER_FIELD_NUMBER: _ClassVar[int]
    BOTTLENECK_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    cut_layer: int
    bottleneck_channels: int
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    feature_shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    def __init__(self, architecture: _Optional[str] = ..., cut_layer: _Optional[int] = ..., bottleneck_channels: _Optional[int] = ..., input_shape: _Optional[_Iterable[int]] = ..., feature_shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ...) -> None: ...

class TrainingSpec(_message.Message):
    __slots__ = ("optimizer", "learning_rate", "momentum", "weight_decay", "lr_milestones", "lr_gamma", "epochs", "seed")
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    LR_MILESTONES_FIELD_NUMBER: _ClassVar[int]
    LR_GAMMA_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    lr_milestones: _containers.RepeatedScalarFieldContainer[int]
    lr_gamma: float
    epochs: int
    seed: int
    def __init__(self, optimizer: _Optional[str] = ..., learning_rate: _Optional[float] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., lr_milestones: _Optional[_Iterable[int]] = ..., lr_gamma: _Optional[float] = ..., epochs: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("protocol_version", "client_name", "model", "training", "wire_dtype", "max_batch_size", "resume_session_id", "resume_steps")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    WIRE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    RESUME_SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_STEPS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    client_name: str
    model: ModelSpec
    training: TrainingSpec
    wire_dtype: _tensor_pb2.DType
    max_batch_size: int
    resume_session_id: str
    resume_steps: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, protocol_version: _Optional[int] = ..., client_name: _Optional[str] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., training: _Optional[_Union[TrainingSpec, _Mapping]] = ..., wire_dtype: _Optional[_Union[_tensor_pb2.DType, str]] = ..., max_batch_size: _Optional[int] = ..., resume_session_id: _Optional[str] = ..., resume_steps: _Optional[_Iterable[int]] = ...) -> None: ...

class OpenSessionReply(_message.Message):
    __slots__ = ("session_id", "last_step", "protocol_version", "last_durable_step")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_DURABLE_STEP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    last_step: int
    protocol_version: int
    last_durable_step: int
    def __init__(self, session_id: _Optional[str] = ..., last_step: _Optional[int] = ..., protocol_version: _Optional[int] = ..., last_durable_step: _Optional[int] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("session_id", "step", "epoch", "activations", "labels", "checkpoint")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    step: int
    epoch: int
    activations: _tensor_pb2.Tensor
    labels: _tensor_pb2.Tensor
    checkpoint: bool
    def __init__(self, session_id: _Optional[str] = ..., step: _Optional[int] = ..., epoch: _Optional[int] = ..., activations: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., checkpoint: _Optional[bool] = ...) -> None: ...

class TrainReply(_message.Message):
    __slots__ = ("step", "gradient", "loss", "correct", "batch_size")
    STEP_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    step: int
    gradient: _tensor_pb2.Tensor
    loss: float
    correct: int
    batch_size: int
    def __init__(self, step: _Optional[int] = ..., gradient: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., loss: _Optional[float] = ..., correct: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class EvalRequest(_message.Message):
    __slots__ = ("session_id", "activations", "labels")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVATIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    activations: _tensor_pb2.Tensor
    labels: _tensor_pb2.Tensor
    def __init__(self, session_id: _Optional[str] = ..., activations: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class EvalReply(_message.Message):
    __slots__ = ("predictions", "loss", "correct")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    predictions: _tensor_pb2.Tensor
    loss: float
    correct: int
    def __init__(self, predictions: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., loss: _Optional[float] = ..., correct: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id", "flush_timeout_s")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FLUSH_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    flush_timeout_s: float
    def __init__(self, session_id: _Optional[str] = ..., flush_timeout_s: _Optional[float] = ...) -> None: ...

class MirrorStats(_message.Message):
    __slots__ = ("enqueued", "sent", "dropped")
    ENQUEUED_FIELD_NUMBER: _ClassVar[int]
    SENT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    enqueued: int
    sent: int
    dropped: int
    def __init__(self, enqueued: _Optional[int] = ..., sent: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class CloseSessionReply(_message.Message):
    __slots__ = ("steps_applied", "mirror", "traffic_log")
    STEPS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    MIRROR_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_LOG_FIELD_NUMBER: _ClassVar[int]
    steps_applied: int
    mirror: MirrorStats
    traffic_log: MirrorStats
    def __init__(self, steps_applied: _Optional[int] = ..., mirror: _Optional[_Union[MirrorStats, _Mapping]] = ..., traffic_log: _Optional[_Union[MirrorStats, _Mapping]] = ...) -> None: ...
