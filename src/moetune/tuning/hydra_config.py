"""Hydra's side of a study: the config schema it composes YAML over, and its one conversion into a
validated ``StudyConfig`` (plus the study's Optuna search space) on the driver."""

from __future__ import annotations

from typing import NamedTuple

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moetune.config import StudyConfig, check_study, study_key
from moetune.errors import ConfigError, first_line
from moetune.tuning.search_space import Space, study_space, with_fixed_gate_params

SCHEMA = "moetune_schema"  # conf/config.yaml composes its YAML over this (first in its defaults list)

# every key and its default, untyped: Hydra composes and overrides over it, and ``load_study`` checks the
# types, so a bad value gets moetune's one-line error (exit 2) rather than Hydra's report
ConfigStore.instance().store(name=SCHEMA, node=OmegaConf.to_container(OmegaConf.structured(StudyConfig)))
# Hydra names each study's folder with the study's key: ${study_key:${gate.name},...} in conf/config.yaml
if not OmegaConf.has_resolver("study_key"):
    OmegaConf.register_new_resolver("study_key", study_key)


class Study(NamedTuple):
    config: StudyConfig
    space: Space


def load_study(cfg: DictConfig) -> Study:
    """Validate a composed Hydra config once; raises ConfigError with one line naming the key and the fix."""
    try:
        # resolve in Hydra's own config first: its resolver cache holds the multirun's ${now:...},
        # so every job of a multirun gets the same sweep name (a merged copy would re-resolve it)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StudyConfig), resolved))
    except OmegaConfBaseException as exc:
        first = first_line(exc)
        key = getattr(exc, "full_key", None)
        raise ConfigError(f"config {key}: {first}" if key else f"config: {first}") from None
    assert isinstance(config, StudyConfig)
    config = with_fixed_gate_params(config)
    check_study(config)  # the task weights' length is checked against the dataset once it is loaded
    return Study(config, study_space(config))
