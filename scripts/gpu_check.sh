#!/usr/bin/env bash
# The whole GPU check in one command, for a lent GPU machine with no network: install the carried wheels
# (.whl/, see README "GPU check"), then run the benchmark with torch.compile. benchmark.json, benchmark.md,
# log.txt and gpu.txt land in $OUT (the device tool's folder) or bench-out/. Extra arguments go to benchmark.py.
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
python3 benchmark.py --compile --out "$out" --volume-dir /tmp/bench-volume "$@" 2>&1 | tee "$out/log.txt"
