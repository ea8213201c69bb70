"""The validated shape of a study's config, and the search space written in YAML.

Hydra composes the config; `load_study_config` checks it against these dataclasses (types, ranges,
search-space entries) so bad input fails with one clear line before Ray, MLflow or data are touched.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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
class TrainSchema(TrainConfig):
    seed: int | None = None  # each trial gets its own (trial_seed); null here: the study seed


@dataclass
class StudySchema:
    sweep: SweepSchema = field(default_factory=SweepSchema)
    seed: int = 0
    dataset: dict = field(default_factory=lambda: {"name": "synthetic"})
    model: ModelConfig = field(default_factory=ModelConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    local_search: LocalSearchSchema = field(default_factory=LocalSearchSchema)
    train: TrainSchema = field(default_factory=TrainSchema)
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


SECTIONS = ("train", "gate", "local_search", "fixed_with_local_search")
# study settings, never sampled: task weights change the scale of the validation loss that selects
# a trial, the seed is derived per trial (trial_seed), the rest is not a hyperparameter
STUDY_SETTINGS = {"task_weights", "seed", "device", "eval_batch_size", "max_epochs", "patience"}
LOCAL_SEARCH_KEYS = ("e_perm", "e_perm_fraction", "zeta", "noise")


def _gate_params(gate_name: str) -> set[str]:
    return set(inspect.signature(gate_class(gate_name).__init__).parameters) - {"self", "in_dim", "n_experts", "k"}


def build_search_space(space: dict, gate_name: str, local_search_on: bool) -> dict[str, optuna.distributions.BaseDistribution]:
    """Flat {"train.lr": dist, "gate.gamma": dist, "local_search.e_perm": dist} for this gate and local search.

    With local search on (or its warm-up control), gate keys listed in `fixed_with_local_search.<gate>`
    are not searched: `fixed_gate_params` puts their fixed values in place (COMET+ fixes gamma = 10)."""
    unknown = sorted(set(space) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"search_space has unknown sections {unknown}; use {', '.join(SECTIONS)}")
    space = _drop_nulls(space)
    out = {}
    train_keys = set(TrainConfig.__dataclass_fields__)
    for key, spec in (space.get("train") or {}).items():
        if key in STUDY_SETTINGS:
            hint = (" sweep it instead, e.g. -m 'train.task_weights=[0.1,0.9],[0.9,0.1]' (selection would compare "
                    "validation losses of different scales)" if key == "task_weights" else "")
            raise ConfigError(f"search_space train.{key}: a study setting, not a hyperparameter; remove it from the "
                              f"search space{';' + hint if hint else ''}")
        if key not in train_keys:
            raise ConfigError(f"search_space train.{key}: not a train setting; choose from {sorted(train_keys - STUDY_SETTINGS)}")
        out[f"train.{key}"] = to_distribution(f"train.{key}", spec)
    gate_params = _gate_params(gate_name)
    fixed = fixed_gate_params(space, gate_name, local_search_on)
    for key, spec in ((space.get("gate") or {}).get(gate_name) or {}).items():
        if key not in gate_params:
            raise ConfigError(f"search_space gate.{gate_name}.{key}: gate {gate_name!r} has no such parameter; it takes {sorted(gate_params)}")
        if key not in fixed:
            out[f"gate.{key}"] = to_distribution(f"gate.{gate_name}.{key}", spec)
    if local_search_on:
        entries = space.get("local_search") or {}
        for key, spec in entries.items():
            if key not in LOCAL_SEARCH_KEYS:
                raise ConfigError(f"search_space local_search.{key}: choose from {list(LOCAL_SEARCH_KEYS)}")
            out[f"local_search.{key}"] = to_distribution(f"local_search.{key}", spec)
        if "e_perm" in entries and "e_perm_fraction" in entries:
            raise ConfigError("search_space local_search: search e_perm (epochs, the supplement) or e_perm_fraction "
                              "(of train.max_epochs, the authors' code), not both")
    return out


def _drop_nulls(space: dict) -> dict:
    """An entry set to null is not searched (how a preset removes an entry its base search space has)."""
    def clean(section):
        return {k: v for k, v in (section or {}).items() if v is not None}
    return {"train": clean(space.get("train")), "local_search": clean(space.get("local_search")),
            "gate": {g: clean(entries) for g, entries in (space.get("gate") or {}).items()},
            "fixed_with_local_search": space.get("fixed_with_local_search") or {}}


def fixed_gate_params(space: dict, gate_name: str, local_search_on: bool) -> dict[str, Any]:
    """Gate parameters the search space fixes when local search is on: {"gamma": 10.0} for COMET+."""
    fixed = dict(((space.get("fixed_with_local_search") or {}).get(gate_name) or {}))
    unknown = sorted(set(fixed) - _gate_params(gate_name))
    if unknown:
        raise ConfigError(f"search_space fixed_with_local_search.{gate_name}: gate {gate_name!r} has no parameter(s) {unknown}")
    for key, value in fixed.items():
        if isinstance(value, (dict, list)):
            raise ConfigError(f"search_space fixed_with_local_search.{gate_name}.{key}: give one value (got {value!r})")
    return fixed if local_search_on else {}


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed of one trial: derived from the study's seed and the trial's number, so every trial of a
    random search starts from its own initialization (as in the authors' code) and can be reproduced."""
    return int(np.random.SeedSequence([int(study_seed), int(trial_number)]).generate_state(1)[0])


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


def weights_label(task_weights) -> str:
    """How a study's task weighting reads in its key and tags: "equal" or "0.1_0.9"."""
    return "equal" if not task_weights else "_".join(f"{float(w):g}" for w in task_weights)


def study_key(gate: str, local_search: str, dataset: str, seed, task_weights=None) -> str:
    """A study's identity inside a sweep: gate, local search arm, dataset, task weighting (when set), seed."""
    weights = f"-tw{weights_label(task_weights)}" if task_weights else ""
    return f"{gate}-ls_{local_search}-{dataset}{weights}-seed{seed}"


# Hydra names each study's folder with the same key: ${study_key:${gate.name},...} in conf/config.yaml
if not OmegaConf.has_resolver("study_key"):
    OmegaConf.register_new_resolver("study_key", study_key)


@dataclass
class StudyConfig:
    """Everything one study needs, validated: plain dicts for Ray, dataclasses for training."""

    plain: dict
    search_space: dict[str, optuna.distributions.BaseDistribution]

    @property
    def study_key(self) -> str:
        p = self.plain
        return study_key(p["gate"]["name"], p["local_search"]["name"], p["dataset"]["name"], p["seed"],
                         p["train"]["task_weights"])


def training_configs(plain: dict) -> tuple[ModelConfig, GateConfig, LocalSearchConfig, TrainConfig]:
    """Dataclasses for the trainer. The trial's seed (train.seed, set per trial) defaults to the study
    seed; an E_perm given as a fraction of the epochs becomes int(fraction * max_epochs), at least 1."""
    ls = {k: v for k, v in plain["local_search"].items() if k != "name"}
    train = dict(plain["train"])
    if train.get("seed") is None:
        train["seed"] = plain["seed"]
    train = TrainConfig(**train)
    if ls.get("e_perm_fraction") is not None:
        ls["e_perm"] = max(1, int(ls["e_perm_fraction"] * train.max_epochs))
    return ModelConfig(**plain["model"]), GateConfig(**plain["gate"]), LocalSearchConfig(**ls), train


def load_study_config(cfg: DictConfig) -> StudyConfig:
    """Validate a composed Hydra config; raises ConfigError with one line naming the key and the fix."""
    try:
        # resolve in Hydra's own config first: its resolver cache holds the multirun's ${now:...},
        # so every job of a multirun gets the same sweep name (a merged copy would re-resolve it)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        merged = OmegaConf.merge(OmegaConf.structured(StudySchema), resolved)
        plain = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        first = str(exc).strip().splitlines()[0]
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"config {key}: {first}" if key else f"config: {first}") from None
    fraction = plain["local_search"].get("e_perm_fraction")
    if fraction is not None and not 0 < fraction <= 1:
        raise ConfigError(f"local_search.e_perm_fraction must be in (0, 1] (got {fraction}); or set it to null and use e_perm")
    plain["gate"]["params"].update(fixed_gate_params(plain["search_space"], plain["gate"]["name"],
                                                     plain["local_search"]["enabled"]))
    model, gate, ls, train = training_configs(plain)
    validate_model_config(model, gate, ls)
    # task_weights' length is checked against the dataset's tasks once the data is loaded
    validate_train_config(dataclasses.replace(train, task_weights=None), 1, ls)
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
        if fraction is not None:
            raise ConfigError("search_space local_search.e_perm is searched but local_search.e_perm_fraction is set; "
                              "set local_search.e_perm_fraction=null or search e_perm_fraction instead")
    if ls.enabled and "local_search.e_perm_fraction" in space:
        dist = space["local_search.e_perm_fraction"]
        low, high = (dist.low, dist.high) if hasattr(dist, "low") else (min(dist.choices), max(dist.choices))
        if not 0 < low <= high <= 1:
            raise ConfigError(f"search_space local_search.e_perm_fraction must lie in (0, 1] (got {low}..{high})")
    return StudyConfig(plain=plain, search_space=space)
