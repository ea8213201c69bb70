"""The study protocol as the authors ran it: seeds per trial, task weights per study, local search and its
control arm, gate initializations and regularizers, presets, search-space rules."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from moetune.config import (
    LOCAL_SEARCH_ARMS,
    GateConfig,
    LocalSearchConfig,
    ModelConfig,
    TrainConfig,
    study_key,
    trial_seed,
)
from moetune.data import available_datasets
from moetune.errors import ConfigError
from moetune.moe import MMoE
from moetune.moe.gates import build_gate
from moetune.moe.gates.base import entropy
from moetune.moe.local_search import PermutationLocalSearch, UniformMixingWarmup
from moetune.training import Trainer
from moetune.tuning.hydra_config import load_study
from moetune.tuning.search_space import build_search_space
from moetune.tuning.searcher import build_sampler

from conftest import REPO, tabular_data

CONF = REPO / "conf"


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


# ---------------------------------------------------------------- presets and dataset configs

PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("gate", ["topk", "comet"])
@pytest.mark.parametrize("local_search", ["on", "off", "frozen", "warmup"])
def test_every_preset_composes_and_validates(preset, gate, local_search):
    space = load_study(composed(f"experiment={preset}", f"gate={gate}", f"local_search={local_search}")).space
    assert space["train.lr"]
    # a dose-response preset fixes the phase length per sweep (its study setting); the others search it
    searched = local_search != "off" and not preset.startswith("dose_")
    assert ("local_search.e_perm" in space or "local_search.e_perm_fraction" in space) == searched
    assert "train.task_weights" not in space


def test_hash_composes_with_the_movielens_presets():
    for preset in ("movielens_cpu", "paper_movielens"):
        study = load_study(composed(f"experiment={preset}", "gate=hash", "local_search=on"))
        assert study.config.gate.k == 1


@pytest.mark.parametrize("path", sorted((CONF / "dataset").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_dataset_config_names_its_own_dataset(path):
    name = yaml.safe_load(path.read_text())["name"]
    assert name == path.stem and name in available_datasets()


def test_paper_movielens_matches_the_authors_configs():
    p, space = load_study(composed("experiment=paper_movielens", "gate=comet", "local_search=on"))
    assert p.train.batch_size == 512 and p.train.max_epochs == 100 and p.train.patience == 25
    assert p.train.task_weights == [0.1, 0.9] and p.tuner.n_trials == 500 and p.sampler_name == "random"
    assert (space["train.lr"].low, space["train.lr"].high, space["train.lr"].log) == (5e-5, 5e-4, True)
    assert p.local_search.noise == 0.0 and p.local_search.zeta == 1e-4
    fraction = space["local_search.e_perm_fraction"]
    assert (fraction.low, fraction.high, fraction.log) == (0.01, 0.1, True)
    assert "gate.gamma" not in space and p.gate.params["gamma"] == 10.0  # COMET+ fixes gamma = 10
    assert space["gate.entropy_weight"].choices == (0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
    off = load_study(composed("experiment=paper_movielens", "gate=comet", "local_search=off")).space
    assert off["gate.gamma"].choices == (0.01, 0.1, 1.0, 5.0, 10.0)  # COMET without local search searches gamma


# ---------------------------------------------------------------- sweep name, study key, task weights


def test_study_key_names_a_scheduler_but_not_none():
    # unscheduled keys are unchanged, so committed stores resume; a multirun can sweep scheduler=asha,none
    assert study_key("topk", "on", "synthetic", 0, None, "none") == "topk-ls_on-synthetic-seed0"
    assert study_key("topk", "on", "synthetic", 0, None, "asha") == "topk-ls_on-synthetic-asha-seed0"
    asha = load_study(composed("scheduler=asha")).config
    assert asha.study_key == "topk-ls_off-synthetic-asha-seed0"
    assert load_study(composed("scheduler=none")).config.study_key == "topk-ls_off-synthetic-seed0"


def test_study_key_carries_the_task_weighting():
    assert study_key("topk", "on", "movielens", 0) == "topk-ls_on-movielens-seed0"
    assert study_key("topk", "on", "movielens", 0, [0.1, 0.9]) == "topk-ls_on-movielens-tw0.1_0.9-seed0"
    a = load_study(composed("experiment=paper_movielens", "train.task_weights=[0.1,0.9]")).config
    b = load_study(composed("experiment=paper_movielens", "train.task_weights=[0.9,0.1]")).config
    assert a.study_key != b.study_key


def test_task_weights_are_not_a_hyperparameter():
    with pytest.raises(ConfigError, match=r"train.task_weights: a study setting.*sweep it instead"):
        build_search_space(
            {"train": {"task_weights": {"type": "categorical", "choices": [[0.1, 0.9], [0.9, 0.1]]}}}, "topk", False
        )


def test_train_seed_is_not_a_hyperparameter():
    with pytest.raises(ConfigError, match="train.seed: a study setting"):
        build_search_space({"train": {"seed": {"type": "int", "low": 0, "high": 9}}}, "topk", False)


def test_a_null_entry_is_not_searched():
    space = build_search_space(
        {
            "train": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
            "local_search": {"e_perm": None, "e_perm_fraction": {"type": "loguniform", "low": 0.01, "high": 0.1}},
        },
        "topk",
        True,
    )
    assert set(space) == {"train.lr", "local_search.e_perm_fraction"}


def test_searching_both_e_perm_forms_is_refused():
    both = {
        "local_search": {
            "e_perm": {"type": "int", "low": 1, "high": 3},
            "e_perm_fraction": {"type": "uniform", "low": 0.01, "high": 0.1},
        }
    }
    with pytest.raises(ConfigError, match="not both"):
        build_search_space(both, "topk", True)


# ---------------------------------------------------------------- seeds per trial


def test_trial_seeds_differ_per_trial_and_repeat_per_study_seed():
    seeds = [trial_seed(0, n) for n in range(200)]
    assert len(set(seeds)) == 200 and all(0 <= s < 2**32 for s in seeds)
    assert seeds == [trial_seed(0, n) for n in range(200)]
    assert trial_seed(1, 0) != trial_seed(0, 0)


def test_train_seed_defaults_to_the_study_seed_and_a_trial_seed_wins():
    config = load_study(composed("seed=7")).config
    assert config.train.seed is None and config.for_trial().train.seed == 7
    assert config.for_trial({"train.seed": 12345}).train.seed == 12345


def test_different_trial_seeds_give_different_initial_weights_and_a_seed_reproduces_its_run():
    data = tabular_data()
    cfg = (
        ModelConfig(n_experts=4, expert_hidden=[8], embed_dim=4, dense_hidden=[], head_hidden=[8]),
        GateConfig("topk", 2),
        LocalSearchConfig(name="on", e_perm=1),
    )
    runs = [Trainer(data, *cfg, TrainConfig(lr=1e-2, max_epochs=2, seed=s, batch_size=16)) for s in (11, 12, 11)]
    assert runs[0].init_digest != runs[1].init_digest and runs[0].init_digest == runs[2].init_digest
    results = [r.fit() for r in runs]
    assert results[0].test == results[2].test and results[0].test != results[1].test
    assert results[0].diagnostics["init_digest"] == runs[0].init_digest


# ---------------------------------------------------------------- local search and its control arm


def test_e_perm_fraction_is_truncated_like_the_authors_code_and_at_least_one():
    config = load_study(
        composed(
            "local_search=on",
            "train.max_epochs=100",
            "local_search.e_perm_fraction=0.037",
            "~search_space.local_search.e_perm",
        )
    ).config
    assert config.for_trial().local_search.e_perm == 3  # int(0.037 * 100)
    assert config.for_trial({"local_search.e_perm_fraction": 0.01, "train.max_epochs": 12}).local_search.e_perm == 1
    # int(0.12) = 0 would skip the search


def test_local_search_defaults_to_no_gumbel_noise():
    ls = PermutationLocalSearch(6, e_perm=1)
    assert ls.noise == 0.0
    ls.train()
    first, _ = ls.matrix()
    second, _ = ls.matrix()
    assert torch.equal(first, second)  # deterministic without noise


def test_permutation_entropy_counts_the_matrix_and_its_row_normalization():
    ls = PermutationLocalSearch(5, e_perm=1, zeta=1.0)
    ls.train()
    soft, penalty = ls.matrix()
    rows = soft / soft.sum(-1, keepdim=True)
    assert penalty.item() == pytest.approx((entropy(soft).sum() + entropy(rows).sum()).item(), rel=1e-6)


def test_warmup_mixes_uniformly_then_runs_unmixed():
    warm = UniformMixingWarmup(4, e_perm=2)
    warm.train()
    matrix, penalty = warm.matrix()
    assert torch.allclose(matrix, torch.full((4, 4), 0.25)) and penalty.item() == 0.0
    gates = torch.tensor([[1.0, 0, 0, 0], [0, 0.3, 0.7, 0]])
    mixed = PermutationLocalSearch.apply(gates, matrix)
    assert torch.allclose(mixed, torch.full((2, 4), 0.25))
    warm.eval()
    assert torch.equal(warm.matrix()[0], torch.eye(4))  # evaluation is unmixed, as local search evaluates hard
    warm.train()
    warm.freeze()
    assert torch.equal(warm.matrix()[0], torch.eye(4)) and warm.permutation() == [0, 1, 2, 3]
    assert not list(warm.parameters())  # nothing is learned


def test_warmup_arm_trains_every_expert_during_its_epochs_and_routes_sparsely_after():
    data = tabular_data()
    model_cfg = ModelConfig(n_experts=4, expert_hidden=[8], embed_dim=4, dense_hidden=[], head_hidden=[8])
    trainer = Trainer(
        data,
        model_cfg,
        GateConfig("topk", 1),
        LocalSearchConfig(name="warmup", e_perm=1),
        TrainConfig(lr=1e-2, max_epochs=3, batch_size=16),
    )
    model = trainer.model
    assert isinstance(model.local_search, UniformMixingWarmup)
    model.train()
    batch = trainer.splits["train"]
    out = model(batch.inputs, batch.routing_ids)
    assert torch.allclose(out.gate_weights[0], torch.full_like(out.gate_weights[0], 0.25))
    result = trainer.fit()
    assert model.local_search.hardened and result.diagnostics["active_experts_mean"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "arm, module",
    [
        ("off", type(None)),
        ("on", PermutationLocalSearch),
        ("frozen", PermutationLocalSearch),
        ("warmup", UniformMixingWarmup),
    ],
)
def test_each_arm_config_builds_its_module_from_its_name_alone(arm, module):
    from moetune.moe.model import build_local_search

    ls = load_study(composed(f"local_search={arm}")).config.for_trial().local_search
    assert ls.name == arm and ls.enabled == (arm != "off")
    built = build_local_search(ls, 4)
    assert isinstance(built, module)
    if isinstance(built, PermutationLocalSearch):
        assert built.learn == (arm == "on") and built.log_weights.requires_grad == (arm == "on")


# ---------------------------------------------------------------- gates as the authors initialize and regularize them


@pytest.mark.parametrize("name, attr", [("comet", "node_logits"), ("dselect_k", "selector_logits")])
def test_smooth_step_logits_start_within_gamma_over_100(name, attr):
    gamma = 10.0
    gate = build_gate(name, 32, 16, k=2, gamma=gamma)
    layer = getattr(gate, attr)
    for param in (layer.weight, layer.bias):
        assert param.abs().max().item() <= gamma / 100 and param.abs().max().item() > gamma / 400


def test_comet_trees_start_near_one_half_at_every_node():
    gate = build_gate("comet", 32, 16, k=2, gamma=10.0)
    x = torch.randn(64, 32) * 0.1
    probs = gate.leaf_probabilities(x)
    assert torch.allclose(probs, torch.full_like(probs, 1 / 16), atol=0.01)


@pytest.mark.parametrize("name", ["comet", "dselect_k"])
def test_entropy_regularizer_is_summed_over_trees_or_selectors(name):
    torch.manual_seed(0)
    one = build_gate(name, 8, 8, k=1, gamma=1.0, entropy_weight=1.0)
    two = build_gate(name, 8, 8, k=2, gamma=1.0, entropy_weight=1.0)
    x = torch.zeros(16, 8)
    # at x = 0 every tree/selector sees only its biases; compare with the per-unit entropy computed directly
    if name == "comet":
        per_unit = entropy(two.leaf_probabilities(x))  # B x k
    else:
        from moetune.moe.gates.base import smooth_step

        bits = smooth_step(two.selector_logits(x).view(-1, 2, 1, two.n_bits), two.gamma)
        per_code = (two.codes * bits + (1 - two.codes) * (1 - bits)).prod(-1)
        per_unit = entropy(per_code)
    assert two(x).aux_loss.item() == pytest.approx(per_unit.sum(1).mean().item(), rel=1e-5)
    assert one(x).aux_loss.item() < two(x).aux_loss.item()


def test_topk_gate_starts_like_keras_dense():
    gate = build_gate("topk", 256, 16, k=2)
    bound = math.sqrt(6 / (256 + 16))
    assert gate.linear.bias.abs().max().item() == 0.0
    assert bound * 0.9 < gate.linear.weight.abs().max().item() <= bound


def test_embeddings_start_small_like_keras():
    model = MMoE(
        tabular_data(),
        ModelConfig(n_experts=4, expert_hidden=[8], embed_dim=8),
        GateConfig("topk", 2),
        LocalSearchConfig(),
    )
    weight = model.bottom.embeddings[0].weight
    assert weight.abs().max().item() <= 0.05


def test_config_file_for_every_local_search_arm():
    names = {yaml.safe_load(p.read_text())["name"] for p in (CONF / "local_search").glob("*.yaml")}
    assert names == set(LOCAL_SEARCH_ARMS)
    for path in (CONF / "local_search").glob("*.yaml"):
        conf = OmegaConf.load(path)
        LocalSearchConfig(**conf)  # every key is a real setting


# ---------------------------------------------------------------- the sampler, by config


@pytest.mark.parametrize("name, cls", [("random", optuna.samplers.RandomSampler), ("tpe", optuna.samplers.TPESampler)])
def test_the_sampler_is_its_config_target_seeded_by_the_study_seed(name, cls):
    config = load_study(composed(f"sampler={name}", "seed=3")).config
    assert config.sampler == {"_target_": f"optuna.samplers.{cls.__name__}", "seed": 3}
    assert isinstance(build_sampler(config), cls) and config.sampler_name == name
    draws = []
    for _ in range(2):  # the same seed draws the same first trial
        study = optuna.create_study(sampler=build_sampler(config))
        draws.append(study.ask().suggest_float("x", 0.0, 1.0))
    assert draws[0] == draws[1]
