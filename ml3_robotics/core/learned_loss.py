"""The learned loss M_phi: one configurable network, no per-task subclasses."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ml3_robotics.core.errors import FeatureSpecError
from ml3_robotics.core.validation import check_choice, check_widths

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}
OUTPUT_ACTIVATIONS: dict[str, type[nn.Module]] = {"none": nn.Identity, "softplus": nn.Softplus}


@dataclass(frozen=True)
class FeatureSpec:
    """What a learned loss reads: the names of its input features and their normalisation.

    The network sees ``(features - shift) / scale``. The names travel with a saved loss so that
    a loss is refused by a consumer that would feed it something else.

    Attributes:
        names: one name per input feature, in input order.
        shift: per-feature offset subtracted first (default zeros).
        scale: per-feature positive divisor (default ones).
    """

    names: tuple[str, ...]
    shift: tuple[float, ...] | None = None
    scale: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(
                f"names: expected a non-empty tuple of non-empty strings, got {names!r}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"names: expected unique feature names, got {names!r}")
        for attr in ("shift", "scale"):
            value = getattr(self, attr)
            if value is None:
                continue
            value = tuple(float(v) for v in value)
            object.__setattr__(self, attr, value)
            if len(value) != len(names):
                raise ValueError(
                    f"{attr}: expected {len(names)} values (one per feature), got {len(value)}"
                )
        if self.shift is not None and not all(math.isfinite(v) for v in self.shift):
            raise ValueError(f"shift: expected finite values, got {self.shift}")
        if self.scale is not None and any(not 0 < s < math.inf for s in self.scale):
            raise ValueError(f"scale: expected finite positive values, got {self.scale}")

    @property
    def size(self) -> int:
        return len(self.names)

    def require(self, names: Sequence[str]) -> None:
        """Raise :class:`FeatureSpecError` unless a consumer's features are exactly ours."""
        names = tuple(names)
        if names == self.names:
            return
        missing = [n for n in self.names if n not in names]
        extra = [n for n in names if n not in self.names]
        detail = []
        if missing:
            detail.append(f"needs {missing} which the consumer does not provide")
        if extra:
            detail.append(f"was not trained on {extra}")
        if not detail:
            detail.append(f"expects the order {list(self.names)}, got {list(names)}")
        raise FeatureSpecError("learned loss does not fit: it " + "; it ".join(detail))


@dataclass(frozen=True)
class LossConfig:
    """Architecture of a learned loss.

    Attributes:
        features: what the loss reads (see :class:`FeatureSpec`).
        hidden: widths of the hidden layers.
        activation: hidden activation, one of :data:`ACTIVATIONS`.
        output_activation: ``"softplus"`` (non-negative loss) or ``"none"``.
        bias: whether the linear layers carry biases.
        bias_init: constant the biases start at (the paper's shaped-sine loss uses 0.01).
        learn_scale: multiply the output by a meta-learned positive scale ``exp(log_scale)``.
            The inner loop takes plain gradient steps of a fixed size on the loss, so the size
            of its gradients is the effective step size; a single scalar lets meta-training
            set it directly instead of growing every weight of the network.
        init_scale: the scale's starting value (``learn_scale`` only).
    """

    features: FeatureSpec
    hidden: tuple[int, ...] = (50, 50)
    activation: str = "relu"
    output_activation: str = "softplus"
    bias: bool = True
    bias_init: float = 0.0
    learn_scale: bool = False
    init_scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.features, FeatureSpec):
            raise TypeError(f"features: expected a FeatureSpec, got {type(self.features).__name__}")
        hidden = tuple(self.hidden)
        object.__setattr__(self, "hidden", hidden)
        check_widths("hidden", hidden)
        check_choice("activation", self.activation, list(ACTIVATIONS))
        check_choice("output_activation", self.output_activation, list(OUTPUT_ACTIVATIONS))
        if not (math.isfinite(self.init_scale) and self.init_scale > 0):
            raise ValueError(f"init_scale: expected a finite number > 0, got {self.init_scale!r}")


class LearnedLoss(nn.Module):
    """M_phi: maps per-sample features to a per-sample loss value.

    The caller reduces (usually a mean) the per-sample values into the scalar it differentiates.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.config = config
        spec = config.features
        widths = (spec.size, *config.hidden)
        layers: list[nn.Module] = []
        for w_in, w_out in itertools.pairwise(widths):
            layers += [nn.Linear(w_in, w_out, bias=config.bias), ACTIVATIONS[config.activation]()]
        layers += [
            nn.Linear(widths[-1], 1, bias=config.bias),
            OUTPUT_ACTIVATIONS[config.output_activation](),
        ]
        self.net = nn.Sequential(*layers)
        if config.learn_scale:
            self.log_scale = nn.Parameter(torch.zeros(()))
        shift = torch.tensor(spec.shift if spec.shift else [0.0] * spec.size)
        scale = torch.tensor(spec.scale if spec.scale else [1.0] * spec.size)
        # Non-persistent: the normalisation lives in the feature spec (the JSON sidecar).
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.reset_parameters()

    @property
    def features(self) -> FeatureSpec:
        return self.config.features

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Xavier-uniform weights (as in the paper's code), constant biases, the initial scale."""
        if self.config.learn_scale:
            with torch.no_grad():
                self.log_scale.fill_(math.log(self.config.init_scale))
        for module in self.net:
            if isinstance(module, nn.Linear):
                bound = (6.0 / (module.in_features + module.out_features)) ** 0.5
                with torch.no_grad():
                    module.weight.uniform_(-bound, bound, generator=generator)
                    if module.bias is not None:
                        module.bias.fill_(self.config.bias_init)

    def forward(self, features: Tensor) -> Tensor:
        """Per-sample loss.

        Args:
            features: ``(..., F)`` with ``F = len(config.features.names)``.

        Returns:
            ``(...)`` loss values.
        """
        if features.shape[-1] != self.features.size:
            raise ValueError(
                f"features: expected last dimension {self.features.size} "
                f"({list(self.features.names)}), got shape {tuple(features.shape)}"
            )
        z = (features - self.shift.to(features.dtype)) / self.scale.to(features.dtype)
        out = self.net(z).squeeze(-1)
        return out * self.log_scale.exp() if self.config.learn_scale else out
