#!/usr/bin/env bash
# Lint and test everything that runs without a GPU, on the image's own packages (scripts/setup_venv.sh); CI runs
# exactly this. Two test processes (one a core here), a module at a time to whichever is free (tests/conftest.py);
# `-n 0` runs in one, and pytest's own arguments pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
shellcheck scripts/*.sh .ci/run ./*.sh
if [[ -f Dockerfile.volume_optimized ]]; then hadolint Dockerfile.volume_optimized; fi
python -m pytest -n 2 --durations=15 "$@"
