#!/usr/bin/env bash
# Headless OpenGL for offscreen MuJoCo rendering (MUJOCO_GL=egl or osmesa). Installs Debian's
# Mesa packages when they are missing and we are allowed to (root with apt-get); otherwise
# says what is missing and carries on: rendering tests then skip with that reason.
set -u
need=()
for lib in libEGL.so.1 libGL.so.1 libEGL_mesa.so.0; do
  ldconfig -p 2>/dev/null | grep -q "$lib" || need+=("$lib")
done
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing headless OpenGL libraries (${need[*]})"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
     libegl1 libgl1 libglx-mesa0 libegl-mesa0 >/dev/null) \
    || echo "warning: could not install headless OpenGL; rendering tests will skip" >&2
else
  echo "warning: missing ${need[*]}; install libegl1 libosmesa6 for offscreen rendering" >&2
fi
