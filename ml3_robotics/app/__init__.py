"""The user-facing edge: the CLI, run folders, configs from YAML and the artefacts of a run."""

import os

# MuJoCo picks its OpenGL platform when it is first imported, from MUJOCO_GL; unset, it tries a
# windowed context (GLFW), which fails without a display. With no display, the command line
# renders offscreen through EGL (Mesa's, on CPU) unless the user chose a platform.
if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
