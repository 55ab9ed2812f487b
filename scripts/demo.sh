#!/usr/bin/env bash
# The main job: set up ./.venv, then run the ROS 2 pipeline (camera stand-in -> sensor ->
# ECU -> perception, separate processes over DDS) on the sample footage with the default
# model on the CPU, and print the end-to-end summary.
#   bash scripts/demo.sh          the pipeline demo (extra arguments go to `sac pipeline`)
#   bash scripts/demo.sh eval     the codec evaluation, `sac eval sample --model default`,
#                                 results in a new sac_eval_out/<date-time>/ each run
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${1:-}" = "eval" ]; then
  shift
  # A folder per run: sac eval refuses to write over an earlier run's results.
  exec .venv/bin/sac eval sample --model default --out "sac_eval_out/$(date +%Y%m%d-%H%M%S)" "$@"
fi
exec .venv/bin/sac pipeline --source sample --frames 200 --model default \
  --json sac_pipeline_summary.json "$@"
