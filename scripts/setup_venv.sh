#!/usr/bin/env bash
# Create .venv with the CPU requirements and the test tools; quick when it is already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
