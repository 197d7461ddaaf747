#!/usr/bin/env bash
# Run the worker's main job locally, on CPU: build a tiny random-weight SDXL volume (no weights can be
# downloaded, and the worker never downloads), then check it, load it, generate one image through the
# handler and save it to demo.png. MODEL_PATH=/path/to/your/volume bash scripts/demo.sh uses a real one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
if [[ -z "${MODEL_PATH:-}" ]]; then
  MODEL_PATH="$PWD/demo-volume/photonicfusion-sdxl"
  .venv/bin/python -m dev.synthetic_volume "$MODEL_PATH" --scale tiny --extras >/dev/null
fi
export MODEL_PATH
.venv/bin/python volume_check.py --tensors  # what the worker checks at start: every tensor name and shape too
LOG_LEVEL=WARNING .venv/bin/python handler_volume_optimized.py --test --out demo.png
