"""The search space written in YAML -> Optuna distributions, for one gate and local-search arm.

Sections: ``train`` (any train setting but the study settings), ``gate.<name>`` (that gate's own
parameters only), ``local_search`` (only with local search on), ``fixed_with_local_search.<gate>``
(gate parameters fixed instead of searched when local search is on: COMET+ fixes gamma = 10).
An entry set to null is not searched (how a preset removes an entry of its base space).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

import optuna

from moetune.config import GateConfig, StudyConfig, TrainConfig
from moetune.errors import ConfigError
from moetune.moe.gates import gate_class

Space = dict[str, optuna.distributions.BaseDistribution]

DISTRIBUTION_TYPES = ("loguniform", "uniform", "int", "categorical")


def to_distribution(name: str, spec: Any) -> optuna.distributions.BaseDistribution:
    """One YAML entry -> an Optuna distribution; empty or inverted ranges are ConfigErrors."""
    if not isinstance(spec, dict) or spec.get("type") not in DISTRIBUTION_TYPES:
        raise ConfigError(f"search_space {name}: give a mapping with type one of {DISTRIBUTION_TYPES} (got {spec!r})")
    kind = spec["type"]
    if kind == "categorical":
        choices = spec.get("choices")
        if not choices:
            raise ConfigError(f"search_space {name}: categorical needs a non-empty 'choices' list")
        return optuna.distributions.CategoricalDistribution([tuple(c) if isinstance(c, list) else c for c in choices])
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"search_space {name}: {kind} needs 'low' and 'high'")
    low, high = spec["low"], spec["high"]
    if not (
        isinstance(low, (int, float)) and isinstance(high, (int, float)) and math.isfinite(low) and math.isfinite(high)
    ):
        raise ConfigError(f"search_space {name}: low and high must be numbers (got {low!r}, {high!r})")
    if low >= high:
        raise ConfigError(f"search_space {name}: empty or inverted range low={low} >= high={high}; make low < high")
    if kind == "int":
        if int(low) != low or int(high) != high:
            raise ConfigError(f"search_space {name}: int range needs integer bounds (got {low}, {high})")
        return optuna.distributions.IntDistribution(int(low), int(high))
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"search_space {name}: loguniform needs low > 0 (got {low})")
    return optuna.distributions.FloatDistribution(float(low), float(high), log=kind == "loguniform")


SECTIONS = ("train", "gate", "local_search", "fixed_with_local_search")
# study settings, never sampled: task weights change the scale of the validation loss that selects
# a trial, the seed is derived per trial (trial_seed), the rest is not a hyperparameter
STUDY_SETTINGS = {"task_weights", "seed", "device", "eval_batch_size", "max_epochs", "patience"}
LOCAL_SEARCH_KEYS = ("e_perm", "e_perm_fraction", "zeta", "noise")


def _gate_params(gate_name: str) -> set[str]:
    return set(inspect.signature(gate_class(gate_name).__init__).parameters) - {"self", "in_dim", "n_experts", "k"}


def build_search_space(space: dict, gate_name: str, local_search_on: bool) -> Space:
    """Flat {"train.lr": dist, "gate.gamma": dist, "local_search.e_perm": dist} for this gate and local search.

    With local search on (or its warm-up control), gate keys listed in `fixed_with_local_search.<gate>`
    are not searched: `fixed_gate_params` puts their fixed values in place (COMET+ fixes gamma = 10)."""
    unknown = sorted(set(space) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"search_space has unknown sections {unknown}; use {', '.join(SECTIONS)}")
    space = _drop_nulls(space)
    out = {}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, spec in (space.get("train") or {}).items():
        if key in STUDY_SETTINGS:
            hint = (
                " sweep it instead, e.g. -m 'train.task_weights=[0.1,0.9],[0.9,0.1]' (selection would compare "
                "validation losses of different scales)"
                if key == "task_weights"
                else ""
            )
            raise ConfigError(
                f"search_space train.{key}: a study setting, not a hyperparameter; remove it from the "
                f"search space{';' + hint if hint else ''}"
            )
        if key not in train_keys:
            raise ConfigError(
                f"search_space train.{key}: not a train setting; choose from {sorted(train_keys - STUDY_SETTINGS)}"
            )
        out[f"train.{key}"] = to_distribution(f"train.{key}", spec)
    gate_params = _gate_params(gate_name)
    fixed = fixed_gate_params(space, gate_name, local_search_on)
    for key, spec in ((space.get("gate") or {}).get(gate_name) or {}).items():
        if key not in gate_params:
            raise ConfigError(
                f"search_space gate.{gate_name}.{key}: gate {gate_name!r} "
                f"has no such parameter; it takes {sorted(gate_params)}"
            )
        if key not in fixed:
            out[f"gate.{key}"] = to_distribution(f"gate.{gate_name}.{key}", spec)
    if local_search_on:
        entries = space.get("local_search") or {}
        for key, spec in entries.items():
            if key not in LOCAL_SEARCH_KEYS:
                raise ConfigError(f"search_space local_search.{key}: choose from {list(LOCAL_SEARCH_KEYS)}")
            out[f"local_search.{key}"] = to_distribution(f"local_search.{key}", spec)
        if "e_perm" in entries and "e_perm_fraction" in entries:
            raise ConfigError(
                "search_space local_search: search e_perm (epochs, the supplement) or e_perm_fraction "
                "(of train.max_epochs, the authors' code), not both"
            )
    return out


def _drop_nulls(space: dict) -> dict:
    """An entry set to null is not searched (how a preset removes an entry its base search space has)."""

    def clean(section):
        return {k: v for k, v in (section or {}).items() if v is not None}

    return {
        "train": clean(space.get("train")),
        "local_search": clean(space.get("local_search")),
        "gate": {g: clean(entries) for g, entries in (space.get("gate") or {}).items()},
        "fixed_with_local_search": space.get("fixed_with_local_search") or {},
    }


def fixed_gate_params(space: dict, gate_name: str, local_search_on: bool) -> dict[str, Any]:
    """Gate parameters the search space fixes when local search is on: {"gamma": 10.0} for COMET+."""
    fixed = dict((space.get("fixed_with_local_search") or {}).get(gate_name) or {})
    unknown = sorted(set(fixed) - _gate_params(gate_name))
    if unknown:
        raise ConfigError(
            f"search_space fixed_with_local_search.{gate_name}: gate {gate_name!r} has no parameter(s) {unknown}"
        )
    for key, value in fixed.items():
        if isinstance(value, (dict, list)):
            raise ConfigError(f"search_space fixed_with_local_search.{gate_name}.{key}: give one value (got {value!r})")
    return fixed if local_search_on else {}


def with_fixed_gate_params(config: StudyConfig) -> StudyConfig:
    """The config with the gate parameters the search space fixes for local search put in place."""
    fixed = fixed_gate_params(config.search_space, config.gate.name, config.local_search.enabled)
    gate = dataclasses.replace(config.gate, params={**config.gate.params, **fixed})
    return dataclasses.replace(config, gate=gate)


def with_gate_entries(space: dict, gate: GateConfig) -> dict:
    """The search space with the gate's own entries (conf/gate/<name>.yaml, ``search``) under
    ``gate.<name>``; the search space's entries for that gate win, key by key."""
    if not gate.search:
        return space
    gates = dict(space.get("gate") or {})
    gates[gate.name] = {**gate.search, **(gates.get(gate.name) or {})}
    return {**space, "gate": gates}


def study_space(config: StudyConfig) -> Space:
    """The study's distributions, with the checks that tie the space to the config (E_perm vs epochs)."""
    ls, train = config.local_search, config.train
    space = build_search_space(with_gate_entries(config.search_space, config.gate), config.gate.name, ls.enabled)
    if ls.enabled and "local_search.e_perm" in space:
        high = space["local_search.e_perm"].high
        if high > train.max_epochs:
            raise ConfigError(
                f"search_space local_search.e_perm reaches {high} > train.max_epochs={train.max_epochs}; "
                "lower it or raise max_epochs"
            )
        if ls.e_perm_fraction is not None:
            raise ConfigError(
                "search_space local_search.e_perm is searched but local_search.e_perm_fraction is set; "
                "set local_search.e_perm_fraction=null or search e_perm_fraction instead"
            )
    if ls.enabled and "local_search.e_perm_fraction" in space:
        dist = space["local_search.e_perm_fraction"]
        low, high = (dist.low, dist.high) if hasattr(dist, "low") else (min(dist.choices), max(dist.choices))
        if not 0 < low <= high <= 1:
            raise ConfigError(f"search_space local_search.e_perm_fraction must lie in (0, 1] (got {low}..{high})")
    return space
