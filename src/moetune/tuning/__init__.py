"""Tuning: Hydra's config -> one study of Ray Tune trials sampled by Optuna, recorded by moetune.tracking.

The driver modules (hydra_config, search_space, searcher, ray_runtime, callback, study) may import
Hydra, Optuna and the tracking interface; ``trial`` is what runs in a worker and imports none of them.
"""
