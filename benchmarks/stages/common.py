"""What every stage shares: the prompt and seed, device timing, memory figures, stock diffusers' calls."""

from __future__ import annotations

import gc
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.results import Environment

PROMPT = "a photonic lighthouse on a cliff at dusk, volumetric light, detailed"
SEED = 1234


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> tuple[float, Any]:
    """Seconds `fn` took, the device's queued work included, and what it returned."""
    sync(device)
    started = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - started, value


def free(device: str) -> None:
    """Hand one stage's memory and compiled code back before the next stage."""
    import torch
    import torch._inductor.utils

    # Forget compiled graphs too: Dynamo would otherwise serve the next stage's fresh pipeline with the
    # previous stage's graph (it guards on shapes, not on the module), and that stage would skip compiling.
    torch._dynamo.reset()
    # And inductor's in-memory code caches: a later stage with another COMPILE_CACHE_DIR would otherwise reuse
    # kernels compiled in this process without writing them to its folder, and its cached start would miss them.
    torch._inductor.utils.clear_caches()
    torch.compiler.set_stance("default")  # a compiled worker freezes its shapes (speed.freeze_compiled_shapes)
    gc.collect()
    release_cached(device)


def release_cached(device: str) -> None:
    """Hand the caching allocator's free blocks back, so that reserved memory counts only live tensors."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def memory_gib(device: str) -> tuple[float, float] | None:
    """(allocated, reserved) GPU memory now, GiB; None off CUDA."""
    import torch

    if not device.startswith("cuda"):
        return None
    return torch.cuda.memory_allocated() / 2**30, torch.cuda.memory_reserved() / 2**30


def peak_gib(device: str, baseline: tuple[float, float] | None = None) -> tuple[float | None, float | None]:
    """Peak (allocated, reserved) GPU memory since the last reset, less `baseline` (memory another pipeline
    holds meanwhile). Reserved counts the caching allocator's pools, CUDA graphs' included: nearer nvidia-smi."""
    import torch

    if not device.startswith("cuda"):
        return None, None
    base = baseline or (0.0, 0.0)
    return (round(torch.cuda.max_memory_allocated() / 2**30 - base[0], 2),
            round(torch.cuda.max_memory_reserved() / 2**30 - base[1], 2))


def stock_load(volume: Path, variant: str | None, device: str) -> Any:
    """Stock diffusers, as its documentation loads SDXL: from_pretrained, then .to(device)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = StableDiffusionXLPipeline.from_pretrained(
        volume, variant=variant, dtype=dtype, use_safetensors=True, local_files_only=True
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_pipeline(pipe: Any, size: int, steps: int, seed: int = SEED, output_type: str = "pil") -> Any:
    """A plain pipeline call, under inference_mode as the worker's jobs run: a compiled or captured UNet
    then serves it as it serves jobs (Dynamo guards on whether its inputs are inference tensors)."""
    import torch

    with torch.inference_mode():
        return pipe(PROMPT, width=size, height=size, num_inference_steps=steps, guidance_scale=7.0,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type)


def environment(device: str) -> Environment:
    import diffusers
    import torch
    import transformers

    on_cuda = device.startswith("cuda")
    return Environment(python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
                       transformers=transformers.__version__, device=device, cpu_count=os.cpu_count(),
                       gpu=torch.cuda.get_device_name() if on_cuda else None,
                       cuda=torch.version.cuda if on_cuda else None)
