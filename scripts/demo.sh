#!/usr/bin/env bash
# The main job: set up ./.venv, then compare uniform coding with SAC on the bundled footage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/sac eval sample "$@"
