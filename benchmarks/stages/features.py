"""The jobs beyond text to image, through the worker as a scenario sets it up: image to image, inpainting, a
long weighted prompt, a LoRA, a textual-inversion embedding, one and two ControlNets and an IP-Adapter image
prompt, and the text-to-image job with a preview every step (drawn by a taesdxl-sized tiny decoder, then by the
linear colour map), each timed warm beside a text-to-image job of the same size, with how the UNet served it
(graph replays or eager calls, where CUDA graphs are on), whether its image has any content at all (a NaN in the
decode comes out flat black), and a hash of it: the text-to-image job run again after the others must draw the
same image as before them, and previews change no image.
"""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path
from typing import Any

from benchmarks.results import FeatureJob, FeaturesResult, Spread
from benchmarks.stages.common import PROMPT, SEED, timed
from sdxl_worker.controlnets.files import ControlNetSettings
from sdxl_worker.embeddings.files import EmbeddingSettings
from sdxl_worker.ip_adapters.files import IpAdapterSettings
from sdxl_worker.loras.files import LoraSettings
from sdxl_worker.settings import Settings
from sdxl_worker.watch.settings import WatchSettings

LORA = "bench-style"
LORA_RANK = 32
EMBEDDING = "bench-grain"
CONTROLNETS = ("bench-edges", "bench-edges-again")  # the second a link to the first: the same weights, loaded twice
IP_ADAPTER = "ip-adapter_sdxl"
PREVIEWS = {"a preview every step, tiny decoder": "taesdxl", "a preview every step, linear map": "linear"}


def feature_jobs(size: int, steps: int, image_b64: str) -> dict[str, dict[str, Any]]:
    """The jobs measured, by name; `image_b64` is the text-to-image job's own output (a real picture to edit)."""
    from PIL import Image

    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (0, 0, size // 2, size))  # the left half repainted
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    base = {"width": size, "height": size, "num_inference_steps": steps, "seed": SEED}

    def control(name: str) -> dict[str, Any]:
        return {"name": name, "image": image_b64, "scale": 0.8, "preprocess": "canny"}

    details = ", ".join(f"detail {i}" for i in range(60))
    return {
        "text to image": {"prompt": PROMPT, **base},
        "image to image, strength 0.6": {"prompt": PROMPT, "image": image_b64, "strength": 0.6, **base},
        "inpainting, left half": {"prompt": PROMPT, "image": image_b64,
                                  "mask": base64.b64encode(buffer.getvalue()).decode(), **base},
        "long weighted prompt": {"prompt": f"({PROMPT}:1.2), [fog], {details}", **base},
        f"LoRA (rank {LORA_RANK}, UNet and text encoders)": {"prompt": PROMPT, "loras": [{"name": LORA, "scale": 0.8}],
                                                            **base},
        "textual-inversion embedding": {"prompt": f"{PROMPT}, {EMBEDDING}", **base},
        "one ControlNet, canny": {"prompt": PROMPT, "controlnets": [control(CONTROLNETS[0])], **base},
        "two ControlNets": {"prompt": PROMPT, "controlnets": [control(name) for name in CONTROLNETS], **base},
        "IP-Adapter image prompt": {"prompt": PROMPT, "ip_adapter": {"name": IP_ADAPTER, "image": image_b64}, **base},
        **{name: {"prompt": PROMPT, "preview": 1, **base} for name in PREVIEWS},
        "text to image after the others": {"prompt": PROMPT, **base},
    }


def measure_features(settings: Settings, size: int, steps: int, runs: int, lora_dir: Path) -> FeaturesResult:
    from dev.controlnet import write_controlnet
    from dev.embedding import write_embedding
    from dev.ip_adapter import write_ip_adapter
    from dev.lora import write_lora
    from dev.tiny_decoder import write_tiny_decoder
    from sdxl_worker.serving.worker import Worker
    from sdxl_worker.watch.previews import Previewer

    model = Path(settings.model_path)
    if not (lora_dir / f"{LORA}.safetensors").is_file():
        write_lora(model, lora_dir / f"{LORA}.safetensors", rank=LORA_RANK)
    embeddings, controlnets = lora_dir.parent / "embeddings", lora_dir.parent / "controlnets"
    if not (embeddings / f"{EMBEDDING}.safetensors").is_file():
        write_embedding(model, embeddings / f"{EMBEDDING}.safetensors", vectors=4)
    if not (controlnets / CONTROLNETS[1]).exists():
        write_controlnet(model, controlnets / CONTROLNETS[0], fp16=True)
        (controlnets / CONTROLNETS[1]).symlink_to(CONTROLNETS[0])
    ip_adapters = lora_dir.parent / "ip-adapter"
    if not (ip_adapters / f"{IP_ADAPTER}.safetensors").is_file():
        write_ip_adapter(model, ip_adapters, IP_ADAPTER)
    tiny_decoder = lora_dir.parent / "taesdxl"
    if not (tiny_decoder / "config.json").is_file():
        write_tiny_decoder(tiny_decoder)
    settings = settings.model_copy(update={
        "watch": WatchSettings(preview_vae_dir=str(tiny_decoder)),
        "loras": LoraSettings(lora_dir=str(lora_dir)), "embeddings": EmbeddingSettings(embeddings_dir=str(embeddings)),
        "controlnets": ControlNetSettings(controlnet_dir=str(controlnets)),
        "ip_adapter": IpAdapterSettings(ip_adapter_dir=str(ip_adapters))})
    device = settings.device
    worker = Worker.start(settings)
    if worker.pipe is None:
        raise RuntimeError(worker.startup_error)
    worker.progress = lambda job, update: None
    forward = worker.pipe.unet.forward

    def handle(job: dict[str, Any]) -> dict[str, Any]:
        reply = worker.handle({"id": "bench", "input": job})
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    reference = handle({"prompt": PROMPT, "width": size, "height": size, "num_inference_steps": steps, "seed": SEED})
    results = []
    for name, job in feature_jobs(size, steps, reference["images"][0]).items():
        if PREVIEWS.get(name) == "linear":
            worker.previewer = Previewer()  # in place of the tiny decoder the worker loaded
        first_s, reply = timed(lambda job=job: handle(job), device)
        counts = _unet_counts(forward)
        warm = [handle(job)["timings"]["inference_s"] for _ in range(runs)]
        after = _unet_counts(forward)
        per_job = None if counts is None or after is None else tuple((b - a) // runs for a, b in
                                                                      zip(counts, after, strict=True))
        results.append(FeatureJob(
            job=name, mode=reply["mode"], first_s=round(first_s, 3), warm=Spread(tuple(warm)),
            unet_replays=per_job[0] if per_job else None, unet_eager_calls=per_job[1] if per_job else None,
            image_std=_image_std(reply["images"][0]), prompt_tokens=reply["prompt_tokens"]["prompt"],
            image_sha=hashlib.sha256(reply["images"][0].encode()).hexdigest()[:12]))
    return FeaturesResult(applied=tuple(worker.speed.labels()), jobs=tuple(results))


def _unet_counts(forward: Any) -> tuple[int, int] | None:
    """(graph replays, eager calls) so far, where the UNet runs through a captured CUDA graph."""
    if not hasattr(forward, "replays"):
        return None
    return forward.replays, forward.eager_calls


def _image_std(image_b64: str) -> float:
    """The 8-bit image's standard deviation: 0 for a flat picture, such as the black of a NaN decode."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(image_b64))).convert("RGB"), dtype=np.float64)
    return round(float(pixels.std()), 2)
