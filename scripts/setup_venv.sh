#!/usr/bin/env bash
# Make .venv as the image installs its packages: the image's Python 3.12, every package of requirements.lock
# checked against its hash (torch's CUDA build too: it runs on a CPU) and compiled to bytecode as in the image,
# plus the test tools of requirements-dev.lock; nothing else stays installed. Quick when it is up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
is_312() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
python=
for candidate in "${PYTHON312:-}" python3.12 "$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")"/versions/3.12*/bin/python3.12; do
  if [[ -n $candidate ]] && is_312 "$candidate"; then python=$(command -v "$candidate"); break; fi
done
if [[ -z $python ]]; then
  echo "The tests run the image's Python 3.12 and none was found (python3.12 on PATH, pyenv's 3.12, or PYTHON312=/path/to/python3.12): install it (apt-get install python3.12-venv, or pyenv install 3.12) and run this again." >&2
  exit 1
fi
if [[ -e .venv ]] && ! is_312 .venv/bin/python; then
  echo "setup_venv: .venv is not Python 3.12; making it anew" >&2
  rm -rf .venv
fi
if [[ ! -x .venv/bin/uv ]]; then
  "$python" -m venv .venv
  # uv itself, at the version and hashes requirements-dev.lock holds; it installs the rest.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r <("$python" -m dev.lock --block uv)
fi
.venv/bin/uv pip sync --quiet --python .venv/bin/python --require-hashes --compile-bytecode \
  requirements.lock requirements-dev.lock
