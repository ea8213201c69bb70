"""Synthetic multi-task data from a random sparse-MoE teacher with known experts and known routing.

Each sample has a categorical id (like a MovieLens user) and dense features. Every id is routed, by the
teacher, to one of `n_teacher_experts` random MLP experts; that expert maps the features to two scores.
Task "click" is binary (Bernoulli of the first score); task "rating" is a regression on the second
score, masked where click == 0, as MovieLens masks ratings of unwatched movies. `relatedness` in [0, 1]
is the correlation between the two tasks' scores. The teacher's routing is kept in `truth`, so a
trained gate's recovery of it can be measured.
"""

from __future__ import annotations

import math

import torch

from moetune.data.base import MultiTaskData, Split, Task, split_indices
from moetune.errors import ConfigError


def load(
    n_samples: int = 20000,
    n_features: int = 16,
    n_ids: int = 200,
    n_teacher_experts: int = 4,
    teacher_hidden: int = 32,
    noise: float = 0.3,
    relatedness: float = 0.5,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> MultiTaskData:
    for key, value in (
        ("n_samples", n_samples),
        ("n_features", n_features),
        ("n_ids", n_ids),
        ("n_teacher_experts", n_teacher_experts),
        ("teacher_hidden", teacher_hidden),
    ):
        if value < 1:
            raise ConfigError(f"dataset.{key} must be positive (got {value})")
    if n_samples < 30:
        raise ConfigError(f"dataset.n_samples must be at least 30 to fill three splits (got {n_samples})")
    if noise < 0 or not 0.0 <= relatedness <= 1.0:
        raise ConfigError(f"dataset.noise must be >= 0 and dataset.relatedness in [0, 1] (got {noise}, {relatedness})")
    try:
        train_idx, val_idx, test_idx = split_indices(n_samples, tuple(fractions), seed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"dataset.fractions: {exc}") from exc
    if min(len(train_idx), len(val_idx), len(test_idx)) == 0:
        raise ConfigError(f"dataset.fractions {list(fractions)} leave a split of {n_samples} samples empty")
    g = torch.Generator().manual_seed(seed)
    # the routing is not the generator's first draw: a hash gate's table is exactly that draw
    # (torch.randint from a generator seeded alike), and would otherwise equal the teacher's routing
    w1 = torch.randn(n_teacher_experts, n_features, teacher_hidden, generator=g) / math.sqrt(n_features)
    w2 = torch.randn(n_teacher_experts, teacher_hidden, 2, generator=g) / math.sqrt(teacher_hidden)
    id_bias = 0.3 * torch.randn(n_ids, generator=g)
    id_to_expert = torch.randint(0, n_teacher_experts, (n_ids,), generator=g)

    ids = torch.randint(0, n_ids, (n_samples,), generator=g)
    x = torch.randn(n_samples, n_features, generator=g)
    expert = id_to_expert[ids]
    hidden = torch.relu(torch.einsum("nd,ndh->nh", x, w1[expert]))
    scores = torch.einsum("nh,nho->no", hidden, w2[expert])
    scores = (scores - scores.mean(0)) / scores.std(0).clamp_min(1e-6)
    # the teacher's two scores are correlated; take out the first from the second so that the
    # correlation of the tasks' scores is exactly `relatedness`
    own = scores[:, 1] - (scores[:, 0] @ scores[:, 1]) / (scores[:, 0] @ scores[:, 0]).clamp_min(1e-6) * scores[:, 0]
    own = (own - own.mean()) / own.std().clamp_min(1e-6)
    s_click = scores[:, 0] + id_bias[ids]
    s_rating = relatedness * scores[:, 0] + math.sqrt(1 - relatedness**2) * own
    click = torch.bernoulli(torch.sigmoid(2.0 * s_click + noise * torch.randn(n_samples, generator=g)), generator=g)
    rating = s_rating + noise * torch.randn(n_samples, generator=g)
    targets = torch.stack([click, rating * click], dim=1)
    masks = torch.stack([torch.ones_like(click, dtype=torch.bool), click.bool()], dim=1)

    full = Split(inputs={"ids": ids.unsqueeze(1), "dense": x}, targets=targets, masks=masks, routing_ids=ids)
    return MultiTaskData(
        name="synthetic",
        tasks=[Task("click", "binary"), Task("rating", "regression")],
        train=full.index(train_idx),
        val=full.index(val_idx),
        test=full.index(test_idx),
        id_cardinalities=[n_ids],
        n_routing_ids=n_ids,
        truth={
            "id_to_expert": id_to_expert.tolist(),
            **{
                f"{name}_expert": expert[idx].tolist()
                for name, idx in (("train", train_idx), ("val", val_idx), ("test", test_idx))
            },
        },
    )
