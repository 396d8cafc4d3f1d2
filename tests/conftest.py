"""Suite-wide settings: one torch thread (the suite's nets are tiny; on a busy 2-core machine two
OpenMP threads ran ~20x slower), and no progress bars."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the CLI subprocesses of tests
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch

torch.set_num_threads(1)


# A CLI run that SIGKILLs itself when MetaTrainer is about to start outer iteration ``kill_at``:
# the kill lands at a known point (rows of metrics.csv written past the last checkpoint) with no
# wall-clock polling, so a busy machine cannot make the test miss it. Append the lines that
# start the CLI; sys.argv[1] is kill_at.
SIGKILL_AT_ITERATION = """
import os, signal, sys
import ml3_robotics.core.meta_trainer as mt
_kill_at = int(sys.argv.pop(1))
_step = mt.MetaTrainer.step
def _step_or_die(self):
    if self.iteration == _kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return _step(self)
mt.MetaTrainer.step = _step_or_die
"""

# The same for rank 1 of a data-parallel run, at the iteration in the KILL_AT variable (-1:
# never), so one script serves the killed launch and the resumed one.
KILL_RANK_1_AT_ITERATION = """
import os, signal, sys
import ml3_robotics.core.meta_trainer as mt
_kill_at = int(os.environ["KILL_AT"])
_step = mt.MetaTrainer.step
def _step_or_die(self):
    if self.iteration == _kill_at and self.world.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return _step(self)
mt.MetaTrainer.step = _step_or_die
"""


def cli_error(capsys, argv) -> str:
    """The one error line of a refused ``ml3r`` command (exit status 2; progress lines, if any
    ran first, aside)."""
    from ml3_robotics.app.cli import main

    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = "\n".join(line for line in lines if not line.startswith("[ml3r "))
    assert err.startswith("ml3r: error: ") and "\n" not in err, err
    return err
