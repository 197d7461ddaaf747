#!/usr/bin/env bash
# The whole GPU check in one command, for a lent GPU machine with no network: install the carried wheels
# (.whl/, see README "GPU check"), then run the benchmark: stock vs ours, ours with the eager UNet replayed as a
# CUDA graph (CUDA_GRAPHS=1), both compile scopes with CUDA graphs (regional, COMPILE_SCOPE=blocks, first: it is
# the one not yet measured), each with its cached start, and one profiled warm job per stage (kernel time, top
# kernels). benchmark.json, benchmark.md, log.txt and gpu.txt
# land in $OUT (the device tool's folder) or bench-out/. The read/load stage is left out unless the first
# argument is --with-loads (runs 2-3 measured it; run 3 took 471 s with it). Other arguments go to
# benchmark.py. Run 4, this without CUDA_GRAPHS, the blocks scope, the second cached-start process and the
# profile, took 233 s on an H200; the rest is not measured yet, so give the device call its full 600 s.
# The wheels a machine with torch 2.11, transformers 5.17 and accelerate 1.15 but no network lacked (Python 3.12):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 pydantic==2.14.3 \
#     pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 torchsde==0.2.6 trampoline==0.1.2 \
#     importlib_metadata==10.2.0
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-bench-out}
mkdir -p "$out"
if ! python3 -c "import diffusers, pydantic, torchsde" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true; df -h /tmp; } | tee "$out/gpu.txt"
export PYTHONUNBUFFERED=1
loads=(--skip-loads)
if [[ "${1:-}" == "--with-loads" ]]; then
  loads=()
  shift
fi
python3 benchmark.py --out "$out" --volume-dir /tmp/bench-volume "${loads[@]}" --compile --compile-mode reduce-overhead \
  --compile-scope blocks,full --profile --ours graphs:CUDA_GRAPHS=1 "$@" 2>&1 \
  | tee "$out/log.txt"
