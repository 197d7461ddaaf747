"""Warm jobs: the worker started with a scenario's settings against stock diffusers, on the same seeds.

Stock is loaded once and measured alone first (first call, peak memory); then for each scenario its warm
runs alternate with the worker's (stock, ours, stock, ours, ...), so that load coming and going on a shared
host lands on both sides rather than on whichever was measured in its block.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.results import GenerationResult, Kernel, Profile, Spread, StockGeneration
from benchmarks.stages.common import (
    PROMPT,
    SEED,
    call_pipeline,
    memory_gib,
    peak_gib,
    release_cached,
    reset_peak,
    stock_load,
    timed,
)
from sdxl_worker.contract.job_schema import MIN_PIXELS
from sdxl_worker.settings import Settings


class Stock:
    """Stock diffusers, loaded once: measured alone, then the reference run before each of ours."""

    def __init__(self, volume: Path, device: str, size: int, steps: int) -> None:
        import numpy as np

        self.device, self.size, self.steps = device, size, steps
        self.pipe = stock_load(volume, "fp16" if device.startswith("cuda") else None, device)
        first_s, _ = timed(self._call, device)
        reset_peak(device)
        _, result = timed(self._call, device)
        vram, reserved = peak_gib(device)
        self.alone = StockGeneration(round(first_s, 3), vram, reserved)
        self.image = np.asarray(result.images[0])
        self.latents = call_pipeline(self.pipe, size, steps, output_type="latent").images.float().cpu()
        release_cached(device)
        self.held = memory_gib(device)  # its weights alone, while ours runs beside it

    def _call(self) -> Any:
        return call_pipeline(self.pipe, self.size, self.steps)

    def run(self) -> float:
        seconds, _ = timed(self._call, self.device)
        return seconds


def worker_settings(volume: Path, device: str, size: int, overrides: Mapping[str, str]) -> Settings:
    """The worker's settings for a scenario: its overrides on the defaults, never this process's environment."""
    env = {"MODEL_PATH": str(volume), "DEVICE": device, "MAX_PIXELS": str(max(size * size, MIN_PIXELS)), **overrides}
    return Settings.from_env(env)


def measure_generation(stock: Stock, settings: Settings, runs: int, profile: bool) -> GenerationResult:
    import numpy as np
    from PIL import Image

    from sdxl_worker.serving.worker import Worker

    device, size, steps = stock.device, stock.size, stock.steps
    worker = Worker.start(settings)
    if worker.pipe is None:
        raise RuntimeError(worker.startup_error)
    worker.progress = lambda job, update: None
    job = {"id": "bench", "input": {"prompt": PROMPT, "width": size, "height": size, "num_inference_steps": steps,
                                    "seed": SEED}}

    def handle() -> dict[str, Any]:
        reply = worker.handle(job)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    first_s, _ = timed(handle, device)
    stock_runs, ours_runs, totals = [], [], []
    for _ in range(runs):
        stock_runs.append(stock.run())
        _, reply = timed(handle, device)
        ours_runs.append(reply["timings"]["inference_s"])
        totals.append(reply["timings"]["total_s"])
    # Peak memory from one more job alone: during stock's calls the peak would be stock's activations; and with
    # the allocator's cache of stock's activations handed back, so that ours' reserved memory is its own.
    release_cached(device)
    reset_peak(device)
    _, reply = timed(handle, device)
    vram, reserved = peak_gib(device, stock.held)
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))).convert("RGB"))
    latents = call_pipeline(worker.pipe, size, steps, output_type="latent").images.float().cpu()
    profiled = profile_call(handle, device) if profile else None
    timings = worker.start_timings
    return GenerationResult(
        applied=tuple(worker.speed.labels()),
        start_s=round(timings["load_s"] + timings["speedups_s"] + timings["warm_up_s"], 3),
        warm_up_s=round(timings["warm_up_s"], 3),
        first_job_s=round(first_s, 3),
        stock=Spread(tuple(round(s, 3) for s in stock_runs)),
        ours=Spread(tuple(ours_runs)),
        ours_total=Spread(tuple(totals)),
        peak_vram_gib=vram,
        peak_reserved_gib=reserved,
        latents_max_abs_diff=round(float((latents - stock.latents).abs().max()), 5),
        image_psnr_db=psnr(image, stock.image),
        profile=profiled,
    )


def psnr(a: Any, b: Any) -> float | None:
    """Peak signal-to-noise ratio of two 8-bit images in dB; None when they are identical."""
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


def profile_call(fn: Callable[[], Any], device: str, top: int = 12) -> Profile:
    """One call under torch.profiler: how busy the device was and with which kernels (on CPU: which ops).

    Kernel time far below the wall time means the GPU waits on the CPU launching work; the top kernels
    say what a faster warm job has to make faster. The profiler adds CPU overhead, so its wall time is
    not the benchmark's latency figure.
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        wall_s, _ = timed(fn, device)
    if on_cuda:
        kernels = [(e.key, e.self_device_time_total, e.count) for e in prof.key_averages()
                   if e.device_type == torch.autograd.DeviceType.CUDA]
    else:
        kernels = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
    busy_us = sum(us for _, us, _ in kernels)
    ranked = sorted(kernels, key=lambda k: k[1], reverse=True)[:top]
    return Profile(what="CUDA kernels" if on_cuda else "CPU ops (self time)", wall_s=round(wall_s, 3),
                   busy_s=round(busy_us / 1e6, 3),
                   top=tuple(Kernel(name[:120], round(us / 1e3, 2), calls, round(us / busy_us, 3) if busy_us else 0.0)
                             for name, us, calls in ranked))
