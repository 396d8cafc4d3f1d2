"""MetaTrainer: exact resume after SIGKILL, atomic checkpoints, non-finite guards."""

import csv
import signal
import subprocess
import sys

import pytest
import torch
from conftest import SIGKILL_AT_ITERATION
from safetensors import safe_open
from safetensors.torch import load_file

from ml3_robotics.app.cli import main
from ml3_robotics.core.errors import NonFiniteError
from ml3_robotics.core.learned_loss import FeatureSpec, LearnedLoss, LossConfig
from ml3_robotics.core.meta_trainer import MetaTrainConfig, MetaTrainer


def _quadratic_problem():
    loss = LearnedLoss(LossConfig(FeatureSpec(("x",)), hidden=(4,)))
    loss.reset_parameters(torch.Generator().manual_seed(0))

    def objective(iteration, g):
        x = torch.randn(8, 1, generator=g)
        return (loss(x) - x.squeeze(-1) ** 2).pow(2).mean()

    return loss, objective


def test_resume_in_process_equals_uninterrupted(tmp_path):
    loss_a, obj_a = _quadratic_problem()
    MetaTrainer(loss_a, obj_a, MetaTrainConfig(12, lr=1e-2, seed=5)).run()

    loss_b, obj_b = _quadratic_problem()
    ckpt = tmp_path / "ckpt.safetensors"
    MetaTrainer(
        loss_b, obj_b, MetaTrainConfig(7, lr=1e-2, seed=5, checkpoint_every=7), checkpoint_path=ckpt
    ).run()
    loss_c, obj_c = _quadratic_problem()  # fresh process state: only the checkpoint carries over
    trainer = MetaTrainer(loss_c, obj_c, MetaTrainConfig(12, lr=1e-2, seed=5), checkpoint_path=ckpt)
    trainer.run(resume=True)
    assert trainer.iteration == 12 and len(trainer.history) == 12
    for (name, a), (_, c) in zip(
        loss_a.state_dict().items(), loss_c.state_dict().items(), strict=True
    ):
        assert torch.equal(a, c), name


def test_cosine_meta_lr_schedule_is_a_function_of_the_iteration(tmp_path):
    import math

    config = MetaTrainConfig(10, lr=1e-2, seed=5, lr_final=1e-3, checkpoint_every=4)
    loss, objective = _quadratic_problem()
    used = []
    trainer = MetaTrainer(loss, objective, config, callbacks=[
        lambda i, row: used.append(trainer.optimizer.param_groups[0]["lr"])])  # fmt: skip
    trainer.run()
    expected = [1e-3 + 0.5 * 9e-3 * (1 + math.cos(math.pi * i / 10)) for i in range(10)]
    assert used == pytest.approx(expected, rel=1e-12)
    assert used[0] == pytest.approx(1e-2) and used[-1] > 1e-3
    # A run killed after iteration 5 and resumed from its checkpoint at 4 ends at the same phi.
    ckpt = tmp_path / "ckpt.safetensors"

    class Killed(Exception):
        pass

    def kill(i, row):
        if i == 5:
            raise Killed

    loss_b, obj_b = _quadratic_problem()
    killed = MetaTrainer(loss_b, obj_b, config, checkpoint_path=ckpt, callbacks=[kill])
    with pytest.raises(Killed):
        killed.run()
    loss_c, obj_c = _quadratic_problem()
    resumed = MetaTrainer(loss_c, obj_c, config, checkpoint_path=ckpt)
    resumed.run(resume=True)
    # Iterations 0..3 come from the checkpoint (their wall times are the killed run's own).
    assert [r["seconds"] for r in resumed.history[:4]] == [r["seconds"] for r in killed.history[:4]]
    for (name, a), (_, c) in zip(loss.state_dict().items(), loss_c.state_dict().items(),
                                 strict=True):  # fmt: skip
        assert torch.equal(a, c), name
    with pytest.raises(ValueError, match="lr_final"):
        MetaTrainConfig(3, lr_final=0.0)


def test_non_finite_stops_and_keeps_last_checkpoint(tmp_path):
    loss, objective = _quadratic_problem()

    def poisoned(iteration, g):
        value = objective(iteration, g)
        return value * float("nan") if iteration == 5 else value

    ckpt = tmp_path / "ckpt.safetensors"
    trainer = MetaTrainer(
        loss, poisoned, MetaTrainConfig(10, seed=1, checkpoint_every=1), checkpoint_path=ckpt
    )
    with pytest.raises(NonFiniteError, match=r"outer iteration 5.*left intact"):
        trainer.run()
    with safe_open(ckpt, framework="pt") as f:
        assert f.metadata()["iteration"] == "5"  # the five good updates, 0..4
    saved = load_file(ckpt)
    before = {k[len("loss.") :]: v for k, v in saved.items() if k.startswith("loss.")}
    # phi was not touched by the NaN step: it equals the last good checkpoint
    for name, value in loss.state_dict().items():
        assert torch.equal(before[name], value), name


def test_non_finite_gradient_is_caught(tmp_path):
    loss, objective = _quadratic_problem()

    def bad_grad(iteration, g):
        value = objective(iteration, g)
        # finite value, infinite gradient: sqrt at 0
        return value + torch.sqrt(torch.zeros(()) * next(loss.parameters()).sum())

    with pytest.raises(NonFiniteError, match="meta-gradient"):
        MetaTrainer(loss, bad_grad, MetaTrainConfig(3)).run()


def test_bad_meta_config():
    with pytest.raises(ValueError, match="outer_steps"):
        MetaTrainConfig(-1)
    with pytest.raises(ValueError, match="checkpoint_every"):
        MetaTrainConfig(3, checkpoint_every=0)


CLI = "from ml3_robotics.app.cli import main; raise SystemExit(main(sys.argv[1:]))"


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    """A run killed with SIGKILL mid-training (3 iterations past its last checkpoint) and
    resumed ends with the same learned loss and metrics as one never interrupted."""
    sets = ["--set", "outer_steps=40", "--set", "checkpoint_every=5", "--set", "eval_every=1000"]
    reference = tmp_path / "reference"
    assert main(["-q", "run", "sine", "--smoke", *sets, "--out", str(reference)]) == 0

    killed = tmp_path / "killed"
    done = subprocess.run(
        [sys.executable, "-c", SIGKILL_AT_ITERATION + CLI, "33",
         "run", "sine", "--smoke", *sets, "--out", str(killed)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not (killed / "loss.safetensors").exists()
    rows = (killed / "metrics.csv").read_text().splitlines()
    assert len(rows) == 34  # rows 31-33 were written after the checkpoint at 30: resume drops them
    with safe_open(killed / "checkpoints" / "meta_train.safetensors", framework="pt") as f:
        assert f.metadata()["iteration"] == "30"

    assert main(["-q", "run", "sine", "--resume", "--out", str(killed)]) == 0
    a = load_file(reference / "loss.safetensors")
    b = load_file(killed / "loss.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert _rows_without_seconds(killed) == _rows_without_seconds(reference)
    assert len((killed / "metrics.csv").read_text().splitlines()) == 41  # none lost or repeated


def _rows_without_seconds(run) -> list[dict[str, str]]:
    """metrics.csv rows without the wall-clock column (the only one that may differ)."""
    with (run / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]
