"""A real server process answers bad requests with the right status and keeps serving."""

import grpc
import pytest
import torch

from cemsplit.shared import codec
from cemsplit.shared.specs import model_spec_message, training_spec_message
from cemsplit.shared.config import TrainConfig
from cemsplit.shared.vgg import SplitSpec
from cemsplit.shared.wire import PROTOCOL_VERSION
from cemsplit.v1 import split_pb2, split_pb2_grpc, tensor_pb2

SPEC = SplitSpec(input_shape=(1, 28, 28), num_classes=10)


def open_request(**changes) -> split_pb2.OpenSessionRequest:
    request = split_pb2.OpenSessionRequest(
        protocol_version=PROTOCOL_VERSION,
        client_name="test",
        model=model_spec_message(SPEC),
        training=training_spec_message(TrainConfig()),
        wire_dtype=tensor_pb2.FLOAT32,
        max_batch_size=64,
    )
    for key, value in changes.items():
        if isinstance(value, split_pb2.ModelSpec):
            request.model.CopyFrom(value)
        else:
            setattr(request, key, value)
    return request


def train_request(session_id: str, step: int, batch: int = 4, **changes) -> split_pb2.TrainRequest:
    generator = torch.Generator().manual_seed(step)
    request = split_pb2.TrainRequest(
        session_id=session_id,
        step=step,
        epoch=1,
        activations=codec.encode(torch.rand((batch, 8, 7, 7), generator=generator)),
        labels=codec.encode(torch.arange(batch) % 10),
    )
    for key, value in changes.items():
        if isinstance(value, tensor_pb2.Tensor):
            getattr(request, key).CopyFrom(value)
        else:
            setattr(request, key, value)
    return request


def status_of(call, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value.code(), caught.value.details()


def test_mismatched_session_description(stub):
    model = model_spec_message(SplitSpec(input_shape=(1, 28, 28), num_classes=10, cut_layer=3, bottleneck_channels=16))
    code, details = status_of(stub.OpenSession, open_request(model=model))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.cut_layer is 3 but the server's split has 2" in details
    assert "model.bottleneck_channels is 16" in details

    code, details = status_of(stub.OpenSession, open_request(protocol_version=99))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "protocol_version 99" in details

    code, details = status_of(stub.OpenSession, open_request(max_batch_size=0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    reply = stub.OpenSession(open_request(), timeout=30)
    assert reply.session_id


def test_malformed_tensors_rejected_and_server_keeps_serving(stub):
    session = stub.OpenSession(open_request(), timeout=30).session_id

    short = codec.encode(torch.rand(4, 8, 7, 7))
    short.data = short.data[:-1]
    nan = torch.rand(4, 8, 7, 7)
    nan[0, 0, 0, 0] = float("nan")
    cases = [
        (dict(activations=short), "bytes do not match shape"),
        (dict(activations=codec.encode(nan)), "NaN or infinite"),
        (dict(activations=codec.encode(torch.rand(4, 8, 8, 8))), "activations shape [4, 8, 8, 8] does not match the session's [B, 8, 7, 7]"),
        (dict(activations=codec.encode(torch.rand(4, 8, 7, 7).half())), "activations dtype FLOAT16 does not match"),
        (dict(labels=codec.encode(torch.tensor([0, 1, 2, 10]))), "label 10 is out of range 0..9"),
        (dict(labels=codec.encode(torch.tensor([0, 1]))), "labels shape [2] does not match the batch [4]"),
        (dict(labels=codec.encode(torch.rand(4))), "labels dtype FLOAT32 is invalid"),
    ]
    for changes, message in cases:
        code, details = status_of(stub.TrainStep, train_request(session, 1, **changes))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert message in details

    code, details = status_of(stub.TrainStep, train_request(session, 1, batch=65))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "batch size 65 is out of range 1..64" in details

    reply = stub.TrainStep(train_request(session, 1), timeout=30)
    assert reply.step == 1
    assert codec.decode(reply.gradient).shape == (4, 8, 7, 7)


def test_session_and_step_checks(stub):
    code, details = status_of(stub.TrainStep, train_request("no-such-session", 1))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "session 'no-such-session' not found" in details

    session = stub.OpenSession(open_request(), timeout=30).session_id
    code, details = status_of(stub.TrainStep, train_request(session, 3))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "step 3 is out of order; expected step 1" in details

    first = stub.TrainStep(train_request(session, 1), timeout=30)
    repeated = stub.TrainStep(train_request(session, 1), timeout=30)
    assert repeated == first
    second = stub.TrainStep(train_request(session, 2), timeout=30)
    assert second.step == 2


def test_evaluate_returns_predictions(stub):
    session = stub.OpenSession(open_request(), timeout=30).session_id
    reply = stub.Evaluate(
        split_pb2.EvalRequest(session_id=session, activations=codec.encode(torch.rand(6, 8, 7, 7)), labels=codec.encode(torch.arange(6))),
        timeout=30,
    )
    predictions = codec.decode(reply.predictions)
    assert predictions.shape == (6,)
    assert predictions.dtype == torch.int64
    assert 0 <= reply.correct <= 6
    closed = stub.CloseSession(split_pb2.CloseSessionRequest(session_id=session), timeout=30)
    assert closed.steps_applied == 0
    code, _ = status_of(stub.Evaluate, split_pb2.EvalRequest(session_id=session, activations=codec.encode(torch.rand(1, 8, 7, 7))))
    assert code == grpc.StatusCode.NOT_FOUND


def test_oversized_message_is_resource_exhausted(start_role):
    server = start_role("server", "--threads", "1", "--max-message-mb", "1")
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    stub = split_pb2_grpc.SplitLearningStub(channel)
    session = stub.OpenSession(open_request(), timeout=30).session_id

    big = train_request(session, 1, batch=64)
    big.activations.CopyFrom(codec.encode(torch.rand(1200, 8, 7, 7)))
    code, details = status_of(stub.TrainStep, big)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in details

    reply = stub.TrainStep(train_request(session, 1), timeout=30)
    assert reply.step == 1
    channel.close()
