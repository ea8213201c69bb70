"""The one typed shape of a study's config, from Hydra to the trial, and its one set of defaults.

Hydra composes YAML over these dataclasses (registered as the schema of ``conf/config.yaml``);
``moetune.tuning.hydra_config`` turns the composed config into a ``StudyConfig`` once, on the driver.
Range and choice checks live in the types (``__post_init__``), so a bad value fails where it is made;
checks that span fields are in ``check_study``. A trial receives the same ``StudyConfig`` with its
sampled values put in place (``StudyConfig.for_trial``) and checks nothing again.

This module imports neither torch nor Hydra: trial workers and the estimator can load it cheaply.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from moetune.contract import HIGHER_IS_BETTER, best_metric, higher_is_better
from moetune.errors import ConfigError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _one_of(key: str, value: Any, choices: tuple) -> None:
    _require(value in choices, f"{key} must be one of {', '.join(map(str, choices))} (got {value!r})")


@dataclass
class SweepConfig:
    name: str = "sweep"  # conf/config.yaml names it by the start time; re-run with sweep.name=<name> to resume
    export: bool = True  # write budget-vs-quality curves when a multirun ends


@dataclass
class ModelConfig:
    """Architecture. expert_type "mlp" runs experts on the bottom's features, "cnn" on the raw image."""

    n_experts: int = 16
    expert_type: str = "mlp"
    expert_hidden: list[int] = field(default_factory=lambda: [256])
    expert_dropout: float = 0.5
    embed_dim: int = 128
    dense_hidden: list[int] = field(default_factory=lambda: [64])
    head_hidden: list[int] = field(default_factory=lambda: [256])
    compute: str = "auto"  # auto | dense | sparse: how experts run when the gate is sparse
    # sparse upcycling (moetune.moe.upcycle): start from a dense (one-expert) model, a checkpoint file or
    # an MLflow run id (a trial run, or a study run: its best trial with saved weights)
    init_from: str | None = None
    init_noise: float = 0.0  # noise std added to each copied expert weight, relative to that tensor's std

    def __post_init__(self) -> None:
        _require(self.n_experts >= 1, f"model.n_experts must be at least 1 (got {self.n_experts})")
        _one_of("model.expert_type", self.expert_type, ("mlp", "cnn"))
        _one_of("model.compute", self.compute, ("auto", "dense", "sparse"))
        _require(
            self.expert_type != "mlp" or bool(self.expert_hidden),
            "model.expert_hidden must list at least one layer width for mlp experts (got [])",
        )
        for name in ("expert_hidden", "dense_hidden", "head_hidden"):
            sizes = list(getattr(self, name))
            _require(all(int(s) > 0 for s in sizes), f"model.{name} sizes must be positive (got {sizes})")
        _require(self.embed_dim > 0, f"model.embed_dim must be positive (got {self.embed_dim})")
        _require(
            0.0 <= self.expert_dropout < 1.0, f"model.expert_dropout must be in [0, 1) (got {self.expert_dropout})"
        )
        _require(
            self.init_noise >= 0 and math.isfinite(self.init_noise),
            f"model.init_noise must be a non-negative number (got {self.init_noise})",
        )
        _require(self.init_from != "", "model.init_from must be a checkpoint path or an MLflow run id (got '')")


@dataclass
class GateConfig:
    """Which gate (a module of moetune.moe.gates) and its keys; ``params`` holds the gate's own keys, and
    ``search`` the distributions its YAML file proposes for them (a search space's ``gate.<name>`` wins)."""

    name: str = "topk"
    k: int = 2
    params: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)  # the gate's own search-space entries (see search_space)

    def __post_init__(self) -> None:
        _require(self.k >= 1, f"gate.k must be at least 1 (got k={self.k})")


@dataclass
class LocalSearchConfig:
    """The local-search arm of a study; its name alone decides what the model does (LOCAL_SEARCH_ARMS):
    off (no phase), on (COMET's permutation learned for the first e_perm epochs, then hardened), frozen (on,
    with the permutation's log-weights kept at their initial draw: the matched control for learning it) and
    warmup (every gate mixed by the uniform matrix for e_perm epochs: a dense start). e_perm_fraction (the
    authors' code: int(fraction * max_epochs)) replaces e_perm when set."""

    name: str = "off"  # the arm: off | on | frozen | warmup
    e_perm: int = 5
    zeta: float = 1e-4
    noise: float = 0.0  # Gumbel noise factor; the authors' configs use 0.0
    e_perm_fraction: float | None = None

    def __post_init__(self) -> None:
        _one_of("local_search", self.name, LOCAL_SEARCH_ARMS)
        _require(not self.enabled or self.e_perm >= 1, f"local_search.e_perm must be at least 1 (got {self.e_perm})")
        _require(
            self.e_perm_fraction is None or 0 < self.e_perm_fraction <= 1,
            f"local_search.e_perm_fraction must be in (0, 1] (got {self.e_perm_fraction}); "
            "or set it to null and use e_perm",
        )

    @property
    def enabled(self) -> bool:
        """Whether the arm has a phase of e_perm epochs (every arm but off)."""
        return self.name != "off"


# what each arm does during the first e_perm epochs (moetune.moe.model builds it)
LOCAL_SEARCH_ARMS = ("off", "on", "frozen", "warmup")


@dataclass
class TrainConfig:
    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 10
    patience: int = 3
    task_weights: list[float] | None = None  # a study setting, null: equal weights
    seed: int | None = None  # set per trial (trial_seed); null: the study's seed
    device: str = "auto"  # auto | cpu | cuda
    eval_batch_size: int = 8192
    save_weights: bool = False  # log each finished trial's best weights as its run's artifact weights/model.pt

    def __post_init__(self) -> None:
        for key in ("batch_size", "max_epochs", "patience", "eval_batch_size"):
            _require(getattr(self, key) >= 1, f"train.{key} must be positive (got {getattr(self, key)})")
        _require(self.lr > 0 and math.isfinite(self.lr), f"train.lr must be a positive number (got {self.lr})")
        _one_of("train.device", self.device, ("auto", "cpu", "cuda"))
        _require(
            self.task_weights is None or all(w >= 0 for w in self.task_weights),
            f"train.task_weights must be non-negative numbers (got {self.task_weights})",
        )


@dataclass
class TunerConfig:
    """Ray Tune: trials per study, how many at once and on what. The sampler is its own group (``sampler``)."""

    n_trials: int = 16
    concurrency: int = 2  # trials at once; must fit in the CPUs (and GPUs) Ray has
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # fractional values share a GPU between trials
    ray_address: str | None = None  # null: start Ray here; or "auto" / "ray://host:10001" for a cluster
    metric: str = "val_loss"  # per-epoch validation metric; a trial is selected by its value at the best epoch

    def __post_init__(self) -> None:
        _require(self.n_trials >= 1, f"tuner.n_trials must be at least 1 (got {self.n_trials})")
        _require(self.concurrency >= 1, f"tuner.concurrency must be at least 1 (got {self.concurrency})")
        _require(
            self.metric.startswith("val_") and self.metric.rsplit("_", 1)[-1] in HIGHER_IS_BETTER,
            f"tuner.metric must be val_loss or val_<task>_<{'|'.join(sorted(HIGHER_IS_BETTER))}> (got {self.metric!r})",
        )
        _require(
            self.cpus_per_trial > 0 and self.gpus_per_trial >= 0,
            "tuner.cpus_per_trial must be > 0 and tuner.gpus_per_trial >= 0",
        )

    @property
    def selection(self) -> str:
        """The final metric that ranks a study's trials: the tuner's metric at the best epoch."""
        return best_metric(self.metric)

    @property
    def mode(self) -> str:
        """ "min" or "max", from the metric's kind (contract.TASK_KINDS): never set apart from it."""
        return "max" if higher_is_better(self.metric) else "min"

    @property
    def direction(self) -> Literal["minimize", "maximize"]:
        """The same, as Optuna spells it: "minimize" or "maximize"."""
        return "maximize" if self.mode == "max" else "minimize"


SCHEDULERS = ("none", "asha", "hyperband")


@dataclass
class SchedulerConfig:
    """Multi-fidelity tuning inside a study: which Optuna pruner decides, at each epoch's end, whether a trial
    goes on (moetune.tuning.scheduler). none: every trial trains to its own end (early stopping only);
    asha: optuna.pruners.SuccessiveHalvingPruner (asynchronous successive halving); hyperband:
    optuna.pruners.HyperbandPruner (brackets of successive halving). A stopped trial restores its best epoch,
    reports its final metrics there and counts in the budget with the epochs it ran (contract.Outcome.PRUNED)."""

    name: str = "none"  # none | asha | hyperband
    min_resource: int = 1  # the grace period: epochs before a trial's first rung
    reduction_factor: int = 3  # about 1/reduction_factor of the trials at a rung go on to the next
    max_resource: int | None = None  # hyperband's maximum epochs (its brackets); null: train.max_epochs

    def __post_init__(self) -> None:
        _one_of("scheduler", self.name, SCHEDULERS)
        _require(self.min_resource >= 1, f"scheduler.min_resource must be at least 1 (got {self.min_resource})")
        _require(
            self.reduction_factor >= 2, f"scheduler.reduction_factor must be at least 2 (got {self.reduction_factor})"
        )
        _require(
            self.max_resource is None or self.max_resource >= self.min_resource,
            f"scheduler.max_resource must be at least scheduler.min_resource={self.min_resource} "
            f"(got {self.max_resource}); or null for train.max_epochs",
        )

    @property
    def enabled(self) -> bool:
        return self.name != "none"


def weights_label(task_weights: list[float] | None) -> str:
    """How a study's task weighting reads in its key and tags: "equal" or "0.1_0.9"."""
    return "equal" if not task_weights else "_".join(f"{float(w):g}" for w in task_weights)


def study_key(
    gate: str, local_search: str, dataset: str, seed: Any, task_weights: Any = None, scheduler: Any = "none"
) -> str:
    """A study's identity inside a sweep: gate, local search arm, dataset, task weighting (when set), scheduler
    (when not none, so a multirun can sweep scheduler=asha,none; keys of unscheduled studies are unchanged),
    seed."""
    weights = f"-tw{weights_label(task_weights)}" if task_weights else ""
    sched = f"-{scheduler}" if scheduler and scheduler != "none" else ""
    return f"{gate}-ls_{local_search}-{dataset}{weights}{sched}-seed{seed}"


def trial_seed(study_seed: int, trial_number: int) -> int:
    """The seed of one trial: derived from the study's seed and the trial's number, so every trial of a
    random search starts from its own initialization (as in the authors' code) and can be reproduced."""
    import numpy as np

    return int(np.random.SeedSequence([int(study_seed), int(trial_number)]).generate_state(1)[0])


def sampler_seed(study_seed: int, trial_number: int) -> int:
    """The seed the study's sampler draws trial ``trial_number``'s setting with: a function of the study's
    seed and the number only, so a study draws the same settings alone, beside other studies, or resumed
    after a kill (a sampler seeded once would replay its first settings on resume)."""
    import numpy as np

    return int(np.random.SeedSequence([int(study_seed), int(trial_number), 1]).generate_state(1)[0])


@dataclass
class StudyConfig:
    """Everything one study needs. ``search_space`` stays as written in YAML (moetune.tuning.search_space
    turns it into Optuna distributions); ``sampler`` is a Hydra ``_target_`` node for an Optuna sampler."""

    sweep: SweepConfig = field(default_factory=SweepConfig)
    seed: int = 0
    dataset: dict[str, Any] = field(default_factory=lambda: {"name": "synthetic"})
    model: ModelConfig = field(default_factory=ModelConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    local_search: LocalSearchConfig = field(default_factory=LocalSearchConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search_space: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=lambda: {"_target_": "optuna.samplers.RandomSampler", "seed": 0})
    tuner: TunerConfig = field(default_factory=TunerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # a free ``_target_`` node: the backend's class and its own keys (conf/tracking/<name>.yaml); built with
    # ``experiment`` = the sweep's name, the one key every backend takes (moetune.tracking.Tracking)
    tracking: dict[str, Any] = field(default_factory=dict)

    @property
    def study_key(self) -> str:
        return study_key(
            self.gate.name,
            self.local_search.name,
            self.dataset["name"],
            self.seed,
            self.train.task_weights,
            self.scheduler.name,
        )

    @property
    def sampler_name(self) -> str:
        """The sampler as its tag reads: optuna.samplers.TPESampler -> "tpe", RandomSampler -> "random"."""
        return self.sampler["_target_"].rsplit(".", 1)[-1].removesuffix("Sampler").lower()

    def for_trial(self, sampled: dict[str, Any] | None = None) -> StudyConfig:
        """This config with a trial's sampled values in place ("gate.gamma" -> gate.params["gamma"],
        "train.seed" -> train.seed), the seed defaulting to the study's, and an E_perm given as a
        fraction of the epochs turned into epochs: int(fraction * max_epochs), at least 1."""
        sections: dict[str, dict[str, Any]] = {"train": {}, "local_search": {}, "gate": {}}
        for name, value in (sampled or {}).items():
            section, key = name.split(".", 1)
            sections[section][key] = list(value) if isinstance(value, tuple) else value
        train = dataclasses.replace(self.train, **sections["train"])
        if train.seed is None:
            train = dataclasses.replace(train, seed=self.seed)
        ls = dataclasses.replace(self.local_search, **sections["local_search"])
        if ls.e_perm_fraction is not None:
            ls = dataclasses.replace(ls, e_perm=max(1, int(ls.e_perm_fraction * train.max_epochs)))
        gate = dataclasses.replace(self.gate, params={**self.gate.params, **sections["gate"]})
        return dataclasses.replace(self, train=train, local_search=ls, gate=gate)


def check_study(config: StudyConfig) -> None:
    """The checks that span fields (each field's own range is checked by its type)."""
    trial = config.for_trial()
    model, gate, ls, train = trial.model, trial.gate, trial.local_search, trial.train
    _require(
        gate.k <= model.n_experts,
        f"gate.k must be between 1 and model.n_experts={model.n_experts} (got k={gate.k})",
    )
    _require(
        not ls.enabled or model.n_experts >= 2,
        f"local_search={ls.name} needs at least 2 experts (model.n_experts={model.n_experts} has nothing to "
        "permute or mix); use local_search=off",
    )
    _require(
        not ls.enabled or ls.e_perm <= train.max_epochs,
        f"local_search.e_perm={ls.e_perm} exceeds train.max_epochs={train.max_epochs}; "
        "lower e_perm or raise max_epochs",
    )
    scheduler = config.scheduler
    _require(
        not scheduler.enabled or scheduler.min_resource < train.max_epochs,
        f"scheduler.min_resource={scheduler.min_resource} must be below train.max_epochs={train.max_epochs} "
        "(no trial could be stopped); lower it or use scheduler=none",
    )
    _require(
        not scheduler.enabled or scheduler.max_resource is None or scheduler.max_resource <= train.max_epochs,
        f"scheduler.max_resource={scheduler.max_resource} exceeds train.max_epochs={train.max_epochs}; "
        "lower it or set it to null",
    )


def check_tasks(config: StudyConfig, n_tasks: int) -> None:
    """The one check that needs the dataset: one task weight per task."""
    weights = config.train.task_weights
    _require(
        weights is None or len(weights) == n_tasks,
        f"train.task_weights must be {n_tasks} non-negative numbers (got {weights})",
    )
