"""Saving and loading learned losses: safetensors weights plus a JSON sidecar. Never unpickles.

``loss.safetensors`` holds the parameters; ``loss.json`` holds the architecture, the feature
spec (names and normalisation) and provenance (experiment, seed, versions, training figures).
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from torch import Tensor

from ml3_robotics.core.errors import LossFileError
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig
from ml3_robotics.core.validation import MAX_INNER_STEPS

FORMAT = "ml3r-learned-loss"
FORMAT_VERSION = 1


def _new_temp(path: Path) -> str:
    """A fresh temporary file beside ``path`` for an atomic write. Temporaries a killed write of
    the same file left behind are removed first (one writer per file: a run owns its folder)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    # mkstemp makes 0600 files; give the result the mode open() would (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = _new_temp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_tensors(
    tensors: Mapping[str, Tensor], path: Path, metadata: Mapping[str, str] | None = None
) -> None:
    """Tensors in safetensors format, written atomically. Serialised in memory and written by
    :func:`atomic_write_bytes`: safetensors' own ``save_file`` writes through a temporary file of
    its own (mode 0600, left behind by a kill, in no pattern a sweep could recognise)."""
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write_bytes(path, save(contiguous, metadata=dict(metadata) if metadata else None))


def read_format_json(
    path: Path, fmt: str, version: int | tuple[int, ...], error: type[Exception], what: str
) -> dict[str, Any]:
    """A JSON object whose ``format`` is ``fmt`` and ``format_version`` is ``version`` (or one
    of several readable versions).

    Raises ``error`` with one line naming ``what`` and ``path`` when the file is unreadable,
    not JSON, of another format or of another version.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{what} {path} is not valid JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise error(f"{what} {path} is not an {fmt} file")
    readable = version if isinstance(version, tuple) else (version,)
    if doc.get("format_version") not in readable:
        expected = f"one of {list(readable)}" if len(readable) > 1 else str(readable[0])
        raise error(
            f"{what} {path} has format_version {doc.get('format_version')!r}, expected {expected}"
        )
    return doc


def tensors_with_prefix(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors whose names start with ``prefix``, the prefix removed (one part of a
    checkpoint: ``loss.``, ``optim.``, ``state.``)."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def loss_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, sidecar)`` for a path given as ``X.safetensors``, ``X.json`` or ``X``."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def _config_to_json(config: LossConfig) -> dict[str, Any]:
    spec = config.features
    return {
        "features": {"names": list(spec.names), "shift": spec.shift, "scale": spec.scale},
        "hidden": list(config.hidden),
        "activation": config.activation,
        "output_activation": config.output_activation,
        "bias": config.bias,
        "bias_init": config.bias_init,
        "learn_scale": config.learn_scale,
        "init_scale": config.init_scale,
    }


def _numbers(field: str, value: Any) -> tuple[float, ...] | None:
    """A JSON list of numbers (or null). A string would iterate into digits ("88" -> (8, 8))
    and a bool is an int: both are refused."""
    if value is None:
        return None
    if not isinstance(value, list) or any(
        isinstance(v, bool) or not isinstance(v, int | float) for v in value
    ):
        raise ValueError(f"{field}: expected a list of numbers, got {value!r}")
    return tuple(float(v) for v in value)


def _config_from_json(data: Mapping[str, Any]) -> LossConfig:
    f = data["features"]
    hidden = data["hidden"]
    if not isinstance(hidden, list) or any(type(h) is not int for h in hidden):
        raise ValueError(f"hidden: expected a list of integers, got {hidden!r}")
    names = f["names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"features.names: expected a list of strings, got {names!r}")
    return LossConfig(
        features=FeatureSpec(
            names=tuple(names),
            shift=_numbers("features.shift", f.get("shift")),
            scale=_numbers("features.scale", f.get("scale")),
        ),
        hidden=tuple(hidden),
        activation=str(data["activation"]),
        output_activation=str(data["output_activation"]),
        bias=bool(data["bias"]),
        bias_init=float(data.get("bias_init", 0.0)),
        learn_scale=bool(data.get("learn_scale", False)),
        init_scale=float(data.get("init_scale", 1.0)),
    )


def save_learned_loss(
    loss: LearnedLoss, path: str | Path, provenance: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``loss`` as ``<path>.safetensors`` + ``<path>.json``; returns both paths."""
    weights, sidecar = loss_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.float32) for k, v in loss.state_dict().items()}
    atomic_save_tensors(state, weights, metadata={"format": FORMAT})
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": _config_to_json(loss.config),
        "parameters": {k: list(v.shape) for k, v in state.items()},
        "provenance": dict(provenance or {}),
    }
    atomic_write_bytes(sidecar, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return weights, sidecar


def read_loss_sidecar(path: str | Path) -> dict[str, Any]:
    """The parsed JSON sidecar of a saved loss (raises :class:`LossFileError` when unusable)."""
    _, sidecar = loss_paths(path)
    if not sidecar.is_file():
        raise LossFileError(f"loss file: sidecar {sidecar} does not exist")
    doc = read_format_json(sidecar, FORMAT, FORMAT_VERSION, LossFileError, "loss file: sidecar")
    _check_provenance(doc.get("provenance", {}), sidecar)
    return doc


def _check_provenance(provenance: Any, sidecar: Path) -> None:
    """The parts of a sidecar's provenance that say how the loss is applied (K, step size)
    are of the right type and in range, so no later reader trusts a corrupt value."""
    if provenance is None:
        return
    if not isinstance(provenance, dict):
        raise LossFileError(
            f"loss file: sidecar {sidecar}: provenance: expected a mapping, got "
            f"{type(provenance).__name__}"
        )
    steps = provenance.get("inner_steps")
    if steps is not None and (type(steps) is not int or not 1 <= steps <= MAX_INNER_STEPS):
        raise LossFileError(
            f"loss file: sidecar {sidecar}: provenance.inner_steps: expected an integer from 1 "
            f"to {MAX_INNER_STEPS}, got {steps!r}"
        )
    lr = provenance.get("inner_lr")
    if lr is not None and (
        isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf
    ):
        raise LossFileError(
            f"loss file: sidecar {sidecar}: provenance.inner_lr: expected a positive finite "
            f"number, got {lr!r}"
        )


def load_learned_loss(
    path: str | Path, *, expect_features: tuple[str, ...] | None = None
) -> tuple[LearnedLoss, dict[str, Any]]:
    """Load a saved learned loss without unpickling anything.

    Args:
        path: ``X.safetensors``, ``X.json`` or the common stem ``X``.
        expect_features: when given, the loss must read exactly these features, in this order
            (raises :class:`~ml3_robotics.core.errors.FeatureSpecError` otherwise).

    Returns:
        ``(loss, sidecar)``: the module in float32 and the sidecar document.
    """
    weights, _ = loss_paths(path)
    doc = read_loss_sidecar(path)
    try:
        config = _config_from_json(doc["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise LossFileError(f"loss file: sidecar config of {weights} is invalid ({e})") from e
    if expect_features is not None:
        config.features.require(expect_features)
    if not weights.is_file():
        raise LossFileError(f"loss file: weights {weights} do not exist")
    # The shapes the sidecar's architecture needs, from a module on the meta device (allocates
    # nothing), checked against the file's header before any tensor is read: a sidecar that
    # names huge layers is refused instead of allocated.
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in LearnedLoss(config).state_dict().items()}
    try:
        with safe_open(weights, framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        if any(d not in ("F16", "BF16", "F32", "F64") for d in dtypes.values()):
            raise LossFileError(
                f"loss file: {weights} holds tensors that are not floating point ({dtypes}); "
                "a learned loss's parameters are"
            )
        if expected == found:
            state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise LossFileError(f"loss file: {weights} is not a readable safetensors file ({e})") from e
    if expected != found:
        raise LossFileError(
            f"loss file: {weights} holds parameters {found}, but its sidecar's architecture "
            f"needs {expected}"
        )
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    if bad:
        raise LossFileError(f"loss file: {weights} holds non-finite values in {bad}")
    loss = LearnedLoss(config)
    loss.load_state_dict(state)
    return loss, doc
