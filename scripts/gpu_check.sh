#!/usr/bin/env bash
# The GPU check in one command, for a lent GPU machine with no network: install the carried wheels (.whl/,
# below), then run the benchmark's suites (benchmarks/scenarios.py; default: image-stack, then workload). The
# JSON, table and chart are saved after every stage, so a run cut at the device's time limit keeps what it
# measured; they land with log.txt and gpu.txt in $OUT (the device tool's folder) or bench-out/.
#
#   bash scripts/gpu_check.sh --runs 1           # the suites image-stack, then workload, one warm run each
#   bash scripts/gpu_check.sh gpu-check loads    # several suites, in this order
#   bash scripts/gpu_check.sh defaults --scale tiny --device cpu    # then the benchmark's flags: a CPU rehearsal
#   bash scripts/gpu_check.sh loads netfs --layout published    # the default RunPod start on published names
#   bash scripts/gpu_check.sh workload --runs 1  # the job mix alone, stock and ours job by job, one warm pass
#
# How long each suite took is in benchmarks/RESULTS.md. It runs on the image's locked packages: `bash
# scripts/gpu_wheels.sh` fetches into .whl/ those the machine does not bring (python -m dev.lock --carried; carry
# `.whl`), installed here with their lock hashes; versions.txt lists every locked package with the version it ran.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-bench-out}
mkdir -p "$out"
if ! command -v fusermount3 >/dev/null && compgen -G ".whl/*fuse3*.deb" >/dev/null && command -v dpkg-deb >/dev/null; then
  for deb in .whl/*fuse3*.deb; do dpkg-deb -x "$deb" /tmp/fuse-root || exit 1; done
  export PATH="/tmp/fuse-root/bin:/tmp/fuse-root/usr/bin:$PATH"
  export FUSE_LIBRARY_PATH=/tmp/fuse-root/lib/x86_64-linux-gnu/libfuse3.so.3  # where mfusepy looks first
fi
if [[ -f .whl/carried.lock ]]; then
  # The wheels are for the device's Python 3.12; on another Python (a CPU rehearsal) they are installed, checked
  # against their hashes, and left unused.
  python3 -m pip install -q --disable-pip-version-check --no-index --find-links .whl --no-deps --no-compile \
    --no-cache-dir --require-hashes --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --target /tmp/site -r .whl/carried.lock || exit 1
  python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
    --target /tmp/site-fuse .whl/fuse/*.whl || exit 1
  if python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'; then
    export PYTHONPATH=/tmp/site:/tmp/site-fuse
  else
    echo "python3 is $(python3 -V | cut -d' ' -f2), not the image's 3.12: the carried wheels are not used"
  fi
fi
python3 -m dev.lock --versions > "$out/versions.txt" || exit 1
tail -1 "$out/versions.txt"
grep -E "DIFFERS|missing" "$out/versions.txt"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true; df -h /tmp; } | tee "$out/gpu.txt"
export PYTHONUNBUFFERED=1
suites=()
while [[ $# -gt 0 && $1 != -* ]]; do  # suite names first; from the first flag on, the benchmark's own flags
  suites+=(--suite "$1")
  shift
done
if [[ ${#suites[@]} -eq 0 ]]; then suites=(--suite image-stack --suite workload); fi
python3 -m benchmarks --out "$out" --volume-dir /tmp/bench-volume "${suites[@]}" "$@" 2>&1 | tee "$out/log.txt"
