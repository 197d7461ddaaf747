#!/usr/bin/env bash
# Build and push the worker image, then create or update the RunPod serverless template and endpoint with the
# network volume attached. Re-running updates, never duplicates.
#
#   RUNPOD_API_KEY=... IMAGE=you/photonicfusion-sdxl-worker:1.0.0 NETWORK_VOLUME_ID=abc123 \
#     bash deploy_volume_optimized.sh [--dry-run] [--skip-build] [flags]
#
# The flags, their environment variables and defaults belong to the Python half (dev/runpod_deploy.py):
# `bash deploy_volume_optimized.sh --help` lists them. Every flag is checked before anything runs. PYTHON picks
# the interpreter that has the runpod package (default: the repository's .venv, else python3).
set -euo pipefail
cd "$(dirname "$0")"

die() {
  echo "deploy_volume_optimized.sh: $*" >&2
  exit 2
}

default_python=python3
if [[ -x .venv/bin/python ]]; then default_python=.venv/bin/python; fi
python=${PYTHON:-$default_python}
command -v "$python" >/dev/null || die "$python is not installed"
"$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('runpod') is None)" 2>/dev/null || die "the runpod package is missing: $python -m pip install runpod==1.12.0"

args=("$@")
image=${IMAGE:-}
dry_run=0
skip_build=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --image) image=${2:-}; shift ;;
    --dry-run) dry_run=1 ;;
    --skip-build) skip_build=1 ;;
    -h|--help) exec "$python" -m dev.runpod_deploy --help ;;
  esac
  shift
done

"$python" -m dev.runpod_deploy --check "${args[@]}"
if [[ $skip_build == 0 && $dry_run == 0 ]]; then
  command -v docker >/dev/null || die "docker is not installed (or use --skip-build for an image already pushed)"
fi

run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ $dry_run == 0 ]]; then
    "$@"
  fi
}

if [[ $skip_build == 0 ]]; then
  run docker build --platform linux/amd64 -f Dockerfile.volume_optimized -t "$image" .
  run docker push "$image"
fi
"$python" -m dev.runpod_deploy "${args[@]}"
