"""``ArmConfig``: a planar N-link arm (1 to 7 hinge joints) in a vertical plane.

The arm lives in the world x-z plane, its base at the origin, gravity along -z. Joint ``i`` turns
about the world -y axis, so a positive angle lifts the link from +x towards +z; at ``q = 0`` the
arm is stretched along +x. The end effector is the tip of the last link.

Shipped configurations are YAML files in ``robots/configs`` (package data), loaded by name with
``load_arm_config("arm3")`` or from a path; YAML stays at this edge, library code takes the
dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from robots.yaml_io import parse_yaml, read_yaml_file

MAX_LINKS = 7

# Defaults per link (the paper's reacher: 0.1 m links). Masses, damping and torque limits are our
# choice, documented in docs/arms.md: 0.1 kg links, 0.01 N*m*s/rad viscous damping, +-0.2 N*m
# (just enough to hold the stretched 2-link arm against gravity, 0.196 N*m, without compensation;
# with compensation it accelerates the stretched arm at ~75 rad/s^2, a reach in a few tenths of a
# second, matching the 0.65 s horizon).
DEFAULT_LENGTH = 0.1
DEFAULT_MASS = 0.1
DEFAULT_DAMPING = 0.01
DEFAULT_TORQUE_LIMIT = 0.2
DEFAULT_RADIUS = 0.01

JointLimit = tuple[float, float] | None


def suggest(name: str, options: Sequence[str]) -> str:
    """A ' Did you mean ...?' hint for an unknown name (empty when nothing is close)."""
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _per_link(name: str, value: Any, n: int, default: float) -> tuple[float, ...]:
    """None -> default for every link; a number -> broadcast; a sequence -> must have n entries."""
    if value is None:
        return (float(default),) * n
    if _is_number(value):
        return (float(value),) * n
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(f"{name}: expected a number or a sequence of {n} numbers, got {value!r}")
    if len(value) != n:
        raise ValueError(
            f"{name}: expected {n} entries (one per link, n_links={n}), got {len(value)}: "
            f"{list(value)!r}"
        )
    if not all(_is_number(v) for v in value):
        raise TypeError(f"{name}: expected numbers, got {list(value)!r}")
    return tuple(float(v) for v in value)


def _joint_limits(value: Any, n: int) -> tuple[JointLimit, ...]:
    if value is None:
        return (None,) * n
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise TypeError(
            f"joint_limits: expected None or a sequence of {n} (lower, upper) pairs or None, "
            f"got {value!r}"
        )
    # A single (lower, upper) pair of numbers applies to every joint.
    if len(value) == 2 and all(_is_number(v) for v in value):
        value = [tuple(value)] * n
    if len(value) != n:
        raise ValueError(
            f"joint_limits: expected {n} entries (one per joint, n_links={n}), got {len(value)}: "
            f"{list(value)!r}"
        )
    out: list[JointLimit] = []
    for i, lim in enumerate(value):
        if lim is None:
            out.append(None)
            continue
        if (
            isinstance(lim, str)
            or not isinstance(lim, Sequence)
            or len(lim) != 2
            or not all(_is_number(v) for v in lim)
        ):
            raise TypeError(f"joint_limits[{i}]: expected None or (lower, upper), got {lim!r}")
        lo, hi = float(lim[0]), float(lim[1])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"joint_limits[{i}]: expected finite bounds (rad), got {lim!r}")
        if lo >= hi:
            raise ValueError(
                f"joint_limits[{i}]: lower limit {lo} must be below upper limit {hi} (rad)"
            )
        out.append((lo, hi))
    return tuple(out)


@dataclass(frozen=True)
class ArmConfig:
    """A planar N-link arm with torque-controlled hinge joints.

    Per-link fields accept a sequence of ``n_links`` numbers, a single number (same for every link)
    or ``None`` (the default value for every link); they are stored as tuples of floats.

    Attributes:
        n_links: number of links and joints, 1 to 7.
        link_lengths: link lengths in m (> 0). Default 0.1 m.
        link_masses: link masses in kg (> 0), each a thin uniform rod. Default 0.1 kg.
        joint_damping: viscous joint damping in N*m*s/rad (>= 0). Default 0.01.
        torque_limits: symmetric torque limits in N*m (> 0); actions are clipped to them.
            Default 0.2 N*m.
        joint_limits: per joint ``(lower, upper)`` in rad or ``None`` for an unlimited joint; a
            single pair applies to every joint. Default: unlimited.
        dt: control and simulation time step in s (> 0). Default 0.01 (the paper's reacher).
        gravity_compensation: cancel gravity exactly (the paper compensates gravity). Default True.
        link_radius: visual radius of the links in m; also gives the (tiny) axial inertia.
        name: a label, used in model names and logs.
    """

    n_links: int = 2
    link_lengths: Any = None
    link_masses: Any = None
    joint_damping: Any = None
    torque_limits: Any = None
    joint_limits: Any = None
    dt: float = 0.01
    gravity_compensation: bool = True
    link_radius: float = DEFAULT_RADIUS
    name: str = field(default="reacher2")

    def __post_init__(self) -> None:
        n = self.n_links
        if not isinstance(n, numbers.Integral) or isinstance(n, bool):
            raise TypeError(f"n_links: expected an integer in 1..{MAX_LINKS}, got {n!r}")
        if not 1 <= n <= MAX_LINKS:
            raise ValueError(f"n_links: expected an integer in 1..{MAX_LINKS}, got {n}")
        object.__setattr__(self, "n_links", int(n))
        specs = {
            "link_lengths": (DEFAULT_LENGTH, "> 0 m", lambda v: v > 0),
            "link_masses": (DEFAULT_MASS, "> 0 kg", lambda v: v > 0),
            "joint_damping": (DEFAULT_DAMPING, ">= 0 N*m*s/rad", lambda v: v >= 0),
            "torque_limits": (DEFAULT_TORQUE_LIMIT, "> 0 N*m", lambda v: v > 0),
        }
        for fname, (default, expected, ok) in specs.items():
            values = _per_link(fname, getattr(self, fname), n, default)
            for i, v in enumerate(values):
                if not (math.isfinite(v) and ok(v)):
                    raise ValueError(f"{fname}[{i}]: expected a finite value {expected}, got {v}")
            object.__setattr__(self, fname, values)
        object.__setattr__(self, "joint_limits", _joint_limits(self.joint_limits, n))
        if not _is_number(self.dt) or not math.isfinite(self.dt) or self.dt <= 0:
            raise ValueError(f"dt: expected a finite time step > 0 s, got {self.dt!r}")
        object.__setattr__(self, "dt", float(self.dt))
        if not isinstance(self.gravity_compensation, bool):
            raise TypeError(
                f"gravity_compensation: expected True or False, got {self.gravity_compensation!r}"
            )
        if not _is_number(self.link_radius) or not 0 < self.link_radius:
            raise ValueError(f"link_radius: expected a value > 0 m, got {self.link_radius!r}")
        object.__setattr__(self, "link_radius", float(self.link_radius))
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name: expected a non-empty string, got {self.name!r}")

    # ----------------------------------------------------------------------------- derived
    @property
    def nx(self) -> int:
        """State dimension ``2 * n_links`` (joint angles then joint velocities)."""
        return 2 * self.n_links

    @property
    def nu(self) -> int:
        """Control dimension ``n_links`` (joint torques)."""
        return self.n_links

    @property
    def reach(self) -> float:
        """Maximum distance of the end effector from the base, m."""
        return float(sum(self.link_lengths))

    @property
    def min_reach(self) -> float:
        """Minimum distance of the end effector from the base with unlimited joints, m."""
        longest = max(self.link_lengths)
        return float(max(0.0, 2 * longest - self.reach))

    def rod_inertia(self, i: int) -> tuple[float, float, float]:
        """Principal inertia of link ``i`` about its centre of mass, kg*m^2 (axial, y, z).

        A uniform rod along the link's x axis: ``m L^2 / 12`` across, ``m r^2 / 2`` along. The same
        numbers go to MuJoCo and PyBullet, so neither derives inertia from its own geometry.
        """
        m, length, r = self.link_masses[i], self.link_lengths[i], self.link_radius
        across = m * length**2 / 12.0
        return (m * r**2 / 2.0, across, across)

    # ----------------------------------------------------------------------------- builders
    def to_mjcf(self) -> str:
        """The MuJoCo model (MJCF XML string) of this arm; see ``robots.arm.mjcf``."""
        from robots.arm.mjcf import build_mjcf

        return build_mjcf(self)

    def to_urdf(self) -> str:
        """The same arm as URDF (for PyBullet); see ``robots.arm.mjcf``."""
        from robots.arm.mjcf import build_urdf

        return build_urdf(self)

    def replace(self, **changes: Any) -> ArmConfig:
        """``dataclasses.replace`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def scaled(
        self,
        length: float = 1.0,
        mass: float = 1.0,
        damping: float = 1.0,
        torque: float = 1.0,
        name: str | None = None,
    ) -> ArmConfig:
        """A copy with lengths, masses, damping and torque limits multiplied by the factors."""
        for arg, v in (
            ("length", length),
            ("mass", mass),
            ("damping", damping),
            ("torque", torque),
        ):
            if not _is_number(v) or not v > 0:
                raise ValueError(f"{arg}: expected a scale factor > 0, got {v!r}")
        return dataclasses.replace(
            self,
            link_lengths=[v * length for v in self.link_lengths],
            link_masses=[v * mass for v in self.link_masses],
            joint_damping=[v * damping for v in self.joint_damping],
            torque_limits=[v * torque for v in self.torque_limits],
            name=name or f"{self.name}-scaled",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (YAML/JSON friendly) that ``ArmConfig(**d)`` rebuilds."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = [list(x) if isinstance(x, tuple) else x for x in v]
        return d


# --------------------------------------------------------------------------------- loading
def _config_dir() -> Any:
    return resources.files("robots.configs")


def available_arm_configs() -> list[str]:
    """Names of the arm configurations shipped with the package (``robots/configs/*.yaml``)."""
    return sorted(
        p.name[: -len(".yaml")] for p in _config_dir().iterdir() if p.name.endswith(".yaml")
    )


def arm_config_from_dict(data: dict[str, Any], source: str = "<dict>") -> ArmConfig:
    """Build an ``ArmConfig`` from a plain dict, naming unknown keys and the nearest field."""
    if not isinstance(data, dict):
        raise TypeError(f"{source}: expected a mapping of ArmConfig fields, got {type(data)}")
    names = [f.name for f in dataclasses.fields(ArmConfig)]
    for key in data:
        if key not in names:
            raise ValueError(
                f"{source}: unknown ArmConfig field {key!r}.{suggest(str(key), names)} "
                f"Expected some of {names}"
            )
    return ArmConfig(**data)


def load_arm_config(name_or_path: str | Path | ArmConfig) -> ArmConfig:
    """Load a shipped configuration by name (``"arm3"``) or a YAML file by path.

    An ``ArmConfig`` passes through unchanged. An unknown name raises ``ValueError`` suggesting the
    nearest shipped names.
    """
    if isinstance(name_or_path, ArmConfig):
        return name_or_path
    if not isinstance(name_or_path, str | Path):
        raise TypeError(
            f"name_or_path: expected a config name, a YAML path or an ArmConfig, "
            f"got {name_or_path!r}"
        )
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"name_or_path: no such YAML file {text!r}")
        source = text
        data = read_yaml_file(path, source)
    else:
        names = available_arm_configs()
        if text not in names:
            raise ValueError(
                f"name_or_path: unknown arm configuration {text!r}.{suggest(text, names)} "
                f"Available: {names}"
            )
        source = f"{text}.yaml"
        data = parse_yaml((_config_dir() / source).read_text(), source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{source}: expected a mapping of ArmConfig fields, got a {type(data).__name__}"
        )
    data = dict(data)
    data.setdefault("name", path.stem if path.suffix else text)
    return arm_config_from_dict(data, source)
