"""The server's own traffic log and snapshots: recorder queue, snapshot files, and a real run."""

import json
import stat
import threading

import pytest
import torch

from conftest import TINY
from cemsplit.server.recorder import TrafficLogRecorder
from cemsplit.shared import codec
from cemsplit.shared.checkpoint import CheckpointError
from cemsplit.shared.snapshots import SnapshotWriter, find_snapshot, load_server_half, snapshot_path
from cemsplit.shared.traffic_log import TrafficLogWriter, list_segments, read_records
from cemsplit.shared.vgg import ServerNet, SplitSpec
from cemsplit.v1 import attacker_pb2

SPEC = SplitSpec(input_shape=(1, 28, 28), num_classes=10)


def record(step: int) -> attacker_pb2.TrafficRecord:
    return attacker_pb2.TrafficRecord(
        session_id="s1",
        activations=attacker_pb2.ActivationRecord(step=step, epoch=1, phase=attacker_pb2.TRAIN, activations=codec.encode(torch.zeros(2, 8, 7, 7))),
    )


class BlockingWriter(TrafficLogWriter):
    """A real log writer whose appends wait until `release` is set."""

    def __init__(self, directory) -> None:
        super().__init__(directory)
        self.release = threading.Event()

    def append(self, record) -> None:
        self.release.wait(30)
        super().append(record)


def test_recorder_drops_on_full_queue(tmp_path):
    writer = BlockingWriter(tmp_path / "log")
    recorder = TrafficLogRecorder(writer, max_queue=2)
    accepted = [recorder.offer(record(step)) for step in range(1, 8)]
    assert accepted.count(False) >= 4  # one record in the writer, two queued, the rest dropped
    assert recorder.flush(0.2) is False

    writer.release.set()
    assert recorder.flush(30) is True
    stats = recorder.stats()
    assert stats.enqueued == accepted.count(True)
    assert stats.sent == stats.enqueued
    assert stats.dropped == accepted.count(False)
    recorder.close()
    steps = [r.activations.step for r in read_records(tmp_path / "log")]
    assert steps == [step for step, ok in zip(range(1, 8), accepted) if ok]


def test_snapshots_every_n_epochs_and_at_close(tmp_path):
    net = ServerNet(SPEC)
    writer = SnapshotWriter(tmp_path, every_epochs=2)
    for epoch in (1, 2, 3):
        writer.epoch_done("abc", epoch, epoch * 10, net, SPEC)
    final = writer.session_closed("abc", 4, 40, net, SPEC)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["server-abc-epoch-0002.pt", "server-abc-epoch-0004.pt"]
    assert stat.S_IMODE(final.stat().st_mode) == 0o600
    assert find_snapshot(tmp_path, "abc") == final
    assert find_snapshot(snapshot_path(tmp_path, "abc", 2), "abc") == snapshot_path(tmp_path, "abc", 2)

    loaded = load_server_half(final, SPEC)
    assert not any(parameter.requires_grad for parameter in loaded.parameters())
    assert torch.equal(loaded.classifier[-1].weight, net.classifier[-1].weight)

    with pytest.raises(FileNotFoundError, match="no snapshot of session other"):
        find_snapshot(tmp_path, "other")
    with pytest.raises(CheckpointError, match="is for num_classes 10 but the recorded session has 100"):
        load_server_half(final, SplitSpec(input_shape=(1, 28, 28), num_classes=100))


@pytest.mark.slow
def test_server_writes_log_and_snapshots_while_mirroring(start_role, tmp_path):
    data = TINY[:6]  # data limits only: the server and attacker take no training flags
    attacker = start_role("attacker", "--threads", "1", *data)
    server_log = tmp_path / "server-log"
    server = start_role(
        "server", "--threads", "1", *data, "--attacker", attacker.address, "--traffic-log", str(server_log),
        "--snapshot-every", "1", "--segment-mb", "1", "--fsync", "always",
    )
    client = start_role("client", "--server", server.address, *TINY, "--epochs", "2", wait=False)
    assert client.process.wait(600) == 0, client.log()
    summary = json.loads((tmp_path / "client" / "summary.json").read_text())
    records = 1 + 2 * 10  # the session start and 2 epochs of 640 / 64 steps
    assert summary["traffic_log"] == {"enqueued": records, "sent": records, "dropped": 0}
    assert summary["mirror"]["sent"] == records

    assert server.stop() == 0, server.log()
    assert attacker.stop() == 0, attacker.log()
    written = [r.SerializeToString() for r in read_records(server_log)]
    mirrored = [r.SerializeToString() for r in read_records(tmp_path / "attacker" / "traffic")]
    assert len(written) == records
    assert written == mirrored

    segments = list_segments(server_log)
    assert len(segments) > 1  # 2.5 MiB of float32 activations in segments of 1 MiB
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in segments)
    assert stat.S_IMODE(server_log.stat().st_mode) == 0o700

    session = summary["session_id"]
    snapshots = sorted(path.name for path in (tmp_path / "server" / "snapshots").iterdir())
    assert snapshots == [f"server-{session}-epoch-0001.pt", f"server-{session}-epoch-0002.pt"]
