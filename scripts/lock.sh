#!/usr/bin/env bash
# Lock the image's Python packages after a change to requirements.txt: the lock of a CUDA flavour (every package,
# with hashes, for the image's Python 3.12 on x86_64 Linux, resolved by uv; dev/cuda_flavours.py) and, for the
# default flavour, requirements-dev.lock (the test tools resolved under it: python -m dev.lock). Needs PyPI (and
# download.pytorch.org for a flavour other than cu130); about 10 s. Then bash scripts/setup_venv.sh.
#   bash scripts/lock.sh          # cu130: requirements.lock
#   bash scripts/lock.sh cu128    # requirements-cu128.lock
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/uv ]] || { echo "run bash scripts/setup_venv.sh first (it installs uv)"; exit 1; }
flavour=${1:-cu130}
read -r -a lock_args <<< "$(.venv/bin/python -m dev.cuda_flavours "$flavour")"
lock=${lock_args[0]}
trap 'rm -f "$lock.partial"' EXIT
{
  echo "# The image's Python packages for CUDA flavour $flavour, locked from requirements.txt by bash scripts/lock.sh"
  echo "# (uv pip compile for Python 3.12 on x86_64 Linux, with hashes); Dockerfile.volume_optimized installs exactly this."
  echo "# requirements.txt sha256: $(sha256sum requirements.txt | cut -d' ' -f1)"
  .venv/bin/uv --no-python-downloads pip compile requirements.txt --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
    --generate-hashes --no-header "${lock_args[@]:1}"
} > "$lock.partial"
mv "$lock.partial" "$lock"
if [[ $flavour == cu130 ]]; then .venv/bin/python -m dev.lock; fi
