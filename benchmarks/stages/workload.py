"""A realistic job mix, job by job through the worker and through stock diffusers, interleaved.

The mix is data (MIX): SDXL's trained sizes, one to four images, 30% of the jobs with a rank-32 LoRA, 15% with a
prompt past 77 tokens, image to image, four samplers, in a fixed shuffled order. Both sides load the same volume;
a first pass through the worker alone shows what a user waits for once (a new shape's graph capture, a LoRA's first
load), then each warm pass runs every job on stock, then on ours. Ours is timed as the reply's `total_s` less its
image encoding (stock returns decoded images too): the LoRA's loading and merge and the prompt's encoding are in
it, as they are in stock's call. Stock keeps the LoRAs loaded and switches them with `set_adapters` and
`disable_lora`, as diffusers documents, and truncates a prompt past 77 tokens (ours encodes all of it).

Fast sampling is two kinds of its own: a step-distilled LoRA's recipes (SDXL-Lightning's 4 steps on trailing Euler,
LCM-LoRA's 8 on LCM), guidance 0, with a rank-64 LoRA (the size of the published distilled LoRAs); their step
count is the recipe's, whatever the run's.

Sides are scaled from the 1024 class by the run's size (never below 256, the job schema's smallest side), so the
tiny CPU run keeps the mix's distinct shapes.
"""

from __future__ import annotations

import base64
import io
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.results import Spread, WorkloadKind, WorkloadResult
from benchmarks.stages.common import PROMPT, SEED, memory_gib, peak_gib, release_cached, reset_peak, stock_load, timed
from sdxl_worker.contract.job_schema import MIN_SIDE
from sdxl_worker.logs import libraries_quiet
from sdxl_worker.loras.files import LoraSettings
from sdxl_worker.settings import Settings

LORA, LORA_RANK, LORA_SCALE = "workload-style", 32, 0.8
FAST_LORA, FAST_LORA_RANK = "workload-distilled", 64  # SDXL-Lightning's and LCM-LoRA's rank
RANKS = {LORA: LORA_RANK, FAST_LORA: FAST_LORA_RANK}
GUIDANCE = 7.0
STRENGTH = 0.6
SAMPLERS = ("default", "euler_ancestral", "dpmpp_2m_karras", "unipc")  # in turn, job by job
LONG_PROMPT = f"{PROMPT}, " + ", ".join(f"detail {i}" for i in range(40))  # 3 chunks of 77 tokens


@dataclass(frozen=True)
class Kind:
    """A kind of job at the 1024 class: its size and image count, and what else it asks for."""

    name: str
    width: int
    height: int
    images: int = 1
    lora: str | None = None  # LORA or FAST_LORA
    long_prompt: bool = False
    img2img: bool = False
    steps: int | None = None  # a recipe's own count; None: the run's
    sampler: str | None = None  # a recipe's own sampler; None: SAMPLERS in turn
    guidance: float = GUIDANCE
    note: str = ""

    def job_steps(self, steps: int) -> int:
        return self.steps if self.steps is not None else steps


# (kind, jobs of it in one pass of the mix): 24 jobs, 10 with a LoRA (4 of them distilled), 3 with a long prompt.
MIX: tuple[tuple[Kind, int], ...] = (
    (Kind("text to image 1024x1024", 1024, 1024), 3),
    (Kind("text to image 832x1216", 832, 1216), 2),
    (Kind("text to image 1216x832", 1216, 832), 1),
    (Kind("text to image 768x1344", 768, 1344), 1),
    (Kind("2 images 896x1152", 896, 1152, images=2), 2),
    (Kind("4 images 1024x1024", 1024, 1024, images=4), 1),
    (Kind(f"LoRA rank {LORA_RANK} 1024x1024", 1024, 1024, lora=LORA), 4),
    (Kind(f"LoRA rank {LORA_RANK} 832x1216", 832, 1216, lora=LORA), 2),
    (Kind("long prompt 1024x1024", 1024, 1024, long_prompt=True), 3),
    (Kind(f"image to image 1024x1024, strength {STRENGTH}", 1024, 1024, img2img=True), 1),
    (Kind(f"4 steps, guidance 0, LoRA rank {FAST_LORA_RANK} 1024x1024", 1024, 1024, lora=FAST_LORA, steps=4,
          sampler="euler_trailing", guidance=0.0, note="SDXL-Lightning's recipe: euler_trailing"), 2),
    (Kind(f"8 steps, guidance 0, LoRA rank {FAST_LORA_RANK} 1024x1024", 1024, 1024, lora=FAST_LORA, steps=8,
          sampler="lcm", guidance=0.0, note="LCM-LoRA's recipe: lcm"), 2),
)


def mix_order() -> list[tuple[Kind, str]]:
    """Every job of one pass as (kind, sampler), in the mix's fixed order."""
    jobs = [kind for kind, count in MIX for _ in range(count)]
    random.Random(0).shuffle(jobs)
    return [(kind, kind.sampler or SAMPLERS[i % len(SAMPLERS)]) for i, kind in enumerate(jobs)]


def scaled(side: int, size: int) -> int:
    """A 1024-class side at the run's size, a multiple of 32 (every UNet's downsampling divides it)."""
    factor = max(size / 1024, MIN_SIDE / min(min(k.width, k.height) for k, _ in MIX))
    return max(MIN_SIDE, round(side * factor / 32) * 32)


def measure_workload(settings: Settings, size: int, steps: int, runs: int, lora_dir: Path,
                     on_start: Callable[[Any], None] | None = None) -> WorkloadResult:
    """The mix through a worker started with `settings` and through stock diffusers; `on_start` (tests) sees the
    worker before its first job."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image

    from dev.lora import write_lora
    from sdxl_worker.contract.schedulers import build_schedulers
    from sdxl_worker.serving.worker import Worker
    from sdxl_worker.speed.cuda_graphs import graphed_forward

    lora_files = {name: lora_dir / f"{name}.safetensors" for name in RANKS}
    for name, lora_file in lora_files.items():
        if not lora_file.is_file():
            write_lora(Path(settings.model_path), lora_file, rank=RANKS[name])
    largest = max(scaled(k.width, size) * scaled(k.height, size) for k, _ in MIX)
    settings = settings.model_copy(update={"loras": LoraSettings(lora_dir=str(lora_dir)),
                                           "max_pixels": max(settings.max_pixels, largest)})
    device = settings.device
    on_cuda = device.startswith("cuda")

    stock = stock_load(Path(settings.model_path), "fp16" if on_cuda else None, device)
    with libraries_quiet():  # PEFT warns at a second adapter, which is how diffusers documents switching them
        for name, lora_file in lora_files.items():
            stock.load_lora_weights(str(lora_file), adapter_name=name)
    stock.disable_lora()
    stock_pipes = {"txt2img": stock, "img2img": StableDiffusionXLImg2ImgPipeline(**stock.components)}
    stock_pipes["img2img"].set_progress_bar_config(disable=True)
    samplers = build_schedulers(stock.scheduler)
    stock_held = memory_gib(device)

    worker = Worker.start(settings)
    if worker.pipe is None:
        raise RuntimeError(worker.startup_error)
    worker.progress = lambda job, update: None
    if on_start is not None:
        on_start(worker)
    ours_held = _less(memory_gib(device), stock_held)

    sources: dict[tuple[int, int], tuple[str, Any]] = {}  # an image to edit per size: ours' own text-to-image

    def ours_job(kind: Kind, sampler: str, seed: int) -> dict[str, Any]:
        width, height = scaled(kind.width, size), scaled(kind.height, size)
        job: dict[str, Any] = {"prompt": LONG_PROMPT if kind.long_prompt else PROMPT, "num_images": kind.images,
                               "num_inference_steps": kind.job_steps(steps), "seed": seed, "scheduler": sampler,
                               "guidance_scale": kind.guidance}
        if kind.img2img:
            job.update(image=source(width, height)[0], strength=STRENGTH)
        else:
            job.update(width=width, height=height)
        if kind.lora:
            job["loras"] = [{"name": kind.lora, "scale": LORA_SCALE}]
        return job

    def source(width: int, height: int) -> tuple[str, Any]:
        if (width, height) not in sources:
            reply = handle({"prompt": PROMPT, "width": width, "height": height, "num_inference_steps": steps,
                            "seed": SEED})
            picture = Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))).convert("RGB")
            sources[width, height] = reply["images"][0], picture
        return sources[width, height]

    def handle(job: dict[str, Any]) -> dict[str, Any]:
        reply = worker.handle({"id": "workload", "input": job})
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply

    def run_ours(kind: Kind, sampler: str, seed: int) -> tuple[float, str | None]:
        job = ours_job(kind, sampler, seed)  # its source image made first, outside the timing
        reply = handle(job)
        timings = reply["timings"]
        return timings["total_s"] - timings["encode_s"], timings.get("graph")

    def run_stock(kind: Kind, sampler: str, seed: int) -> float:
        width, height = scaled(kind.width, size), scaled(kind.height, size)
        pipe = stock_pipes["img2img" if kind.img2img else "txt2img"]
        pipe.scheduler = samplers[sampler]
        shape = {"image": source(width, height)[1], "strength": STRENGTH} if kind.img2img else {
            "width": width, "height": height}

        def call() -> Any:
            if kind.lora:
                pipe.enable_lora()
                pipe.set_adapters([kind.lora], adapter_weights=[LORA_SCALE])
            else:
                pipe.disable_lora()
            with torch.inference_mode(), libraries_quiet():  # diffusers' notice of the tokens past 77 it drops
                return pipe(LONG_PROMPT if kind.long_prompt else PROMPT, **shape, num_images_per_prompt=kind.images,
                            num_inference_steps=kind.job_steps(steps), guidance_scale=kind.guidance,
                            generator=[torch.Generator("cpu").manual_seed(seed + i) for i in range(kind.images)])

        seconds, _ = timed(call, device)
        return seconds

    order = mix_order()
    first: dict[str, tuple[float, str | None]] = {}
    first_pass = 0.0
    for index, (kind, sampler) in enumerate(order):
        seconds, graph = run_ours(kind, sampler, SEED + index)
        first_pass += seconds
        first.setdefault(kind.name, (seconds, graph))
    stock_s: dict[str, list[float]] = {kind.name: [] for kind, _ in MIX}
    ours_s: dict[str, list[float]] = {kind.name: [] for kind, _ in MIX}
    graphs: dict[str, set[str]] = {kind.name: set() for kind, _ in MIX}
    stock_passes, ours_passes = [], []
    for _ in range(runs):
        stock_pass = ours_pass = 0.0
        for index, (kind, sampler) in enumerate(order):
            seconds = run_stock(kind, sampler, SEED + index)
            stock_s[kind.name].append(round(seconds, 3))
            stock_pass += seconds
            seconds, graph = run_ours(kind, sampler, SEED + index)
            ours_s[kind.name].append(round(seconds, 3))
            ours_pass += seconds
            if graph is not None:
                graphs[kind.name].add(graph)
        stock_passes.append(round(stock_pass, 3))
        ours_passes.append(round(ours_pass, 3))

    def peak(run: Callable[[], Any], other: tuple[float, float] | None) -> float | None:
        """Reserved GPU memory one job of the kind takes alone, beyond what the other side holds."""
        if not on_cuda:
            return None
        release_cached(device)
        reset_peak(device)
        run()
        return peak_gib(device, other)[1]

    kinds = []
    for kind, count in MIX:
        sampler = kind.sampler or SAMPLERS[0]
        stock_peak = peak(lambda kind=kind, sampler=sampler: run_stock(kind, sampler, SEED), ours_held)
        ours_peak = peak(lambda kind=kind, sampler=sampler: run_ours(kind, sampler, SEED), stock_held)
        width, height = scaled(kind.width, size), scaled(kind.height, size)
        kinds.append(WorkloadKind(
            kind=kind.name, shape=f"{width}x{height}x{kind.images}", jobs=count,
            stock=Spread(tuple(stock_s[kind.name])), ours=Spread(tuple(ours_s[kind.name])),
            ours_first_s=round(first[kind.name][0], 3),
            first_graph=first[kind.name][1], graph=", ".join(sorted(graphs[kind.name])) or None,
            stock_peak_gib=stock_peak, ours_peak_gib=ours_peak,
            note="stock truncates it to 77 tokens" if kind.long_prompt else kind.note))
    graphed = graphed_forward(worker.pipe)
    return WorkloadResult(
        applied=tuple(worker.speed.labels()), kinds=tuple(kinds),
        images_per_pass=sum(kind.images * count for kind, count in MIX), stock_pass=Spread(tuple(stock_passes)),
        ours_pass=Spread(tuple(ours_passes)), ours_first_pass_s=round(first_pass, 3),
        graphs_kept=len(graphed.graphs) if graphed is not None else None)


def _less(a: tuple[float, float] | None, b: tuple[float, float] | None) -> tuple[float, float] | None:
    if a is None or b is None:
        return None
    return a[0] - b[0], a[1] - b[1]
