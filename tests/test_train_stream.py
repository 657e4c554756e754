"""TrainStream against a real server process: replies, replays, rejections and the client's deadline."""

import grpc
import pytest
import torch

from cemsplit.client.train_calls import StreamFailure, StreamTrainCalls
from cemsplit.shared import codec
from cemsplit.shared.config import TransportConfig
from cemsplit.shared.security import open_channel
from cemsplit.v1 import split_pb2_grpc
from test_server_rpc import open_request, train_request


def stream_replies(stub, requests) -> list:
    """Send `requests` on one TrainStream and return its replies; raises the stream's error."""
    return list(stub.TrainStream(iter(requests), timeout=60))


def test_stream_valid_steps(stub):
    session = stub.OpenSession(open_request(), timeout=30).session_id

    replies = stream_replies(stub, [train_request(session, step) for step in (1, 2, 3)])

    assert [reply.step for reply in replies] == [1, 2, 3]
    for reply in replies:
        assert codec.decode(reply.gradient).shape == (4, 8, 7, 7)
        assert reply.batch_size == 4
    unary = stub.TrainStep(train_request(session, 4), timeout=30)
    assert unary.step == 4


def test_stream_replayed_step_matches_first(stub):
    session = stub.OpenSession(open_request(), timeout=30).session_id

    first, repeated, second = stream_replies(stub, [train_request(session, 1), train_request(session, 1), train_request(session, 2)])

    assert repeated == first
    assert second.step == 2
    assert stub.TrainStep(train_request(session, 2), timeout=30) == second


def test_stream_bad_field_ends_stream(stub):
    session = stub.OpenSession(open_request(), timeout=30).session_id
    bad_labels = codec.encode(torch.tensor([0, 1, 2, 10]))
    received = []

    with pytest.raises(grpc.RpcError) as caught:
        for reply in stub.TrainStream(iter([train_request(session, 1), train_request(session, 2, labels=bad_labels), train_request(session, 3)]), timeout=60):
            received.append(reply)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "label 10 is out of range 0..9" in caught.value.details()
    assert [reply.step for reply in received] == [1]
    # The rejected step was not applied, so step 2 is still the next one.
    assert stub.TrainStep(train_request(session, 2), timeout=30).step == 2


def test_stream_step_out_of_order(stub):
    session = stub.OpenSession(open_request(), timeout=30).session_id

    with pytest.raises(grpc.RpcError) as caught:
        stream_replies(stub, [train_request(session, 3)])

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "step 3 is out of order; expected step 1" in caught.value.details()


def test_stream_unknown_session(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stream_replies(stub, [train_request("no-such-session", 1)])

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "session 'no-such-session' not found" in caught.value.details()


def test_stream_undecodable_request(start_role):
    server = start_role("server", "--threads", "1")
    channel = grpc.insecure_channel(server.address)
    raw = channel.stream_stream("/cemsplit.v1.SplitLearning/TrainStream", request_serializer=None, response_deserializer=None)

    with pytest.raises(grpc.RpcError) as caught:
        list(raw(iter([b"\xff\xff\xff"]), timeout=30))
    channel.close()

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request is not a valid cemsplit.v1.TrainRequest" in caught.value.details()


def test_stream_needs_bearer_token(start_role, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token-value\n")
    server = start_role("server", "--token-file", str(token))

    channel = open_channel(server.address, TransportConfig(), [])
    with pytest.raises(grpc.RpcError) as caught:
        stream_replies(split_pb2_grpc.SplitLearningStub(channel), [train_request("no-such-session", 1)])
    channel.close()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    channel = open_channel(server.address, TransportConfig(token_file=token), [])
    with pytest.raises(grpc.RpcError) as caught:
        stream_replies(split_pb2_grpc.SplitLearningStub(channel), [train_request("no-such-session", 1)])
    channel.close()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_calls_deadline_and_reopen(stub):
    session = stub.OpenSession(open_request(), timeout=30).session_id
    calls = StreamTrainCalls(stub, timeout_s=1e-6)

    with pytest.raises(StreamFailure) as caught:
        calls.call(train_request(session, 1))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "within 1e-06 s (transport.rpc_timeout_s)" in caught.value.details()

    # The retry opens a new stream. The server replays its stored reply to step 1 if the first
    # attempt reached it, and applies the step otherwise.
    calls = StreamTrainCalls(stub, timeout_s=60)
    first = calls.call(train_request(session, 1))
    second = calls.call(train_request(session, 2))
    calls.close()
    assert (first.step, second.step) == (1, 2)
    assert stub.TrainStep(train_request(session, 2), timeout=30) == second
