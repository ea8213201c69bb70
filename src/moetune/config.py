"""The validated shape of a study's config, and the search space written in YAML.

Hydra composes the config; `load_study_config` checks it against these dataclasses (types, ranges,
search-space entries) so bad input fails with one clear line before Ray, MLflow or data are touched.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moetune.errors import ConfigError
from moetune.gates import gate_class
from moetune.model import GateConfig, LocalSearchConfig, ModelConfig, validate_model_config
from moetune.training import TrainConfig, validate_train_config


@dataclass
class SweepSchema:
    name: str = "sweep"
    export: bool = True


@dataclass
class LocalSearchSchema(LocalSearchConfig):
    name: str = "off"


@dataclass
class TunerSchema:
    n_trials: int = 16
    sampler: str = "random"
    sampler_seed: int = 0
    concurrency: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    ray_address: str | None = None
    metric: str = "val_loss"
    mode: str = "min"


@dataclass
class TrackingSchema:
    uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: str = "mlruns/artifacts"
    experiment: str = "moetune"


@dataclass
class StudySchema:
    sweep: SweepSchema = field(default_factory=SweepSchema)
    seed: int = 0
    dataset: dict = field(default_factory=lambda: {"name": "synthetic"})
    model: ModelConfig = field(default_factory=ModelConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    local_search: LocalSearchSchema = field(default_factory=LocalSearchSchema)
    train: TrainConfig = field(default_factory=TrainConfig)
    search_space: dict = field(default_factory=dict)
    tuner: TunerSchema = field(default_factory=TunerSchema)
    tracking: TrackingSchema = field(default_factory=TrackingSchema)


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
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float)) and math.isfinite(low) and math.isfinite(high)):
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


def build_search_space(space: dict, gate_name: str, local_search_on: bool) -> dict[str, optuna.distributions.BaseDistribution]:
    """Flat {"train.lr": dist, "gate.gamma": dist, "local_search.e_perm": dist} for this gate and local search."""
    unknown = sorted(set(space) - {"train", "gate", "local_search"})
    if unknown:
        raise ConfigError(f"search_space has unknown sections {unknown}; use train, gate.<gate name>, local_search")
    out = {}
    train_keys = set(TrainConfig.__dataclass_fields__)
    for key, spec in (space.get("train") or {}).items():
        if key not in train_keys:
            raise ConfigError(f"search_space train.{key}: not a train setting; choose from {sorted(train_keys)}")
        out[f"train.{key}"] = to_distribution(f"train.{key}", spec)
    gate_params = set(inspect.signature(gate_class(gate_name).__init__).parameters) - {"self", "in_dim", "n_experts", "k"}
    for key, spec in ((space.get("gate") or {}).get(gate_name) or {}).items():
        if key not in gate_params:
            raise ConfigError(f"search_space gate.{gate_name}.{key}: gate {gate_name!r} has no such parameter; it takes {sorted(gate_params)}")
        out[f"gate.{key}"] = to_distribution(f"gate.{gate_name}.{key}", spec)
    if local_search_on:
        ls_keys = {"e_perm", "zeta", "noise"}
        for key, spec in (space.get("local_search") or {}).items():
            if key not in ls_keys:
                raise ConfigError(f"search_space local_search.{key}: choose from {sorted(ls_keys)}")
            out[f"local_search.{key}"] = to_distribution(f"local_search.{key}", spec)
    return out


def apply_sampled(base: dict, sampled: dict[str, Any]) -> dict:
    """A copy of the plain config with sampled values put in place ("gate.gamma" -> gate.params.gamma)."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    cfg["gate"] = {**cfg["gate"], "params": dict(cfg["gate"].get("params") or {})}
    for name, value in sampled.items():
        section, key = name.split(".", 1)
        value = list(value) if isinstance(value, tuple) else value
        if section == "gate":
            cfg["gate"]["params"][key] = value
        else:
            cfg[section][key] = value
    return cfg


@dataclass
class StudyConfig:
    """Everything one study needs, validated: plain dicts for Ray, dataclasses for training."""

    plain: dict
    search_space: dict[str, optuna.distributions.BaseDistribution]

    @property
    def study_key(self) -> str:
        p = self.plain
        return f"{p['gate']['name']}-ls_{p['local_search']['name']}-{p['dataset']['name']}-seed{p['seed']}"


def training_configs(plain: dict) -> tuple[ModelConfig, GateConfig, LocalSearchConfig, TrainConfig]:
    ls = {k: v for k, v in plain["local_search"].items() if k != "name"}
    train = TrainConfig(**{**plain["train"], "seed": plain["seed"]})
    return ModelConfig(**plain["model"]), GateConfig(**plain["gate"]), LocalSearchConfig(**ls), train


def load_study_config(cfg: DictConfig) -> StudyConfig:
    """Validate a composed Hydra config; raises ConfigError with one line naming the key and the fix."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(StudySchema), cfg)
        plain = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        first = str(exc).strip().splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"config {key}: {first}" if key else f"config: {first}") from None
    model, gate, ls, train = training_configs(plain)
    validate_model_config(model, gate, ls)
    # task_weights' length is checked against the dataset's tasks once the data is loaded
    validate_train_config(TrainConfig(**{**plain["train"], "task_weights": None, "seed": plain["seed"]}), 1, ls)
    tuner = plain["tuner"]
    if tuner["n_trials"] < 1:
        raise ConfigError(f"tuner.n_trials must be at least 1 (got {tuner['n_trials']})")
    if tuner["concurrency"] < 1:
        raise ConfigError(f"tuner.concurrency must be at least 1 (got {tuner['concurrency']})")
    if tuner["sampler"] not in ("random", "tpe"):
        raise ConfigError(f"tuner.sampler must be random or tpe (got {tuner['sampler']!r})")
    if tuner["mode"] not in ("min", "max"):
        raise ConfigError(f"tuner.mode must be min or max (got {tuner['mode']!r})")
    if tuner["cpus_per_trial"] <= 0 or tuner["gpus_per_trial"] < 0:
        raise ConfigError("tuner.cpus_per_trial must be > 0 and tuner.gpus_per_trial >= 0")
    space = build_search_space(plain["search_space"], gate.name, ls.enabled)
    if ls.enabled and "local_search.e_perm" in space:
        high = space["local_search.e_perm"].high
        if high > train.max_epochs:
            raise ConfigError(f"search_space local_search.e_perm reaches {high} > train.max_epochs={train.max_epochs}; lower it or raise max_epochs")
    return StudyConfig(plain=plain, search_space=space)
