#!/usr/bin/env bash
# The GPU check in one command, for a lent GPU machine with no network: install the carried wheels (.whl/,
# listed below), then run the benchmark's suites (benchmarks/scenarios.py; default: gpu-check). The JSON, table
# and chart are saved after every stage, so a run cut at the device's time limit keeps what it measured; they
# land with log.txt and gpu.txt in $OUT (the device tool's folder) or bench-out/.
#
#   bash scripts/gpu_check.sh                    # the suite gpu-check
#   bash scripts/gpu_check.sh gpu-check loads    # several suites, in this order
#   bash scripts/gpu_check.sh defaults --scale tiny --device cpu    # then the benchmark's flags: a CPU rehearsal
#   bash scripts/gpu_check.sh loads netfs --layout published    # the default RunPod start on published names
#
# How long each suite took is in benchmarks/RESULTS.md. The wheels a machine with torch 2.11, transformers 5.17
# and accelerate 1.15 but no network lacked (Python 3.12; compel and peft: prompts, LoRAs), fetched here into .whl/:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     diffusers==0.42.1 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     torchsde==0.2.6 trampoline==0.1.2 importlib_metadata==10.2.0 torchao==0.18.0 compel==2.5.1 peft==0.21.0 \
#     mfusepy==3.1.1
# and, for the suite netfs where the machine lacks fuse3 (it needs /dev/fuse and root), Debian's packages, unpacked
# under /tmp/fuse-root: (cd .whl && apt-get download fuse3 libfuse3-3)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${OUT:-bench-out}
mkdir -p "$out"
if ! command -v fusermount3 >/dev/null && compgen -G ".whl/*fuse3*.deb" >/dev/null && command -v dpkg-deb >/dev/null; then
  for deb in .whl/*fuse3*.deb; do dpkg-deb -x "$deb" /tmp/fuse-root || exit 1; done
  export PATH="/tmp/fuse-root/bin:/tmp/fuse-root/usr/bin:$PATH"
  export FUSE_LIBRARY_PATH=/tmp/fuse-root/lib/x86_64-linux-gnu/libfuse3.so.3  # where mfusepy looks first
fi
if ! python3 -c "import diffusers, pydantic, torchsde, torchao, compel, peft, mfusepy" 2>/dev/null \
    && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true; df -h /tmp; } | tee "$out/gpu.txt"
export PYTHONUNBUFFERED=1
suites=()
while [[ $# -gt 0 && $1 != -* ]]; do  # suite names first; from the first flag on, the benchmark's own flags
  suites+=(--suite "$1")
  shift
done
if [[ ${#suites[@]} -eq 0 ]]; then suites=(--suite gpu-check); fi
python3 -m benchmarks --out "$out" --volume-dir /tmp/bench-volume "${suites[@]}" "$@" 2>&1 | tee "$out/log.txt"
