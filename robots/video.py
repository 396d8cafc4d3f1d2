"""Writing rendered frames to GIF or MP4 with imageio."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np

_SUFFIXES = (".gif", ".mp4")


def write_video(frames: Sequence[np.ndarray] | np.ndarray, path: str | Path, fps: int = 30) -> Path:
    """Write RGB frames to ``path``; the suffix (``.gif`` or ``.mp4``) picks the format.

    Args:
        frames: ``(T, H, W, 3)`` uint8 frames (a sequence of ``(H, W, 3)`` arrays works too).
        path: output file; its parent directory must exist.
        fps: frames per second.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.suffix.lower() not in _SUFFIXES:
        raise ValueError(f"path: expected a suffix in {_SUFFIXES}, got {path.name!r}")
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1:
        raise ValueError(f"frames: expected shape (T>=1, H, W, 3), got {array.shape}")
    if fps <= 0:
        raise ValueError(f"fps: expected a positive number, got {fps}")
    array = np.clip(array, 0, 255).astype(np.uint8)
    if path.suffix.lower() == ".gif":
        # GIF stores frame durations in milliseconds; loop forever.
        iio.imwrite(path, array, extension=".gif", duration=1000 / fps, loop=0)
    else:
        iio.imwrite(path, array, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    return path
