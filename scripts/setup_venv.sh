#!/usr/bin/env bash
# Create .venv with the CPU requirements and the test tools, at the image's versions (constraints-cpu.txt, from
# requirements.lock); quick when it is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints-cpu.txt
