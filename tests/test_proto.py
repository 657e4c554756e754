"""The committed gRPC stubs match the .proto files."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUBS = ROOT / "proto" / "cemsplit" / "v1"


def test_generated_stubs_are_fresh(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.fail("grpcio-tools is not installed; install the dev extra: pip install -e '.[dev]'")
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(tmp_path)

    generated = sorted(p.relative_to(tmp_path / "cemsplit" / "v1") for p in (tmp_path / "cemsplit" / "v1").glob("*_pb2*"))
    committed = sorted(p.relative_to(STUBS) for p in STUBS.glob("*_pb2*"))
    assert generated == committed, "stub files differ; run: python scripts/gen_proto.py"
    stale = [str(name) for name in generated if (tmp_path / "cemsplit" / "v1" / name).read_bytes() != (STUBS / name).read_bytes()]
    assert not stale, f"stale stubs {stale}; run: python scripts/gen_proto.py and commit the result"


def test_contract_package_is_versioned():
    from cemsplit.v1 import split_pb2

    assert split_pb2.DESCRIPTOR.package == "cemsplit.v1"
    assert "SplitLearning" in split_pb2.DESCRIPTOR.services_by_name
    assert sys.modules["cemsplit.v1.split_pb2"] is split_pb2
