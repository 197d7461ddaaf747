#!/usr/bin/env bash
# Lock the image's Python packages after a change to requirements.txt: requirements.lock (every package, with
# hashes, for the image's Python 3.12 on x86_64 Linux, resolved by uv from PyPI) and constraints-cpu.txt (the
# same versions for the CPU venv). Needs PyPI; about 10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .venv/bin/uv ]] || { echo "run bash scripts/setup_venv.sh first (it installs uv)"; exit 1; }
{
  echo "# The image's Python packages, locked from requirements.txt by bash scripts/lock.sh (uv pip compile for"
  echo "# Python 3.12 on x86_64 Linux, with hashes); Dockerfile.volume_optimized installs exactly this."
  echo "# requirements.txt sha256: $(sha256sum requirements.txt | cut -d' ' -f1)"
  .venv/bin/uv --no-python-downloads pip compile requirements.txt --python-version 3.12 --python-platform x86_64-manylinux_2_28 \
    --generate-hashes --no-header
} > requirements.lock.partial
mv requirements.lock.partial requirements.lock
.venv/bin/python -m dev.lock
