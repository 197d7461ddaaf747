#!/usr/bin/env bash
# Fetch into .whl/ what the GPU check carries to a lent machine with no network (the device tool's `carry`): the
# image's locked packages the machine does not bring itself (python -m dev.lock --carried: requirements.lock
# without torch's CUDA build, what torch brings and the largest wheels), each checked against its lock hash, for
# its Python 3.12 on x86_64; mfusepy and Debian's fuse3 packages for the suite netfs. Needs PyPI and apt.
#   bash scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir .whl
.venv/bin/python -m dev.lock --carried > .whl/carried.lock
platform=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
.venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes "${platform[@]}" \
  -d .whl -r .whl/carried.lock
.venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps "${platform[@]}" -d .whl/fuse \
  "mfusepy==$(sed -n 's/^mfusepy==//p' requirements-dev.txt)"
(cd .whl && apt-get download fuse3 libfuse3-3 >/dev/null)
size=$(du -sb .whl | cut -f1)
limit=$((58 * 1024 * 1024))  # the carry holds 64 MiB with the working tree (about 3 MB)
if (( size > limit )); then
  echo "the wheels are $((size / 1048576)) MiB, over the carry's room; the largest:" >&2
  find .whl -type f -printf "%s %p\n" | sort -rn | head -5 >&2
  exit 1
fi
echo ".whl: $(find .whl -name '*.whl' | wc -l) wheels, $((size / 1048576)) MiB"
