"""The searcher of a study: Optuna's sampler (chosen by config, Hydra ``_target_``) inside Ray Tune's
OptunaSearch, every trial given its own seed, at most ``tuner.concurrency`` trials at once."""

from __future__ import annotations

import optuna
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from moetune.config import StudyConfig, trial_seed
from moetune.errors import ConfigError
from moetune.tuning.search_space import Space


def build_sampler(config: StudyConfig) -> optuna.samplers.BaseSampler:
    """The sampler config's ``_target_`` instantiated (conf/sampler/<name>.yaml); anything else is a ConfigError."""
    try:
        sampler = instantiate(config.sampler)
    except InstantiationException as exc:
        raise ConfigError(f"sampler: {str(exc).strip().splitlines()[0]}; see conf/sampler/ for examples") from None
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise ConfigError(f"sampler._target_ {config.sampler.get('_target_')!r} is not an Optuna sampler")
    return sampler


class SeededTrials(Searcher):
    """Gives every suggested trial its own seed, train.seed = trial_seed(study seed, trial number).

    The seed travels in the trial's config, so it is logged with the sampled parameters and a re-run of
    the trial with them reproduces it; the count of suggestions is saved with the searcher on resume."""

    def __init__(self, searcher: Searcher, study_seed: int):
        self.searcher, self.study_seed, self.suggested = searcher, study_seed, 0
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        config = self.searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        config = {**config, "train.seed": trial_seed(self.study_seed, self.suggested)}
        self.suggested += 1
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Ray saves a wrapper's own state (get_state) beside its base searcher's (save), and restores both
    def get_state(self) -> dict:
        return {"study_seed": self.study_seed, "suggested": self.suggested}

    def set_state(self, state: dict) -> None:
        self.study_seed, self.suggested = state["study_seed"], state["suggested"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def make_searcher(config: StudyConfig, space: Space) -> ConcurrencyLimiter:
    tuner = config.tuner
    search = OptunaSearch(space=space, metric=tuner.metric, mode=tuner.mode, sampler=build_sampler(config))
    return ConcurrencyLimiter(SeededTrials(search, config.seed), max_concurrent=tuner.concurrency)
