#!/usr/bin/env bash
# Lint and test everything that runs without a GPU; CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
shellcheck scripts/*.sh .ci/run ./*.sh
if [[ -f Dockerfile.volume_optimized ]]; then hadolint Dockerfile.volume_optimized; fi
python -m pytest "$@"
