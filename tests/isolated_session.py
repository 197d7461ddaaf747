"""Drive the worker the way it runs on RunPod, inside whatever isolation the caller set up.

    python tests/isolated_session.py MODEL_PATH OUT_DIR

Runs `--test --out`, then the runpod local API with good and bad jobs, then stops it with SIGTERM,
and prints one JSON summary line. test_guarantees.py runs it inside a network namespace with no
route out and under strace, with the guard of tests/guard on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOBS = [
    {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 1},
    {"prompt": "a lighthouse", "width": 264, "height": 256, "num_inference_steps": 2, "scheduler": "dpmpp_2m_karras",
     "output_format": "webp", "quality": 80},
    {"prompt": "$(touch /tmp/pwned); ../../etc/passwd `id` {{7*7}} %s", "negative_prompt": "/runpod-volume/x",
     "width": 256, "height": 256, "num_inference_steps": 1},
    {"prompt": "a lighthouse", "width": 255},
    {"prompt": ""},
]


def _png(mode: str, size: tuple[int, int], color: object) -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# Image to image, inpainting, a long weighted prompt (compel), a LoRA (LORA_DIR's `style`), an embedding
# (EMBEDDINGS_DIR's `grainy`), a ControlNet with canny edges (CONTROLNET_DIR's `edges`) and an image prompt
# (IP_ADAPTER_DIR's `ip-adapter_sdxl`), under the same isolation.
FEATURE_JOBS = [
    {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 5,
     "loras": [{"name": "style", "scale": 0.7}]},
    {"prompt": "a lighthouse", "image": _png("RGB", (256, 256), (40, 90, 160)), "strength": 0.5,
     "num_inference_steps": 2, "seed": 2},
    {"prompt": "a lighthouse", "image": _png("RGB", (256, 256), (40, 90, 160)), "mask": _png("L", (256, 256), 255),
     "num_inference_steps": 2, "seed": 3},
    {"prompt": "(a lighthouse:1.3), [fog], " + ", ".join(f"detail {i}" for i in range(80)), "width": 256,
     "height": 256, "num_inference_steps": 2, "seed": 4},
    {"prompt": "a lighthouse, (grainy:1.2)", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 6},
    {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 7,
     "controlnets": [{"name": "edges", "image": _png("RGB", (320, 320), (200, 40, 40)), "preprocess": "canny"}]},
    {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 8,
     "ip_adapter": {"name": "ip-adapter_sdxl", "image": _png("RGB", (300, 200), (200, 60, 30))}},
]


def post(base: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base}/runsync", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def main() -> int:
    model_path, out_dir = sys.argv[1], Path(sys.argv[2])
    env = {**os.environ, "MODEL_PATH": model_path, "DEVICE": "cpu", "PYTHONDONTWRITEBYTECODE": "1"}
    summary: dict = {}
    self_test = subprocess.run([sys.executable, "handler_volume_optimized.py", "--test", "--out",
                                str(out_dir / "self-test.png")], cwd=ROOT, env=env, capture_output=True, text=True)
    summary["self_test"] = {"returncode": self_test.returncode, "stdout": self_test.stdout[-2000:]}

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (out_dir / "api.log").open("w")
    api = subprocess.Popen([sys.executable, "handler_volume_optimized.py", "--rp_serve_api", "--rp_api_host",
                            "127.0.0.1", "--rp_api_port", str(port)], cwd=ROOT, env=env, stdout=log,
                           stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and api.poll() is None:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.3)
    replies = [post(base, {"input": job}) for job in JOBS + FEATURE_JOBS]
    summary["jobs"] = [{"http": status, "status": reply.get("status"), "error": reply.get("error"),
                        "images": len((reply.get("output") or {}).get("images", []))} for status, reply in replies]
    api.send_signal(signal.SIGTERM)
    summary["api_returncode"] = api.wait(timeout=60)
    print("SUMMARY " + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
