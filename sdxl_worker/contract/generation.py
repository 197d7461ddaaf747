"""Run one validated job through the pipeline: seeds, sampler, progress, timing.

Each image gets its own generator seeded with seeds[i] = seed + i, so image i of a batch can be
reproduced alone by sending seeds[i] with num_images=1. Generators live on the CPU: the same seed
gives the same starting noise on any GPU model or on a CPU, which is what a user who saves a seed
expects.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdxl_worker.contract.job_schema import JobInput

ProgressFn = Callable[[int, int], None]


@dataclass
class Generated:
    images: list[Any]
    seeds: list[int]
    inference_s: float


def job_seeds(seed: int | None, count: int) -> list[int]:
    """seed, seed+1, ... (wrapping at 2**32); a random base when the job gives none."""
    base = secrets.randbelow(2**32) if seed is None else seed
    return [(base + i) % 2**32 for i in range(count)]


def progress_interval(steps: int) -> int:
    """Report about every tenth of the steps: enough for a progress bar, few enough HTTP posts."""
    return max(1, round(steps / 10))


def generate(pipe: Any, job: JobInput, scheduler: Any, on_progress: ProgressFn | None = None) -> Generated:
    """Generate `job.num_images` images; the caller owns validation and encoding."""
    import torch

    seeds = job_seeds(job.seed, job.num_images)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    steps = job.num_inference_steps
    every = progress_interval(steps)

    def step_end(_pipe: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        done = step + 1
        if on_progress is not None and (done % every == 0 or done == steps):
            on_progress(done, steps)
        return callback_kwargs

    if hasattr(scheduler, "noise_sampler_seed"):
        # The SDE sampler draws its Brownian noise from its own seed, not from the generators (and
        # from a random one when unset): one seed per image keeps each image reproducible alone.
        scheduler.noise_sampler_seed = seeds
    pipe.scheduler = scheduler
    started = time.perf_counter()
    with torch.inference_mode():
        images = pipe(
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            width=job.width,
            height=job.height,
            num_inference_steps=steps,
            guidance_scale=job.guidance_scale,
            num_images_per_prompt=job.num_images,
            generator=generators,
            callback_on_step_end=step_end,
        ).images
    return Generated(images=images, seeds=seeds, inference_s=time.perf_counter() - started)
