#!/usr/bin/env bash
# Build and push the worker image, then create or update the RunPod serverless template and endpoint with
# the network volume attached. Re-running updates, never duplicates.
#
#   RUNPOD_API_KEY=... IMAGE=you/photonicfusion-sdxl-worker:1.0.0 NETWORK_VOLUME_ID=abc123 \
#     bash deploy_volume_optimized.sh [--dry-run] [flags]
#
# Flags (each also an env var): --image IMAGE, --volume-id NETWORK_VOLUME_ID, --endpoint-name ENDPOINT_NAME,
# --gpu-types GPU_TYPES, --workers-min WORKERS_MIN, --workers-max WORKERS_MAX, --idle-timeout IDLE_TIMEOUT,
# --flashboot on|off FLASHBOOT, --container-disk-gb CONTAINER_DISK_GB, --max-pixels MAX_PIXELS,
# --skip-build (push nothing; deploy an image already pushed), --dry-run (print every command and API
# request, change nothing). PYTHON picks the interpreter that has the runpod package (default python3).
set -euo pipefail
cd "$(dirname "$0")"

die() {
  echo "deploy_volume_optimized.sh: $*" >&2
  exit 2
}

image=${IMAGE:-}
volume_id=${NETWORK_VOLUME_ID:-}
endpoint_name=${ENDPOINT_NAME:-photonicfusion-sdxl}
gpu_types=${GPU_TYPES:-ADA_24,AMPERE_48,ADA_48_PRO}
workers_min=${WORKERS_MIN:-0}
workers_max=${WORKERS_MAX:-3}
idle_timeout=${IDLE_TIMEOUT:-5}
flashboot=${FLASHBOOT:-on}
container_disk_gb=${CONTAINER_DISK_GB:-20}
max_pixels=${MAX_PIXELS:-}
python=${PYTHON:-python3}
dry_run=0
skip_build=0

while [[ $# -gt 0 ]]; do
  case $1 in
    --image) image=${2:-}; shift 2 ;;
    --volume-id) volume_id=${2:-}; shift 2 ;;
    --endpoint-name) endpoint_name=${2:-}; shift 2 ;;
    --gpu-types) gpu_types=${2:-}; shift 2 ;;
    --workers-min) workers_min=${2:-}; shift 2 ;;
    --workers-max) workers_max=${2:-}; shift 2 ;;
    --idle-timeout) idle_timeout=${2:-}; shift 2 ;;
    --flashboot) flashboot=${2:-}; shift 2 ;;
    --container-disk-gb) container_disk_gb=${2:-}; shift 2 ;;
    --max-pixels) max_pixels=${2:-}; shift 2 ;;
    --skip-build) skip_build=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown flag $1 (see --help)" ;;
  esac
done

# Everything is checked before anything runs.
[[ -n $image ]] || die "IMAGE (or --image name:tag) is required"
[[ $image == *:* ]] || die "IMAGE must carry a tag (name:tag), got '$image'"
[[ -n $volume_id ]] || die "NETWORK_VOLUME_ID (or --volume-id) is required"
[[ $dry_run == 1 || -n ${RUNPOD_API_KEY:-} ]] || die "RUNPOD_API_KEY is not set"
[[ $flashboot == on || $flashboot == off ]] || die "--flashboot takes on or off, got '$flashboot'"
for number in "$workers_min" "$workers_max" "$idle_timeout" "$container_disk_gb"; do
  [[ $number =~ ^[0-9]+$ ]] || die "workers, idle timeout and disk size must be whole numbers, got '$number'"
done
(( workers_min <= workers_max )) || die "--workers-min ($workers_min) is above --workers-max ($workers_max)"
if [[ $skip_build == 0 ]]; then
  command -v docker >/dev/null || die "docker is not installed (or use --skip-build for an image already pushed)"
fi
command -v "$python" >/dev/null || die "$python is not installed"
"$python" -c "import runpod" 2>/dev/null || die "the runpod package is missing: $python -m pip install runpod==1.12.0"

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

args=(--image "$image" --network-volume-id "$volume_id" --endpoint-name "$endpoint_name" --gpu-ids "$gpu_types"
      --workers-min "$workers_min" --workers-max "$workers_max" --idle-timeout "$idle_timeout"
      --flashboot "$flashboot" --container-disk-gb "$container_disk_gb")
if [[ -n $max_pixels ]]; then args+=(--max-pixels "$max_pixels"); fi
if [[ $dry_run == 1 ]]; then args+=(--dry-run); fi
"$python" -m dev.runpod_deploy "${args[@]}"
