"""A study's Optuna sampler (chosen by config, Hydra ``_target_``), driven by ask and tell.

Trial n's setting is drawn by the sampler seeded with ``sampler_seed(study seed, n)`` over the trials told
so far: with a random sampler it depends on the seed and n only, whether the study ran alone, beside
other studies, or was resumed after a kill; a model-based sampler (TPE) also sees the finished trials,
which a resumed study rebuilds from its ledger.

A trial the study's scheduler stopped at a rung is told as PRUNED with its per-epoch values, never as
COMPLETE with its low-fidelity best: TPE ranks pruned trials after complete ones, by how far they got and
their last value (``optuna.samplers.TPESampler``), as Optuna's own pruning would have them."""

from __future__ import annotations

import math
from typing import Any

import optuna
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from moetune.config import StudyConfig, sampler_seed
from moetune.errors import ConfigError, first_line
from moetune.tracking import LedgerEntry
from moetune.tuning.search_space import Space


def build_sampler(config: StudyConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sampler config's ``_target_`` instantiated (conf/sampler/<name>.yaml); anything else is a ConfigError."""
    overrides = {"seed": seed} if seed is not None and "seed" in config.sampler else {}
    try:
        sampler = instantiate(config.sampler, **overrides)
    except InstantiationException as exc:
        raise ConfigError(f"sampler: {first_line(exc)}; see conf/sampler/ for examples") from None
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise ConfigError(f"sampler._target_ {config.sampler.get('_target_')!r} is not an Optuna sampler")
    return sampler


def _typed(value: Any, distribution: optuna.distributions.BaseDistribution) -> Any:
    """A sampled value back from JSON: categorical tuples came back as lists."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution) and isinstance(value, list):
        return tuple(value)
    return value


class StudySampler:
    """One study's sampler state: an in-memory Optuna study told every ended trial."""

    def __init__(self, config: StudyConfig, space: Space):
        self.config, self.space = config, space
        self.study = optuna.create_study(direction=config.tuner.direction, sampler=build_sampler(config))
        self.asked: dict[int, optuna.trial.Trial] = {}

    @property
    def selection(self) -> str:
        return self.config.tuner.selection

    def replay(self, ledger: list[LedgerEntry]) -> None:
        """Tell the sampler the trials a ledger holds (a resumed study), oldest first."""
        for entry in ledger:
            try:
                params = {k: _typed(entry.sampled[k], d) for k, d in self.space.items()}
                value = entry.metrics.get(self.selection)
                ok = entry.status == "FINISHED" and value is not None and math.isfinite(value)
                state = optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL
                if ok and entry.stopped:
                    state, value = optuna.trial.TrialState.PRUNED, None
                self.study.add_trial(
                    optuna.trial.create_trial(
                        params=params,
                        distributions=self.space,
                        value=value if ok else None,
                        state=state,
                        intermediate_values=entry.epochs if entry.stopped else None,
                    )
                )
            except (KeyError, ValueError):
                continue  # recorded under another search space: not history for this one

    def ask(self, number: int) -> dict[str, Any]:
        self.study.sampler = build_sampler(self.config, sampler_seed(self.config.seed, number))
        trial = self.study.ask(self.space)
        self.asked[number] = trial
        return dict(trial.params)

    def tell(self, number: int, value: float | None, stopped_epochs: dict[int, float] | None = None) -> None:
        """A FINISHED trial's selection value; None (a failure) is told as a failed trial; a trial stopped at
        a rung (``stopped_epochs``: its per-epoch values of tuner.metric) is told as PRUNED."""
        trial = self.asked.pop(number, None)
        if trial is None:
            return
        if stopped_epochs is not None and value is not None:
            for epoch, epoch_value in sorted(stopped_epochs.items()):
                if math.isfinite(epoch_value):
                    trial.report(epoch_value, epoch)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        elif value is not None and math.isfinite(value):
            self.study.tell(trial, value)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
