"""docker-compose files, Dockerfile and .dockerignore: validated by docker-compose 1.29 and read back.

`docker-compose config` needs no Docker daemon, so these tests run wherever docker-compose is
installed. CI installs it (scripts/install_docker_tools.sh) and fails here if it is missing;
elsewhere the tests that need it are skipped. scripts/docker_e2e.sh runs the files for real.
"""

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cemsplit.shared.config import RunConfig, build_config, load_yaml
from cemsplit.v1 import attacker_pb2, split_pb2

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "docker-compose.yml"
GPU = ROOT / "docker-compose.gpu.yml"
ROLES = ("attacker", "server", "client", "reporter")
SERVICE_NAMES = {
    "server": split_pb2.DESCRIPTOR.services_by_name["SplitLearning"].full_name,
    "attacker": attacker_pb2.DESCRIPTOR.services_by_name["Attacker"].full_name,
}


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed; .ci/run installs it with scripts/install_docker_tools.sh")
        pytest.skip("docker-compose is not installed; run scripts/install_docker_tools.sh (Debian, as root)")
    return found


def compose_config(*files: Path) -> subprocess.CompletedProcess:
    """Run `docker-compose -f FILE... config` with no CEMSPLIT_* variables, so defaults apply."""
    command = [docker_compose()]
    for path in files:
        command += ["-f", str(path)]
    environment = {key: value for key, value in os.environ.items() if not key.startswith("CEMSPLIT_")}
    return subprocess.run([*command, "config"], cwd=ROOT, capture_output=True, text=True, timeout=120, env=environment)


def resolved(*files: Path) -> dict:
    result = compose_config(*files)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def option_value(command: list[str], option: str) -> str:
    return command[command.index(option) + 1]


def test_compose_version_is_1_29():
    result = subprocess.run([docker_compose(), "version", "--short"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1.29."), result.stdout


def test_compose_base_config_valid():
    config = resolved(BASE)
    assert set(config["services"]) == {*ROLES, "certs"}
    assert set(config["volumes"]) == {"certs", "runs", "server-checkpoints", "client-checkpoints", "traffic"}
    assert config["networks"]["default"]["internal"] is True
    for role in ROLES:
        service = config["services"][role]
        assert service["image"] == "cemsplit:latest", role
        assert service["command"][0] == ("report" if role == "reporter" else role), role
        assert "ports" not in service, role


def test_compose_health_checks_use_grpc():
    services = resolved(BASE)["services"]
    for role, service_name in SERVICE_NAMES.items():
        test = services[role]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "cemsplit", "health"], test
        assert option_value(test, "--service") == service_name
        port = option_value(test, "--address").rpartition(":")[2]
        listen = services[role]["environment"][f"CEMSPLIT_{role.upper()}__LISTEN"]
        assert listen == f"0.0.0.0:{port}"


def test_compose_start_order():
    services = resolved(BASE)["services"]
    assert services["attacker"]["depends_on"] == {"certs": {"condition": "service_completed_successfully"}}
    assert services["server"]["depends_on"] == {"attacker": {"condition": "service_healthy"}}
    assert services["client"]["depends_on"] == {"server": {"condition": "service_healthy"}}
    assert services["reporter"]["depends_on"] == {
        "attacker": {"condition": "service_healthy"},
        "client": {"condition": "service_completed_successfully"},
    }


def test_compose_volumes_and_certs():
    services = resolved(BASE)["services"]
    expected = {
        "attacker": {"runs:/runs:rw", "traffic:/runs/attacker/traffic:rw"},
        "server": {"runs:/runs:rw", "server-checkpoints:/runs/server/checkpoints:rw"},
        "client": {"runs:/runs:rw", "client-checkpoints:/runs/client/checkpoints:rw"},
        "reporter": {"runs:/runs:rw"},
    }
    for role in ROLES:
        volumes = services[role]["volumes"]
        named = {volume for volume in volumes if not volume.startswith("/") and not volume.startswith("certs:")}
        assert named == expected[role], role
        assert "certs:/certs:ro" in volumes, role
        environment = services[role]["environment"]
        assert environment["CEMSPLIT_TRANSPORT__TLS_CA"] == "/certs/ca.pem", role
        assert environment["CEMSPLIT_TRANSPORT__TLS_CERT"] == "/certs/server.pem", role
        assert "CEMSPLIT_TRANSPORT__INSECURE" not in environment, role
        assert f"{ROOT / 'configs' / 'demo.yaml'}:/etc/cemsplit/run.yaml:ro" in volumes, role
        assert option_value(services[role]["command"], "--config") == "/etc/cemsplit/run.yaml"
    assert services["certs"]["volumes"] == ["certs:/certs:rw"]
    assert "--host server --host attacker" in " ".join(services["certs"]["entrypoint"])


def test_compose_environment_names_real_keys():
    # A misspelt CEMSPLIT_<SECTION>__<KEY> would stop the role at start with "unknown key".
    services = resolved(BASE)["services"]
    for role in ROLES:
        for name in services[role]["environment"]:
            match = re.fullmatch(r"CEMSPLIT_([A-Z]+)__([A-Z_]+)", name)
            assert match, f"{role}: {name}"
            section, key = match.group(1).lower(), match.group(2).lower()
            assert section in RunConfig.model_fields, f"{role}: {name}"
            assert key in RunConfig.model_fields[section].annotation.model_fields, f"{role}: {name}"


def test_compose_gpu_override_valid():
    services = resolved(BASE, GPU)["services"]
    for role in ("server", "client"):
        devices = services[role]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], role
        assert services[role]["environment"]["CEMSPLIT_RUNTIME__DEVICE"] == "cuda", role
        assert "CEMSPLIT_TRANSPORT__TLS_CA" in services[role]["environment"], f"{role}: the override must not replace the base environment"
    for role in ("attacker", "reporter"):
        assert "deploy" not in services[role], role
    assert services["client"]["depends_on"]["server"] == {"condition": "service_healthy"}


def test_compose_config_rejects_bad_condition(tmp_path):
    broken = BASE.read_text().replace("condition: service_completed_successfully", "condition: service_finished")
    path = tmp_path / "docker-compose.yml"
    path.write_text(broken)
    result = compose_config(path)
    assert result.returncode != 0
    assert "service_finished" in result.stderr


def test_compose_smoke_config_loads():
    config = build_config(load_yaml(ROOT / "configs" / "compose-smoke.yaml"), "compose-smoke.yaml")
    assert config.train.epochs >= 2
    assert config.data.train_limit is not None


def test_dockerfile_copies_every_package():
    # The build context is an allow-list, so a new package folder must be named in both files.
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    for folder in {path.split("/")[0] for path in package_dirs.values()}:
        assert f"COPY {folder} /src/{folder}" in dockerfile, folder
        assert f"!{folder}/" in ignore, folder


def in_build_context(entry: str, patterns: list[str]) -> bool:
    """Apply .dockerignore patterns to a top-level entry: the last matching pattern decides."""
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatch(entry, pattern.lstrip("!").rstrip("/")):
            included = negated
    return included


def test_dockerignore_excludes_local_state():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for entry in (".git", ".venv", "runs", "certs", "tests", "docs", "benchmarks", ".pytest_cache", "Dockerfile"):
        assert not in_build_context(entry, patterns), entry
    for entry in ("pyproject.toml", "README.md", "shared", "cli", "configs", "constraints", "docker/wheels"):
        assert in_build_context(entry, patterns), entry
