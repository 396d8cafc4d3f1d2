"""Offscreen rendering on both backends produces real (non-blank, state-dependent) frames."""

import numpy as np
import pytest

from robots.arm import BACKENDS, ArmSim, RenderingUnavailableError, render_rollout
from robots.video import write_video


def _sim_or_skip(backend: str) -> ArmSim:
    sim = ArmSim("reacher2", backend)
    try:
        sim.render(64, 48)
    except RenderingUnavailableError as e:  # no EGL/OSMesa context on this machine
        sim.close()
        pytest.skip(str(e))
    return sim


@pytest.mark.parametrize("backend", BACKENDS)
def test_frames_are_not_blank_and_follow_the_state(backend: str) -> None:
    sim = _sim_or_skip(backend)
    a = sim.render(160, 120)
    assert a.shape == (120, 160, 3) and a.dtype == np.uint8
    assert a.std() > 5.0 and len(np.unique(a.reshape(-1, 3), axis=0)) > 10
    sim.reset(np.array([1.2, 0.8, 0.0, 0.0]))
    b = sim.render(160, 120)
    assert (np.abs(a.astype(int) - b.astype(int)).sum(-1) > 30).mean() > 0.005  # the arm moved
    c = sim.render(160, 120, goal=[0.0, -0.15])
    assert not np.array_equal(b, c)  # the goal marker is drawn
    sim.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_render_rollout_to_video(backend: str, tmp_path) -> None:
    sim = _sim_or_skip(backend)
    X = sim.rollout(np.zeros((1, 4)), np.full((1, 20, 2), 0.05))[0]
    sim.reset(np.array([0.3, 0.3, 0.0, 0.0]))
    frames = render_rollout(sim, X, 96, 72, stride=5)
    assert frames.shape == (5, 72, 96, 3)
    np.testing.assert_array_equal(sim.state, [0.3, 0.3, 0.0, 0.0])  # state restored
    path = write_video(frames, tmp_path / "arm.gif", fps=10)
    assert path.stat().st_size > 0
    sim.close()
