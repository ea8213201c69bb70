"""Tuning: Hydra's config -> studies of Ray Tune trials sampled by Optuna, recorded by moetune.tracking.

On the driver: hydra_config (schema, one validated config per job), search_space, searcher (a study's
Optuna sampler), planning (a sweep checked before anything starts), driver (one Tune run for every
study), callback (Tune's hooks into the driver), ray_runtime, progress, signals. In a worker: ``trial``
(and weights), which import none of Hydra, Optuna or the tracking interface.
"""
