"""Several models on one worker (MODELS): what a switch between two loaded models costs, and the first job after it.

The second model is a fine-tune of the first as published fine-tunes are: the same text encoders and VAE, its own
UNet (here the same UNet's files under another folder, hard-linked: a switch's cost does not depend on the weights'
values), so the worker shares what the two have in common and holds two UNets. The first job naming the second
model reads it; then each round runs a job on one model, a second job on it, and switches to the other: the
reply's `switch_s` is the switch, the first job's inference time against the second's shows what a switch leaves
for the next job to do (on a GPU, the CUDA graphs captured again).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from benchmarks.results import Spread, SwitchResult
from benchmarks.stages.common import PROMPT, SEED
from sdxl_worker.settings import Settings


def linked_copy(source: Path, out: Path) -> Path:
    """`source`'s tree at `out`, every file a hard link (no bytes copied; another folder to the worker)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out, copy_function=os.link)
    return out


def measure_switch(settings: Settings, size: int, steps: int, runs: int, work_dir: Path) -> SwitchResult:
    from sdxl_worker.serving.models import ModelSet, weight_bytes

    tuned = linked_copy(Path(settings.model_path), work_dir / "fine-tune")
    models = ModelSet.start(settings.model_copy(update={"models": f"base={settings.model_path},tuned={tuned}"}))
    job = {"prompt": PROMPT, "width": size, "height": size, "num_inference_steps": steps, "seed": SEED}

    def run(model: str) -> dict[str, Any]:
        reply = models.handle({"id": "switch", "input": {**job, "model": model}}, progress=lambda job, update: None)
        if "error" in reply:
            raise RuntimeError(f"a job on model {model!r} failed: {reply['error']}")
        return reply["timings"]

    run("base")
    first_read = run("tuned")["switch_s"]
    switches, first_jobs, second_jobs = [], [], []
    for round_ in range(runs * 2):
        timings = run("base" if round_ % 2 == 0 else "tuned")
        switches.append(timings["switch_s"])
        first_jobs.append(timings["inference_s"])
        second_jobs.append(run("base" if round_ % 2 == 0 else "tuned")["inference_s"])
    base, tuned_pipe = models.loaded["base"].pipe, models.loaded["tuned"].pipe
    shared = tuple(name for name in ("text_encoder", "text_encoder_2", "vae")
                   if getattr(base, name) is getattr(tuned_pipe, name))
    return SwitchResult(first_read_s=first_read, switch=Spread(tuple(switches)),
                        first_job_after=Spread(tuple(first_jobs)), next_job=Spread(tuple(second_jobs)),
                        model_gib=round(weight_bytes(base) / 1024**3, 3),
                        host_gib=round(models.host_bytes() / 1024**3, 3), shared=shared)
