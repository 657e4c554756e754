"""Fuzzing the server: random and mutated requests never crash it or change rejected weights.

The servicer runs in this process behind a real gRPC server on loopback, so the test can hash
the session's weights around every call.
"""

from concurrent import futures

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cemsplit.server.service import SplitLearningService, _non_finite
from cemsplit.shared import codec
from cemsplit.shared.config import TrainConfig
from cemsplit.shared.grpc_util import add_checked_servicer
from cemsplit.shared.specs import model_spec_message, training_spec_message
from cemsplit.shared.vgg import SplitSpec
from cemsplit.shared.wire import PROTOCOL_VERSION, server_options
from cemsplit.v1 import split_pb2, split_pb2_grpc, tensor_pb2

SPEC = SplitSpec(input_shape=(1, 28, 28), num_classes=10)
EXPECTED_REJECTIONS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
}
METHODS = ("OpenSession", "TrainStep", "Evaluate", "CloseSession")


class FuzzTarget:
    """An in-process server with one open session that has applied one step."""

    def __init__(self, tmp_path) -> None:
        self.service = SplitLearningService(SPEC, tmp_path / "checkpoints")
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=server_options(8))
        add_checked_servicer(self.service, self.server, split_pb2.DESCRIPTOR.services_by_name["SplitLearning"])
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = split_pb2_grpc.SplitLearningStub(self.channel)
        self.raw = {
            name: self.channel.unary_unary(f"/cemsplit.v1.SplitLearning/{name}", request_serializer=None, response_deserializer=None)
            for name in METHODS
        }
        opened = self.stub.OpenSession(
            split_pb2.OpenSessionRequest(
                protocol_version=PROTOCOL_VERSION, model=model_spec_message(SPEC), training=training_spec_message(TrainConfig()),
                wire_dtype=tensor_pb2.FLOAT32, max_batch_size=16,
            ),
            timeout=30,
        )
        self.session_id = opened.session_id
        self.valid_step = self.train_request(1)
        self.stub.TrainStep(self.valid_step, timeout=30)

    def train_request(self, step: int) -> split_pb2.TrainRequest:
        return split_pb2.TrainRequest(
            session_id=self.session_id, step=step, epoch=1,
            activations=codec.encode(torch.rand(4, 8, 7, 7)), labels=codec.encode(torch.tensor([0, 1, 2, 3])),
        )

    def weights(self) -> list[torch.Tensor]:
        """Return copies of every parameter and buffer of the fuzzed session."""
        session = self.service._sessions[self.session_id]
        with session.lock:
            return [t.detach().clone() for t in session.net.state_dict().values()]

    def close(self) -> None:
        self.channel.close()
        self.server.stop(None)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    fuzz = FuzzTarget(tmp_path_factory.mktemp("fuzz"))
    yield fuzz
    fuzz.close()


def mutate(data: bytes, positions: list[int], values: list[int], cut: int | None) -> bytes:
    buffer = bytearray(data)
    for position, value in zip(positions, values):
        if buffer:
            buffer[position % len(buffer)] = value
    if cut is not None and buffer:
        buffer = buffer[: cut % len(buffer)]
    return bytes(buffer)


def check_call(target: FuzzTarget, method: str, payload: bytes) -> None:
    before = target.weights()
    step_before = target.service._sessions[target.session_id].last_step
    try:
        target.raw[method](payload, timeout=30)
        accepted = True
    except grpc.RpcError as error:
        assert error.code() in EXPECTED_REJECTIONS, f"{method}: unexpected {error.code()}: {error.details()}"
        assert error.details(), f"{method}: rejection without a message"
        accepted = False

    assert target.session_id in target.service._sessions, "the fuzzed session was closed or lost"
    session = target.service._sessions[target.session_id]
    after = target.weights()
    if not accepted or method != "TrainStep" or session.last_step == step_before:
        assert all(torch.equal(a, b) for a, b in zip(after, before)), f"{method}: weights changed by a call that applied no step"
    else:
        assert all(bool(torch.isfinite(t).all()) for t in after), f"{method}: an accepted step made weights non-finite"


# CloseSession on the fuzzed session would end the test's session, so it only sees random ids.
mutable_methods = st.sampled_from(["OpenSession", "TrainStep", "Evaluate"])


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    method=mutable_methods,
    positions=st.lists(st.integers(min_value=0, max_value=10**6), max_size=8),
    values=st.lists(st.integers(min_value=0, max_value=255), max_size=8),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=10**6)),
)
def test_mutated_valid_requests(target, method, positions, values, cut):
    if method == "TrainStep":
        template = target.train_request(target.service._sessions[target.session_id].last_step + 1)
    elif method == "Evaluate":
        template = split_pb2.EvalRequest(session_id=target.session_id, activations=codec.encode(torch.rand(2, 8, 7, 7)))
    else:
        template = split_pb2.OpenSessionRequest(
            protocol_version=PROTOCOL_VERSION, model=model_spec_message(SPEC), training=training_spec_message(TrainConfig()),
            wire_dtype=tensor_pb2.FLOAT32, max_batch_size=16, resume_session_id=target.session_id, resume_steps=[1],
        )
    check_call(target, method, mutate(template.SerializeToString(), positions, values, cut))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(METHODS), payload=st.binary(max_size=512))
def test_random_bytes(target, method, payload):
    check_call(target, method, payload)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    step=st.integers(min_value=-5, max_value=10**12),
    epoch=st.integers(min_value=-5, max_value=10**6),
    dtype=st.integers(min_value=0, max_value=12),
    shape=st.lists(st.integers(min_value=-3, max_value=20), max_size=6),
    data=st.binary(max_size=2048),
    label_values=st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=6),
    same_session=st.booleans(),
)
def test_structured_train_requests(target, step, epoch, dtype, shape, data, label_values, same_session):
    request = split_pb2.TrainRequest(
        session_id=target.session_id if same_session else "f" * 32,
        step=step,
        epoch=epoch,
        activations=tensor_pb2.Tensor(dtype=dtype, shape=shape, data=data),
        labels=codec.encode(torch.tensor(label_values, dtype=torch.int64)),
    )
    check_call(target, "TrainStep", request.SerializeToString())


def test_server_still_serves_after_fuzzing(target):
    # Accepted fuzz steps with large activations may have ruined the fuzzed session's own model,
    # so a fresh session shows that the server still trains.
    fresh = FuzzTarget.__new__(FuzzTarget)
    fresh.service, fresh.stub = target.service, target.stub
    opened = target.stub.OpenSession(
        split_pb2.OpenSessionRequest(
            protocol_version=PROTOCOL_VERSION, model=model_spec_message(SPEC), training=training_spec_message(TrainConfig()),
            wire_dtype=tensor_pb2.FLOAT32, max_batch_size=16,
        ),
        timeout=30,
    )
    fresh.session_id = opened.session_id
    before = fresh.weights()
    reply = target.stub.TrainStep(fresh.train_request(1), timeout=30)
    assert reply.step == 1
    assert not all(torch.equal(a, b) for a, b in zip(fresh.weights(), before))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_gradient_is_named(bad):
    net = torch.nn.Linear(3, 2)
    features = torch.zeros(4, 3, requires_grad=True)
    loss = net(features).sum()
    loss.backward()
    assert _non_finite(loss, net, features) == ""

    net.weight.grad[1, 2] = bad
    assert _non_finite(loss, net, features) == "gradient"
    assert _non_finite(torch.tensor(bad), net, features) == "loss"
