"""Suite-wide settings: one torch thread (the suite's nets are tiny; on a busy 2-core machine two
OpenMP threads ran ~20x slower), and no progress bars."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the CLI subprocesses of tests
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch

torch.set_num_threads(1)
