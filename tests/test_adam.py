"""FusedAdam takes exactly torch.optim.Adam(fused=True)'s steps: the trainer's optimizer is torch's Adam."""

from __future__ import annotations

import pytest
import torch

from moetune.training.adam import FusedAdam


def twin_parameters(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(60, 8), (8, 16, 4), (16,), ()]
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    params.append(torch.nn.Parameter(torch.randn(5, 3, generator=g, dtype=torch.float64)))  # a second dtype
    return params


@pytest.mark.parametrize("lr", [2e-4, 3e-2])
def test_every_step_equals_torch_fused_adam_to_the_bit_with_gradients_missing_in_some_steps(lr):
    ours, theirs = twin_parameters(0), twin_parameters(0)
    mine, torch_adam = FusedAdam(ours, lr=lr), torch.optim.Adam(theirs, lr=lr, fused=True)
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        mine.zero_grad()
        torch_adam.zero_grad(set_to_none=True)
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            grad = torch.randn(a.shape, generator=g, dtype=a.dtype) * (1 + step)
            if i == 1 and step % 3 == 1:  # no gradient this step: skipped, its step count too
                continue
            if i == 0:
                grad[::2] = 0.0  # an embedding's rows that no sample used: dense zeros, still updated
            a.grad, b.grad = grad.clone(), grad.clone()
        mine.step()
        torch_adam.step()
        for a, b in zip(ours, theirs, strict=True):
            assert torch.equal(a.detach(), b.detach())
    for i, b in enumerate(theirs):
        state = torch_adam.state[b]
        assert torch.equal(mine.exp_avgs[i], state["exp_avg"]) and torch.equal(mine.exp_avg_sqs[i], state["exp_avg_sq"])
        assert float(mine.steps[i]) == float(state["step"]) == (8 if i == 1 else 12)


def test_zero_grad_drops_the_gradients_and_a_step_without_any_changes_nothing():
    params = twin_parameters(2)
    adam = FusedAdam(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    adam.zero_grad()
    assert all(p.grad is None for p in params)
    before = [p.detach().clone() for p in params]
    adam.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before, strict=True))
    assert all(float(s) == 0 for s in adam.steps)
