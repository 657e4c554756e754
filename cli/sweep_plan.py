"""Sweep planning: parse `--grid key=v1,v2` options and expand them into named runs."""

from __future__ import annotations

import difflib
import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Annotated

import yaml
from pydantic import TypeAdapter, ValidationError

from cemsplit.shared.config import ConfigError, DefenseConfig, RunConfig, build_config
from cemsplit.shared.defenses import build_defense
from cemsplit.shared.specs import split_spec


@dataclass(frozen=True)
class Axis:
    """One grid dimension: a config key and the values it takes."""

    section: str
    field: str
    values: tuple[object, ...]

    @property
    def key(self) -> str:
        return f"{self.section}.{self.field}"


@dataclass(frozen=True)
class PlannedRun:
    """One combination of the grid: its folder name and the config values it sets."""

    name: str
    settings: tuple[tuple[str, object], ...]

    def overrides(self) -> list[str]:
        """Return `--set section.key=value` arguments for the demo command."""
        arguments = []
        for key, value in self.settings:
            arguments += ["--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
        return arguments


def _sections_by_field() -> dict[str, list[str]]:
    owners: dict[str, list[str]] = {}
    for section, info in RunConfig.model_fields.items():
        for field in info.annotation.model_fields:
            owners.setdefault(field, []).append(section)
    return owners


def _unknown_key(text: str, key: str, known: list[str]) -> ConfigError:
    matches = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {matches[0]}? " if matches else ""
    return ConfigError(f"--grid {text!r}: {key} is not a config key; {hint}configs/demo.yaml lists every key")


def _check_value(text: str, section: str, field: str, value: object) -> None:
    """Raise ConfigError when `value` breaks the field's own type or range, whatever the rest."""
    info = RunConfig.model_fields[section].annotation.model_fields[field]
    try:
        kind = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        TypeAdapter(kind).validate_python(value)
    except ValidationError as error:
        problem = error.errors()[0]["msg"]
        raise ConfigError(f"--grid {text!r}: {value!r} is not a valid {section}.{field}: {problem}; correct or drop that value") from None


def parse_axis(text: str) -> Axis:
    """Parse "key=v1,v2,..." where key is a config field (noise_std) or section.field.

    Raises:
        ConfigError: malformed text, an unknown or ambiguous key, no values, or a value of the
            wrong type or out of range.
    """
    key, sep, values_text = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError(f"--grid {text!r} must look like KEY=V1,V2,..., for example noise_std=0.01,0.05")
    if not values_text.strip(" ,"):
        raise ConfigError(f"--grid {text!r} gives {key} no values; list them after '=', for example {key}=V1,V2")
    owners = _sections_by_field()
    if "." in key:
        section, _, field = key.partition(".")
        known = [f"{s}.{f}" for s, info in RunConfig.model_fields.items() for f in info.annotation.model_fields]
        if key not in known:
            raise _unknown_key(text, key, known)
    else:
        field = key
        if field not in owners:
            raise _unknown_key(text, field, list(owners))
        if len(owners[field]) > 1:
            choices = ", ".join(f"{s}.{field}" for s in owners[field])
            raise ConfigError(f"--grid {text!r}: {field} is ambiguous; write one of {choices}")
        section = owners[field][0]
    values = tuple(yaml.safe_load(item.strip()) for item in values_text.split(",") if item.strip())
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"--grid {text!r} lists a value twice")
    for value in values:
        _check_value(text, section, field, value)
    return Axis(section, field, values)


def _slug(value: object) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "_", str(value))


def trained_defense(defense: DefenseConfig) -> DefenseConfig:
    """Return the defence a run trains with: a CEM variant at cem_weight 0 adds only its Gaussian noise.

    Its loss then enters the encoder's gradient times zero, and its own weights never shape the
    features sent, so the run trains and scores exactly as the same defence with noise in place
    of the variant.
    """
    variant = defense.cem_variant
    if variant is None or defense.cem_weight != 0:
        return defense
    parts = ["noise" if part == variant else part for part in defense.components]
    return DefenseConfig.model_validate({**defense.model_dump(), "defense": "+".join(parts)})


def effective_settings(config: RunConfig) -> str:
    """Return a canonical text of what a run with this config does.

    The defence section is replaced by the settings the trained defence reports using, so two
    configs that differ only in a setting their defence ignores (cem_weight under
    --defense noise, for example, or --defense cem against noise at cem_weight 0) give the
    same text.
    """
    spec = split_spec(config)
    trained = trained_defense(config.defense)
    defense = build_defense(trained, spec.num_classes, spec.client_sigmoid, config.train.seed + 1, math.prod(spec.feature_shape))
    values = config.model_dump(mode="json")
    values["defense"] = defense.describe()
    return json.dumps(values, sort_keys=True)


def plan_runs(axes: list[Axis], base: RunConfig) -> tuple[list[PlannedRun], list[dict[str, object]]]:
    """Expand the grid into runs, skipping invalid combinations and repeats of an earlier run.

    A combination is a repeat when it differs from an earlier one only in settings its defence
    does not use, because it would train and score exactly the same.

    Returns (runs, skipped), where each skipped entry holds the settings and the reason.
    """
    keys = [axis.key for axis in axes]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ConfigError(f"--grid names {', '.join(repeated)} more than once; give each key one --grid with all its values, for example noise_std=0.01,0.05")
    runs: list[PlannedRun] = []
    skipped: list[dict[str, object]] = []
    first_run_of: dict[str, tuple[str, str]] = {}  # effective settings -> first run's name and defence
    base_values = base.model_dump(mode="json")
    for combination in itertools.product(*(axis.values for axis in axes)):
        settings = tuple(zip(keys, combination))
        values = {section: dict(fields) for section, fields in base_values.items()}
        for axis, value in zip(axes, combination):
            values[axis.section][axis.field] = value
        try:
            config = build_config(values, "sweep grid")
        except ConfigError as error:
            skipped.append({"settings": dict(settings), "reason": str(error)})
            continue

        name = "__".join(f"{axis.field}-{_slug(value)}" for axis, value in zip(axes, combination))
        effective = effective_settings(config)
        if effective in first_run_of:
            first, first_defense = first_run_of[effective]
            reason = f"same run as {first}: --defense {config.defense.defense} does not use the settings that differ"
            if config.defense.defense != first_defense:
                reason = f"same run as {first}: at cem_weight 0 a CEM variant adds only its Gaussian noise, as --defense noise does"
            skipped.append({"settings": dict(settings), "reason": reason, "same_as": first})
            continue
        first_run_of[effective] = (name, config.defense.defense)
        runs.append(PlannedRun(name, settings))
    return runs, skipped
