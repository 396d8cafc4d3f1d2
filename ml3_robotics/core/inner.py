"""Functional, differentiable inner loops: K steps of SGD or Adam on a dict of parameters.

Gradients come from :func:`torch.func.grad` by default, so the same code runs plainly, under
:func:`torch.func.vmap` (a batch of tasks), and inside an outer ``torch.autograd`` computation
(the meta-gradient flows through every inner step, like ``create_graph=True``). Callers that
batch problems themselves (the policy search) pass ``gradients="autograd"``:
``torch.autograd.grad(create_graph=True)`` gives the same meta-gradient for about 0.8x the CPU
(``benchmarks/bench_reacher.py``), but does not run under vmap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value

from ml3_robotics.core.validation import check_choice

Params = dict[str, Tensor]
INNER_METHODS = ("sgd", "adam")
GRADIENTS = ("func", "autograd")


@dataclass(frozen=True)
class InnerOptimizer:
    """An inner-loop optimizer, matching ``torch.optim.SGD`` / ``torch.optim.Adam`` defaults.

    Attributes:
        method: ``"sgd"`` or ``"adam"``.
        lr: step size.
        steps: number of inner steps K (>= 1).
        betas: Adam's moment decay rates.
        eps: Adam's denominator offset.
        step_scales: optional per-step multipliers of ``lr``, a 1-D tensor: step k uses
            ``lr * step_scales[min(k, len - 1)]`` (the last one holds past its end). It may
            require grad: a meta-learned step-size schedule (:class:`StepSizeSchedule`).
    """

    method: str = "sgd"
    lr: float = 1e-3
    steps: int = 1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    step_scales: Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_choice("method", self.method, INNER_METHODS)
        if not self.lr > 0:
            raise ValueError(f"lr: expected a positive step size, got {self.lr}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps: expected an int >= 1, got {self.steps!r}")
        b1, b2 = self.betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas: expected values in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ValueError(f"eps: expected a positive number, got {self.eps}")
        scales = self.step_scales
        if scales is not None and (
            not isinstance(scales, Tensor) or scales.ndim != 1 or scales.numel() == 0
        ):
            raise ValueError(
                "step_scales: expected a non-empty 1-D tensor (one multiplier per step), got "
                f"{scales if not isinstance(scales, Tensor) else tuple(scales.shape)!r}"
            )

    def lr_at(self, k: int, tracked: bool = True) -> float | Tensor:
        """The step size of step ``k`` (a tensor when ``step_scales`` are given; detached when
        the step is not ``tracked`` by a meta-gradient)."""
        if self.step_scales is None:
            return self.lr
        scale = self.step_scales[min(k, self.step_scales.numel() - 1)]
        return self.lr * (scale if tracked else scale.detach())


class StepSizeSchedule(nn.Module):
    """Meta-learned per-step multipliers of an inner optimizer's step size (the learned-optimizer
    baseline of a learned loss: the loss stays the task loss, the steps' sizes are learned).

    Attributes:
        log_scales: ``(K,)`` log multipliers, starting at 0 (the base step size).
    """

    def __init__(self, steps: int) -> None:
        super().__init__()
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
        self.log_scales = nn.Parameter(torch.zeros(steps))

    def scales(self) -> Tensor:
        return self.log_scales.exp()

    def optimizer(self, base: InnerOptimizer) -> InnerOptimizer:
        """``base`` with this schedule's multipliers (differentiable w.r.t. them)."""
        return replace(base, step_scales=self.scales())


def _safe_sqrt(v: Tensor) -> Tensor:
    # sqrt has an infinite derivative at 0; where v == 0 the Adam update is exactly 0 anyway
    # (m == 0 too), so route those entries around sqrt to keep meta-gradients finite.
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, torch.ones_like(v))), 0.0)


def _gradient_fn(
    objective: Callable[[Params], Tensor], gradients: str
) -> Callable[[Params, bool], tuple[Params, Tensor]]:
    """``(params, create_graph) -> (grads, loss)`` of ``objective``, built once per inner run."""
    if gradients == "func":
        func_grad = grad_and_value(objective)
        return lambda params, _create_graph: func_grad(params)

    def autograd_grad(params: Params, create_graph: bool) -> tuple[Params, Tensor]:
        # A parameter that needs no gradient yet (a fresh draw) becomes a leaf that gets one;
        # one that has a graph (an earlier step, a meta-learned initialisation) keeps it.
        leaves = {
            n: v if v.requires_grad else v.detach().requires_grad_(True) for n, v in params.items()
        }
        with torch.enable_grad():
            loss = objective(leaves)
            grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph)
        return dict(zip(leaves, grads, strict=True)), loss

    return autograd_grad


def adapt(
    objective: Callable[[Params], Tensor],
    params: Mapping[str, Tensor],
    optimizer: InnerOptimizer,
    *,
    steps: int | None = None,
    differentiable: bool = True,
    differentiable_steps: int | None = None,
    gradients: str = "func",
    on_step: Callable[[int, Params, Tensor], None] | None = None,
) -> Params:
    """Run K inner optimisation steps of ``objective`` starting from ``params``.

    Args:
        objective: maps a parameter dict to a scalar loss (e.g. the learned loss of a model's
            predictions). It may close over tensors that require grad (M_phi's parameters):
            the returned parameters stay differentiable with respect to them.
        params: initial parameters (name -> tensor); not modified.
        optimizer: the inner optimizer; ``optimizer.steps`` is K unless ``steps`` overrides it.
        steps: optional override of K.
        differentiable: if False, every step is detached (plain training, e.g. at meta-test);
            the arithmetic is identical.
        differentiable_steps: the meta-gradient flows through only the last this many steps
            (a truncated meta-gradient): the parameters before them are detached, the steps
            cost no graph. None: all steps.
        gradients: ``"func"`` (:func:`torch.func.grad_and_value`, vmap-safe) or ``"autograd"``
            (:func:`torch.autograd.grad`, the same numbers, cheaper, not under vmap).
        on_step: optional callback ``(k, params_before_step, loss_before_step)``.

    Returns:
        The adapted parameters after K steps.
    """
    k_steps = optimizer.steps if steps is None else steps
    if k_steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {k_steps}")
    check_choice("gradients", gradients, GRADIENTS)
    if differentiable_steps is not None and (
        isinstance(differentiable_steps, bool)
        or not isinstance(differentiable_steps, int)
        or differentiable_steps < 1
    ):
        raise ValueError(
            f"differentiable_steps: expected an int >= 1, got {differentiable_steps!r}"
        )
    grad_fn = _gradient_fn(objective, gradients)
    first_tracked = 0 if differentiable_steps is None else max(0, k_steps - differentiable_steps)
    current: Params = dict(params)
    if not differentiable or first_tracked > 0:
        current = {k: v.detach() for k, v in current.items()}
    exp_avg: Params = {k: torch.zeros_like(v) for k, v in current.items()}
    exp_avg_sq: Params = {k: torch.zeros_like(v) for k, v in current.items()}
    b1, b2 = optimizer.betas
    for k in range(k_steps):
        tracked = differentiable and k >= first_tracked
        grads, loss = grad_fn(current, tracked)
        if not tracked:
            grads = {n: g.detach() for n, g in grads.items()}
            loss = loss.detach()
        if on_step is not None:
            on_step(k, current, loss)
        lr = optimizer.lr_at(k, tracked)
        if optimizer.method == "sgd":
            current = {n: p - lr * grads[n] for n, p in current.items()}
            continue
        # Adam, written as torch.optim.Adam computes it (same operation order, so the plain
        # run equals torch.optim's to rounding).
        t = k + 1
        bias_correction1 = 1 - b1**t
        bias_correction2_sqrt = (1 - b2**t) ** 0.5
        step_size = lr / bias_correction1
        updated: Params = {}
        for n, p in current.items():
            g = grads[n]
            exp_avg[n] = exp_avg[n] * b1 + g * (1 - b1)
            exp_avg_sq[n] = exp_avg_sq[n] * b2 + g * g * (1 - b2)
            denom = _safe_sqrt(exp_avg_sq[n]) / bias_correction2_sqrt + optimizer.eps
            updated[n] = p - step_size * (exp_avg[n] / denom)
        current = updated
    return current


def module_params(module: nn.Module) -> Params:
    """The module's parameters as a plain dict (the starting point of an inner loop)."""
    return dict(module.named_parameters())


def call(module: nn.Module, params: Mapping[str, Tensor], *args: Tensor) -> Tensor:
    """Evaluate ``module`` with ``params`` substituted (torch.func.functional_call)."""
    return functional_call(module, dict(params), args)


def stack_params(param_dicts: list[Params]) -> Params:
    """Stack per-task parameter dicts along a new leading axis (for vmap over tasks)."""
    if not param_dicts:
        raise ValueError("param_dicts: expected at least one parameter dict, got none")
    return {k: torch.stack([p[k] for p in param_dicts]) for k in param_dicts[0]}


def stacked_copies(module: nn.Module, n: int, *, differentiable: bool = False) -> Params:
    """``n`` copies of ``module``'s parameters stacked on a new leading axis (one problem's
    start each). Plain: detached, independent tensors. ``differentiable``: views that keep the
    graph to ``module``'s parameters, so a meta-gradient reaches the shared start (MAML)."""
    if differentiable:
        return {k: v.expand(n, *v.shape) for k, v in module.named_parameters()}
    return {k: v.detach().expand(n, *v.shape).clone() for k, v in module.named_parameters()}


def init_params(
    policy: nn.Module,
    n: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    *,
    zero_output_layer: bool = False,
) -> Params:
    """``n`` independent initialisations of ``policy``'s parameters, stacked on axis 0 (the
    one initialiser of per-problem functional policies built from ``nn.Module`` s).

    Same distribution as ``nn.Linear``'s default (uniform within ``1/sqrt(fan_in)``), drawn from
    ``generator`` so that a seed fixes every fresh policy.

    Args:
        zero_output_layer: start the last linear layer at zero, so every fresh policy commands
            zero torque (the arm rests) while its hidden features stay random; the random draw
            is made anyway, so the hidden layers are the same either way.
    """
    out: Params = {}
    fan_in: dict[str, int] = {}
    for name, p in policy.named_parameters():
        if p.ndim == 2:
            fan_in[name.rsplit(".", 1)[0]] = p.shape[1]
    layers = list(dict.fromkeys(name.rsplit(".", 1)[0] for name, _ in policy.named_parameters()))
    for name, p in policy.named_parameters():
        layer = name.rsplit(".", 1)[0]
        bound = 1.0 / math.sqrt(fan_in[layer])
        u = torch.rand((n, *p.shape), generator=generator, dtype=torch.float64)
        value = ((2 * u - 1) * bound).to(dtype)
        out[name] = torch.zeros_like(value) if zero_output_layer and layer == layers[-1] else value
    return out
