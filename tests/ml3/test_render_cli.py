"""``ml3r render`` writes a playable video of each system and refuses bad names clearly."""

import imageio.v3 as iio
import numpy as np
import pytest

from ml3_robotics.app.cli import main
from ml3_robotics.reporting.render import pumping_rollout
from robots.mountain_car import MountainCar


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["mountain-car"], "mc.gif"),
        (["arm", "--robot", "arm3", "--backend", "pybullet", "--steps", "20"], "arm.gif"),
    ],
)
def test_render_writes_changing_frames(tmp_path, argv, name):
    out = tmp_path / name
    assert main(["render", *argv, "--out", str(out)]) == 0
    frames = iio.imread(out)
    assert frames.ndim == 4 and frames.shape[0] >= 5
    assert len(np.unique(frames[0].reshape(-1, frames.shape[-1]), axis=0)) > 5  # not blank
    assert not np.array_equal(frames[0], frames[-1])  # something moves
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing else written


def test_pumping_policy_reaches_the_goal():
    car = MountainCar()
    states = pumping_rollout(car, car.params.horizon)
    assert bool(car.solved(states).any())


def test_render_bad_names(tmp_path, capsys):
    assert main(["render", "mountaincar", "--out", str(tmp_path / "a.gif")]) == 2
    assert "did you mean 'mountain-car'" in capsys.readouterr().err
    assert main(["render", "arm", "--robot", "arm33", "--out", str(tmp_path / "a.gif")]) == 2
    assert "arm3" in capsys.readouterr().err
    assert main(["render", "mountain-car", "--out", str(tmp_path / "a.png")]) == 2
    assert ".gif" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
