"""Config validation, YAML files, flags, environment overrides and --help."""

import re
import subprocess
import sys

import pytest

from cemsplit.cli.main import build_parser
from cemsplit.shared.config import ConfigError, RunConfig, config_from_args, flag_name, load_yaml, save_config


def parse(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_defaults_validate():
    config = RunConfig()
    assert config.data.dataset == "mnist5k"
    assert config.defense.noise_std == 0


def test_unknown_key_names_the_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"run.yaml: train.epochz: unknown key \(did you mean 'train.epochs'\?\)"):
        parse("client", "--config", str(path))


def test_unknown_section_names_the_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"trainer: unknown key \(did you mean 'train'\?\)"):
        parse("client", "--config", str(path))


def test_out_of_range_names_key_and_value(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: -0.1\n")
    with pytest.raises(ConfigError, match=r"train.lr: Input should be greater than 0 \(got -0.1\)"):
        parse("client", "--config", str(path))


def test_flags_override_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 32\n")
    config = parse("client", "--config", str(path), "--epochs", "2", "--noise-std", "0.05", "--defense", "noise")
    assert config.train.epochs == 2
    assert config.train.batch_size == 32
    assert config.defense.noise_std == 0.05


def test_set_and_environment_overrides(monkeypatch):
    monkeypatch.setenv("CEMSPLIT_TRAIN__EPOCHS", "9")
    config = parse("client", "--set", "train.lr_milestones=[1, 2]")
    assert config.train.epochs == 9
    assert config.train.lr_milestones == [1, 2]


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match="must look like SECTION.KEY=VALUE"):
        parse("client", "--set", "epochs")


def test_noise_defense_needs_sigma():
    with pytest.raises(ConfigError, match="defense 'noise' needs noise_std > 0"):
        parse("client", "--defense", "noise")


def test_fractions_leave_training_data():
    with pytest.raises(ConfigError, match="leave under 10%"):
        parse("client", "--test-fraction", "0.5", "--aux-fraction", "0.45")


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_yaml(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(listing)


def test_saved_config_loads_back(tmp_path):
    config = parse("client", "--epochs", "3", "--root", "/data/x")
    path = tmp_path / "resolved.yaml"
    save_config(config, path)
    assert parse("client", "--config", str(path)) == config


def test_flag_names_are_unique_and_prefixed_when_shared():
    assert flag_name("defense", "noise_std") == "--noise-std"
    assert flag_name("server", "listen") == "--server-listen"
    assert flag_name("attacker", "listen") == "--attacker-listen"


@pytest.mark.parametrize("role", ["server", "client", "attacker", "demo", "attack"])
def test_help_lists_defaults_and_units(role):
    output = subprocess.run([sys.executable, "-m", "cemsplit.cli", role, "--help"], capture_output=True, text=True, check=True).stdout
    assert "(default:" in output
    assert "--config" in output
    if role in ("client", "demo"):
        assert "--noise-std" in output
        assert re.search(r"in\s+seconds", output)
    if role == "server":
        assert "--server-listen" in output
        assert "--traffic-log" in output
        assert "--fsync" in output
    if role == "attack":
        assert "--traffic DIR" in output
        assert "--server-snapshot" in output
        assert "--rmle-tv-weight" in output


def test_invalid_config_exits_2_with_message(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  cut_layer: 12\n")
    result = subprocess.run([sys.executable, "-m", "cemsplit.cli", "server", "--config", str(path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "model.cut_layer: Input should be less than or equal to 7 (got 12)" in result.stderr


def test_example_config_matches_defaults():
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
    assert load_yaml(path) == RunConfig().model_dump(mode="json"), "configs/demo.yaml is out of date; run python scripts/gen_config.py"


def test_threats_flag_takes_a_list():
    assert parse("demo", "--out", "x", "--threats", "white-box", "rmle").attacker.threats == ["white-box", "rmle"]
    assert RunConfig().attacker.threats == ["white-box"]
    with pytest.raises(ConfigError, match=r"threats lists \['rmle'\] more than once"):
        parse("demo", "--out", "x", "--threats", "rmle", "rmle")
    with pytest.raises(SystemExit):
        parse("demo", "--out", "x", "--threats", "gan")


def test_traffic_log_settings():
    config = parse("server", "--traffic-log", "/tmp/log", "--fsync", "always", "--segment-mb", "16", "--snapshot-every", "2")
    assert str(config.server.traffic_log) == "/tmp/log"
    assert config.traffic.fsync == "always"
    assert config.traffic.segment_mb == 16
    assert config.server.snapshot_every == 2
    with pytest.raises(SystemExit):
        parse("server", "--fsync", "sometimes")
