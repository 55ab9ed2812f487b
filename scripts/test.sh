#!/usr/bin/env bash
# Set up ./.venv if needed, lint, and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
# ROS is set up by now: a ROS test module that cannot import must fail, not skip.
SAC_REQUIRE_ROS=1 exec .venv/bin/python -m pytest -q test "$@"
