"""Policies: shapes, bounds, functional_call/vmap compatibility, differentiable rollouts."""

from __future__ import annotations

import pytest
import torch
from ctrl_models import Pendulum
from torch.func import functional_call, grad, vmap

from controllers import MLPPolicy, OpenLoopPolicy, rollout


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_mlp_shapes_and_bounds(depth: int) -> None:
    torch.manual_seed(0)
    pol = MLPPolicy(3, 2, depth=depth, width=16, activation="relu", action_bound=[0.5, 2.0])
    x = 100 * torch.randn(50, 3)
    u = pol(x)
    assert u.shape == (50, 2)
    assert (u[:, 0].abs() <= 0.5).all() and (u[:, 1].abs() <= 2.0).all()
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in pol.modules())
    assert n_linear == depth + 1


def test_mlp_depth0_is_affine() -> None:
    pol = MLPPolicy(3, 2, depth=0)
    x = torch.randn(4, 3)
    lin = pol.net[0]
    torch.testing.assert_close(pol(x), x @ lin.weight.T + lin.bias)


def test_functional_call_gradients_and_vmap_over_parameters() -> None:
    torch.manual_seed(0)
    pol = MLPPolicy(2, 1, depth=2, width=8, action_bound=1.0).double()
    params = {k: v.detach() for k, v in pol.named_parameters()}
    x0 = torch.tensor([[0.3, 0.0]], dtype=torch.float64)
    dyn = Pendulum()

    def loss(p):
        X, _ = rollout(lambda x, t: functional_call(pol, p, (x, t)), dyn.step, x0, 5)
        return (X[:, -1] ** 2).sum()

    g = grad(loss)(params)
    assert set(g) == set(params) and all(torch.isfinite(v).all() for v in g.values())
    # matches autograd on the module itself
    pol.zero_grad()
    X, _ = rollout(pol, dyn.step, x0, 5)
    (X[:, -1] ** 2).sum().backward()
    for k, p in pol.named_parameters():
        torch.testing.assert_close(g[k], p.grad)
    # vmap over a batch of parameter sets (as in a meta-learning inner loop)
    stacked = {k: torch.stack([v, 2 * v]) for k, v in params.items()}
    out = vmap(lambda p: functional_call(pol, p, (x0,)))(stacked)
    assert out.shape == (2, 1, 1)


def test_open_loop_policy() -> None:
    init = torch.tensor([[0.1], [-0.2], [0.24]])
    pol = OpenLoopPolicy(3, 1, bound=0.25, init=init).double()
    torch.testing.assert_close(pol.actions(), init.double())
    x = torch.zeros(4, 2, dtype=torch.float64)
    assert pol(x, 2).shape == (4, 1)
    with pytest.raises(ValueError, match="init"):
        OpenLoopPolicy(3, 1, bound=0.25, init=torch.ones(3, 1))
    with pytest.raises(ValueError, match="t: expected"):
        pol(x, 3)
    batched = OpenLoopPolicy(3, 1, bound=0.25, batch=4)
    assert batched(x.float(), 0).shape == (4, 1)
    # gradient reaches the sequence through a rollout
    X, _U = rollout(pol, Pendulum().step, x, 3)
    X[:, -1, 0].sum().backward()
    assert pol.theta.grad is not None and pol.theta.grad.abs().sum() > 0


def test_policy_bad_input() -> None:
    with pytest.raises(ValueError, match="did you mean 'relu'"):
        MLPPolicy(2, 1, activation="rleu")
    with pytest.raises(ValueError, match="depth"):
        MLPPolicy(2, 1, depth=-1)
    with pytest.raises(ValueError, match="action_bound"):
        MLPPolicy(2, 1, action_bound=-1.0)
