"""Run one validated job through the pipeline: seeds, sampler, progress, timing.

Each image gets its own generator seeded with seeds[i] = seed + i, so image i of a batch can be
reproduced alone by sending seeds[i] with num_images=1. Generators live on the CPU: the same seed
gives the same starting noise on any GPU model or on a CPU, which is what a user who saves a seed
expects.
"""

from __future__ import annotations

import inspect
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdxl_worker.contract.image_input import InputImages
from sdxl_worker.contract.job_schema import JobInput
from sdxl_worker.contract.prompts import EncodedPrompts

StepFn = Callable[[int, int, Any], None]  # steps done, steps in all, the latents after them


class NonFiniteLatents(RuntimeError):
    """The latents went NaN or Inf while sampling: the image would decode flat, so there is none to return."""

    def __init__(self, step: int, steps: int) -> None:
        super().__init__(f"the latents went non-finite (NaN or Inf) by step {step} of {steps}, so no image is "
                         "returned (it would be flat)")
        self.step, self.steps = step, steps


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


def generate(pipe: Any, job: JobInput, scheduler: Any, on_step: StepFn | None = None,
             inputs: InputImages | None = None, prompts: EncodedPrompts | None = None,
             conditioning: dict[str, Any] | None = None) -> Generated:
    """Generate `job.num_images` images with `pipe` (text-to-image, image-to-image or inpainting, as `inputs`
    say; `conditioning`: the ControlNets' and the image prompt's arguments); the caller owns validation and
    encoding. `on_step` sees every step's end (progress, previews, a stop: an exception it raises ends the job there,
    before the VAE decode)."""
    import torch

    seeds = job_seeds(job.seed, job.num_images)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    steps = job.steps

    def step_end(running: Any, step: int, _timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        done, total = step + 1, getattr(running, "num_timesteps", steps) or steps  # image to image runs fewer
        latents = callback_kwargs["latents"]
        if (done % progress_interval(total) == 0 or done == total) and not torch.isfinite(latents).all():
            # About every tenth step and the last (one GPU sync each): a NaN stays NaN, so the last check alone
            # decides; the others stop a lost job early.
            raise NonFiniteLatents(done, total)
        if on_step is not None:
            on_step(done, total, latents)
        return callback_kwargs

    shape: dict[str, Any] = {"width": job.width, "height": job.height}
    if inputs is not None:
        shape = {"image": inputs.image, "strength": job.image_strength}
        if inputs.mask is not None:
            shape.update(mask_image=inputs.mask, width=inputs.width, height=inputs.height)

    if hasattr(scheduler, "noise_sampler_seed"):
        # The SDE sampler draws its Brownian noise from its own seed, not from the generators (and
        # from a random one when unset): one seed per image keeps each image reproducible alone.
        scheduler.noise_sampler_seed = seeds
    pipe.scheduler = scheduler
    started = time.perf_counter()
    with torch.inference_mode():
        text = prompts.kwargs if prompts is not None else {"prompt": job.prompt, "negative_prompt": job.negative_prompt,
                                                            "clip_skip": job.clip_skip}
        images = pipe(
            **text,
            **shape,
            **(conditioning or {}),
            **({"timesteps": job.timesteps} if job.timesteps is not None else {"num_inference_steps": steps}),
            guidance_scale=job.guidance_scale,
            **({"eta": job.eta} if job.eta is not None else {}),
            num_images_per_prompt=job.num_images,
            generator=generators,
            callback_on_step_end=step_end,
        ).images
    return Generated(images=images, seeds=seeds, inference_s=time.perf_counter() - started)


def pipeline_on(cls: Any, pipe: Any, **modules: Any) -> Any:
    """A `cls` pipeline built on `pipe`'s components (no weight copied), with `modules` added or replaced.

    Built directly rather than with `from_pipe`: diffusers 0.42's from_pipe ends in `.to(dtype=float32)` when no
    dtype is given (and `.to(dtype)` with one), casting the shared UNet and text encoders in place, which undoes
    the float16 load and the bf16 VAE for every pipeline and copies the fused q/k/v views apart.
    """
    accepted = inspect.signature(cls.__init__).parameters
    components = {name: module for name, module in {**pipe.components, **modules}.items() if name in accepted}
    options = {key: value for key, value in pipe.config.items() if key in accepted and key not in components}
    built = cls(**components, **options)
    built.set_progress_bar_config(disable=True)
    return built
