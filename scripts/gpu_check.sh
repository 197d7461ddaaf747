#!/usr/bin/env bash
# The whole GPU check in one command, for a lent GPU machine with no network: install the carried wheels
# (.whl/, see README "GPU check"), then run the benchmark, stages in this order (the table and JSON are saved
# after each, so a cut run keeps what it measured): stock vs ours; ours with the eager UNet replayed as a CUDA
# graph (CUDA_GRAPHS=1); ours with fp8 linear layers, compiled (QUANTIZE=fp8, regional compile with CUDA
# graphs); the regional compile with CUDA graphs (COMPILE_SCOPE=blocks) and its cached start; one profiled
# warm job per stage (kernel time, top kernels). benchmark.json, benchmark.md, log.txt and gpu.txt land in
# $OUT (the device tool's folder) or bench-out/.
# Leading flags add what earlier runs measured: --with-loads the read/load stage (runs 2-3; run 3 took 471 s
# with it), --with-full-compile the whole-UNet compile and its cached start (runs 2-4, ~100 s + 2 x ~45 s).
# Other arguments go to benchmark.py. Run 4 (stock, ours, the whole-UNet compile and one cached-start
# process) took 233 s on an H200; without the whole-UNet compile and with the new stages this is expected
# near 300 s (not measured yet): give the device call its full 600 s.
# The wheels a machine with torch 2.11, transformers 5.17 and accelerate 1.15 but no network lacked (Python 3.12):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     torchsde==0.2.6 trampoline==0.1.2 importlib_metadata==10.2.0 torchao==0.18.0
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-bench-out}
mkdir -p "$out"
if ! python3 -c "import diffusers, pydantic, torchsde, torchao" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true; df -h /tmp; } | tee "$out/gpu.txt"
export PYTHONUNBUFFERED=1
loads=(--skip-loads)
scopes=blocks
while [[ "${1:-}" == --with-* ]]; do
  case "$1" in
    --with-loads) loads=() ;;
    --with-full-compile) scopes=blocks,full ;;
    *) echo "unknown flag $1 (--with-loads, --with-full-compile)" >&2; exit 2 ;;
  esac
  shift
done
python3 benchmark.py --out "$out" --volume-dir /tmp/bench-volume "${loads[@]}" --compile --compile-mode reduce-overhead \
  --compile-scope "$scopes" --profile --ours graphs:CUDA_GRAPHS=1 \
  --ours fp8_compiled_blocks:QUANTIZE=fp8,COMPILE=1,COMPILE_SCOPE=blocks,COMPILE_MODE=reduce-overhead "$@" 2>&1 \
  | tee "$out/log.txt"
