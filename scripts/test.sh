#!/usr/bin/env bash
# Set up the venv if needed, lint, and run the test suite.
#   bash scripts/test.sh [PYTEST ARGS]          all tests, ROS 2 Kilted (./.venv)
#   SAC_ROS_DISTRO=jazzy bash scripts/test.sh --ros   the ROS tests against Jazzy (./.venv-jazzy)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv=.venv
[ "${SAC_ROS_DISTRO:-kilted}" = jazzy ] && venv=.venv-jazzy
"$venv/bin/ruff" check .
if [ "${1:-}" = --ros ]; then  # the tests that start nodes or read ROS messages
  shift
  set -- test/test_ros_*.py test/test_bags_ros.py test/test_shm.py "$@"
else
  set -- test "$@"
fi
# ROS is set up by now: a ROS test module that cannot import must fail, not skip.
SAC_REQUIRE_ROS=1 exec "$venv/bin/python" -m pytest -q "$@"
