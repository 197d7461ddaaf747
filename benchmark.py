"""Benchmark the worker against stock diffusers on one machine, in one run; print a table, write JSON.

    python benchmark.py                       # full-size SDXL volume on the GPU (build it if needed)
    python benchmark.py --compile             # also torch.compile: compile time, warm-cache compile
    python benchmark.py --compile --compile-scope full,blocks    # whole UNet and regional, side by side
    python benchmark.py --scale tiny --device cpu --size 256 --steps 2 --runs 1    # smoke run, seconds
    python benchmark.py --tracing-only        # the UNet's FLOPs by op, and Dynamo's tracing per compile scope:
                                              # SDXL's configs on the meta device, any CPU (a GPU run
                                              # measures the tracing inside its cached-start figure)

Measured side by side (same volume, same seeds): the raw sequential read of each load plan's bytes
(cold page cache when it can be dropped; the output says how), stock `from_pretrained(...).to(device)`
vs our loader for the fp16 variant and for the standard-files fallback, cold and warm; warm latency
of stock diffusers vs the worker's own job path; the first job after start; peak GPU memory; compile
time; and how far our output is from stock's (max abs difference of the latents, PSNR of the images).
Figures come from this run only; nothing is assumed.
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from dev.synthetic_volume import build_volume, component_config
from model_loader import load_pipeline, weight_files
from sdxl_worker.speed.options import COMPILE_SCOPES, SpeedOptions, apply_speedups
from sdxl_worker.weights.layout import Variant
from sdxl_worker.weights.offline import enforce_offline
from sdxl_worker.weights.prefetch import READ_BYTES, Prefetcher
from volume_check import check_volume

PROMPT = "a photonic lighthouse on a cliff at dusk, volumetric light, detailed"
SEED = 1234


class Bench:
    """Holds the run's settings and results; saves JSON and table after every stage: a cut run keeps them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {"settings": vars(args).copy()}
        self.started = time.perf_counter()

    def save(self) -> None:
        (self.out / "benchmark.json").write_text(json.dumps(self.results, indent=2, default=str))
        # The table too, each time: a run stopped at a device's time limit keeps it for the stages it finished.
        (self.out / "benchmark.md").write_text(table(self.results) + "\n")

    def record(self, key: str, value: Any) -> None:
        self.results[key] = value
        self.save()
        print(f"[bench] {key}: {json.dumps(value, default=str)}", flush=True)

    def record_failure(self, key: str, exc: BaseException) -> None:
        """A stage that failed on this machine is a finding: its error stands in the table, the run goes on."""
        self.record(key, {"error": f"{type(exc).__name__}: {exc}"[:2000]})


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    import torch

    # Forget compiled graphs too: dynamo would otherwise serve the next stage's fresh pipeline with the
    # previous stage's graph (it guards on shapes, not on the module), and that stage would skip compiling.
    torch._dynamo.reset()
    # And inductor's in-memory code caches: a later stage with another COMPILE_CACHE_DIR would otherwise reuse
    # kernels compiled in this process without writing them to its folder, and its cached start would miss them.
    import torch._inductor.utils

    torch._inductor.utils.clear_caches()
    torch.compiler.set_stance("default")  # a compiled worker freezes its shapes (speed.freeze_compiled_shapes)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def evict(paths: list[Path], drop_all: bool = True) -> str:
    """Drop `paths` from the page cache: all caches if we may, else per file; say which was done."""
    os.sync()
    if drop_all:
        try:
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
            return "drop_caches"
        except OSError:
            pass
    if not hasattr(os, "posix_fadvise"):
        return "none (warm cache)"
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "fadvise DONTNEED"


def raw_read(paths: list[Path]) -> float:
    buffer = bytearray(READ_BYTES)  # the prefetch readers' read size, so both reads compare
    started = time.perf_counter()
    for path in paths:
        with path.open("rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    return time.perf_counter() - started


def _parallel_read(files: list[Path]) -> None:
    """The same bytes read by the loader's prefetch readers, to separate disk speed from loader overhead."""
    with Prefetcher(files) as prefetcher:
        prefetcher.wait()


def plan_files(volume: Path, variant: Variant) -> list[Path]:
    """Every model component's files of one weight set: what the loader reads for that plan."""
    report = check_volume(volume)
    models = [name for name, component in report.components.items() if component.kind == "model"]
    return weight_files(volume, report, dict.fromkeys(models, variant))


def standard_view(volume: Path) -> Path:
    """The same volume without its fp16 files (hard links, no copy): what a fallback deployment sees."""
    view = volume.with_name(volume.name + "-standard-only")
    if view.exists():
        return view
    for path in sorted(volume.rglob("*")):
        target = view / path.relative_to(volume)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif ".fp16." not in path.name:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return view


def stock_load(volume: Path, variant: str | None, device: str) -> Any:
    import torch
    from diffusers import StableDiffusionXLPipeline

    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = StableDiffusionXLPipeline.from_pretrained(
        volume, variant=variant, dtype=dtype, use_safetensors=True, local_files_only=True
    ).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stage_loads(bench: Bench, volume: Path, device: str) -> None:
    fallback = standard_view(volume)
    plans = {"fp16": (volume, "fp16"), "standard": (fallback, None)}
    for plan, (path, variant) in plans.items():
        files = plan_files(volume, plan)
        nbytes = sum(p.stat().st_size for p in files)
        method = evict(files, bench.args.drop_caches)
        read_s = raw_read(files)
        evict(files, bench.args.drop_caches)
        parallel_s, _ = timed(lambda files=files: _parallel_read(files), "cpu")
        row = {"bytes": nbytes, "raw_read_s": round(read_s, 3), "raw_read_gb_s": round(nbytes / read_s / 1e9, 3),
               "raw_read_parallel_s": round(parallel_s, 3), "cache_drop": method}
        for loader in ("stock", "ours"):
            for state in ("cold", "warm"):
                if state == "cold":
                    evict(files, bench.args.drop_caches)
                started = time.perf_counter()
                if loader == "stock":
                    pipe = stock_load(path, variant, device)
                else:
                    pipe, record = load_pipeline(path, device)
                    row["ours_variant"] = record.variant
                    row[f"ours_{state}_components_s"] = record.components_s
                    row[f"ours_{state}_prefetch_lead_gb"] = record.prefetch_lead_gb
                sync(device)
                row[f"{loader}_{state}_s"] = round(time.perf_counter() - started, 3)
                del pipe
                free(device)
        row["stock_cold_vs_read"] = round(row["stock_cold_s"] / read_s, 2)
        row["ours_cold_vs_read"] = round(row["ours_cold_s"] / read_s, 2)
        bench.record(f"load_{plan}", row)


def call_stock(pipe: Any, size: int, steps: int, seed: int, output_type: str = "pil") -> Any:
    """A plain pipeline call, under inference_mode as the worker's jobs run: a compiled or captured UNet
    then serves it as it serves jobs (Dynamo guards on whether its inputs are inference tensors)."""
    import torch

    with torch.inference_mode():
        return pipe(PROMPT, width=size, height=size, num_inference_steps=steps, guidance_scale=7.0,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type=output_type)


def timed(fn: Any, device: str) -> tuple[float, Any]:
    sync(device)
    started = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - started, value


def peak_memory(device: str) -> dict[str, float | None]:
    """Peak GPU memory since the last reset: allocated, and reserved by the caching allocator (CUDA graphs'
    private pools count there, which makes it the figure nearer nvidia-smi's)."""
    import torch

    if not device.startswith("cuda"):
        return {"peak_vram_gib": None, "peak_reserved_gib": None}
    return {"peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def stage_attention_kernels(bench: Bench, device: str) -> None:
    """Time each SDPA kernel on the UNet's attention shapes at this size: is PyTorch's own pick the fastest?"""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    latent = bench.args.size // 8
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    # (name, heads, query tokens, key tokens): batch 2 (CFG), head width 64, as in SDXL's UNet.
    shapes = [("self 640ch", 10, (latent // 2) ** 2, (latent // 2) ** 2),
              ("self 1280ch", 20, (latent // 4) ** 2, (latent // 4) ** 2),
              ("cross 640ch", 10, (latent // 2) ** 2, 77)]
    kernels = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION}
    repeats = 20 if device.startswith("cuda") else 1
    rows: dict[str, dict[str, Any]] = {}
    for name, heads, tokens, keys in shapes:
        q = torch.randn(2, heads, tokens, 64, device=device, dtype=dtype)
        k, v = (torch.randn(2, heads, keys, 64, device=device, dtype=dtype) for _ in range(2))
        flops = 4 * 2 * heads * tokens * keys * 64
        rows[name] = {}
        for kernel, backend in kernels.items():
            # The default: every kernel allowed, in PyTorch's own order.
            backends = [backend] if backend is not None else [b for b in kernels.values() if b is not None]

            def run(backends: list[Any] = backends, qkv: tuple[Any, ...] = (q, k, v)) -> None:
                with sdpa_kernel(backends):
                    for _ in range(repeats):
                        torch.nn.functional.scaled_dot_product_attention(*qkv)

            try:
                run()  # warm-up, and the check that this kernel takes these inputs
            except RuntimeError as exc:  # "No available kernel": this backend cannot run this shape here
                rows[name][kernel] = "unsupported"
                log_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                print(f"[bench] attention {name}, {kernel}: {log_line[:200]}", flush=True)
                continue
            seconds, _ = timed(run, device)
            ms = seconds / repeats * 1000
            rows[name][kernel] = {"ms": round(ms, 3), "tflops": round(flops / (ms / 1000) / 1e12, 1)}
    bench.record("attention_kernels", rows)


def stage_stock_generation(bench: Bench, volume: Path, device: str) -> dict[str, Any]:
    import numpy as np

    args = bench.args
    pipe = stock_load(volume, "fp16" if device.startswith("cuda") else None, device)
    first_s, _ = timed(lambda: call_stock(pipe, args.size, args.steps, SEED), device)
    runs = []
    reset_peak(device)
    for _ in range(args.runs):
        seconds, result = timed(lambda: call_stock(pipe, args.size, args.steps, SEED), device)
        runs.append(seconds)
    image = np.asarray(result.images[0])
    latents = call_stock(pipe, args.size, args.steps, SEED, output_type="latent").images.float().cpu()
    row = {"first_call_s": round(first_s, 3), "warm_median_s": round(statistics.median(runs), 3),
           "warm_runs_s": [round(r, 3) for r in runs], **peak_memory(device)}
    bench.record("generation_stock", row)
    return {"image": image, "latents": latents}


def psnr(a: Any, b: Any) -> float | str:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return "identical" if mse == 0 else round(10 * np.log10(255.0**2 / mse), 2)


def stage_ours_generation(bench: Bench, volume: Path, device: str, stock: dict[str, Any], options: SpeedOptions,
                          key: str) -> None:
    import numpy as np
    from PIL import Image

    from handler_volume_optimized import Worker

    args = bench.args
    os.environ["MAX_PIXELS"] = str(max(args.size * args.size, 256 * 256))
    worker = Worker.start(str(volume), device, warmup=True, speed=options)
    if worker.pipe is None:
        raise RuntimeError(worker.startup_error)
    worker.progress = lambda job, update: None
    pipe = worker.pipe
    job = {"prompt": PROMPT, "width": args.size, "height": args.size, "num_inference_steps": args.steps,
           "seed": SEED}
    first_s, first = timed(lambda: worker.handle({"id": "first", "input": job}), device)
    if "error" in first:
        raise RuntimeError(first["error"])
    runs, totals = [], []
    reset_peak(device)
    for _ in range(args.runs):
        _, reply = timed(lambda: worker.handle({"id": "warm", "input": job}), device)
        runs.append(reply["timings"]["inference_s"])
        totals.append(reply["timings"]["total_s"])
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))).convert("RGB"))
    profiled = profile_call(lambda: worker.handle({"id": "profiled", "input": job}), device) if args.profile else None
    latents = call_stock(pipe, args.size, args.steps, SEED, output_type="latent").images.float().cpu()
    warm = statistics.median(runs)
    row = {
        "speedups": worker.speedups,
        "load_and_speedups_s": round(worker.start_timings["load_s"] + worker.start_timings["speedups_s"], 3),
        "warm_up_s": round(worker.start_timings["warm_up_s"], 3),
        "first_job_total_s": round(first_s, 3),
        "warm_median_inference_s": round(warm, 3),
        "warm_median_total_s": round(statistics.median(totals), 3),
        "warm_runs_inference_s": [round(r, 3) for r in runs],
        "first_job_vs_warm_total": round(first_s / statistics.median(totals), 2),
        **peak_memory(device),
        "latents_max_abs_diff_vs_stock": round(float((latents - stock["latents"]).abs().max()), 5),
        "image_psnr_db_vs_stock": psnr(image, stock["image"]),
    }
    if profiled:
        row["profile"] = profiled
    bench.record(key, row)


def profile_call(fn: Any, device: str, top: int = 12) -> dict[str, Any]:
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
    return {"wall_s_under_profiler": round(wall_s, 3), "busy_s": round(busy_us / 1e6, 3),
            "what": "CUDA kernels" if on_cuda else "CPU ops (self time)",
            "top": [{"name": name[:120], "ms": round(us / 1e3, 2), "calls": calls,
                     "share": round(us / busy_us, 3) if busy_us else 0.0} for name, us, calls in ranked]}


def meta_model(cls: Any, config: dict[str, Any], dtype: Any) -> Any:
    """A diffusers model on the meta device in `dtype`, q/k/v fused as the worker does: shapes only."""
    import torch

    from sdxl_worker.speed.options import share_fused_weights

    with torch.device("meta"):
        model = cls.from_config(config).to(dtype)
    model.fuse_qkv_projections()
    share_fused_weights(model)
    return model


def unet_flops(unet_config: dict[str, Any], size: int) -> dict[str, Any]:
    """FLOPs of one UNet call (batch 2: one image with CFG), by aten op, and QUANTIZE=fp8's share of them.

    Counted from shapes on the meta device (FlopCounterMode), so exact and the same on any machine: what
    bounds each option's gain (fp8 can only speed up the linear layers it converts), and the work behind
    a profile's kernel times. On the meta device attention counts as its two bmm products.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from dev.unet_inputs import unet_call_inputs
    from sdxl_worker.speed.fp8_linear import is_fp8_layer

    unet = meta_model(UNet2DConditionModel, unet_config, torch.float16)
    args, kwargs = unet_call_inputs(unet_config, size, dtype=torch.float16, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(*args, **kwargs)
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    by_op = {str(op).removeprefix("aten."): flops for op, flops in counts["Global"].items()}
    linear = by_op.get("addmm", 0) + by_op.get("mm", 0)
    fp8_layers = {f"{type(unet).__name__}.{fqn}" for fqn, module in unet.named_modules() if is_fp8_layer(module, fqn)}
    fp8 = sum(sum(ops.values()) for name, ops in counts.items() if name in fp8_layers)
    return {"per_call_tflop": round(total / 1e12, 3),
            "share_by_op": {op: round(flops / total, 4) for op, flops in sorted(by_op.items(), key=lambda i: -i[1])},
            "linear_share": round(linear / total, 4), "fp8_layers_share_of_linear": round(fp8 / linear, 5)}


def dynamo_tracing(scope: str, unet_config: dict[str, Any], vae_config: dict[str, Any], size: int) -> dict:
    """Dynamo's first call on the UNet and the VAE decoder at this compile scope, on the meta device.

    The part of a start with a filled compile cache that no cache skips is Dynamo tracing the Python code:
    CPU work, the same whatever the GPU, so it is measured here without weights or a GPU (eager backend:
    tracing, guards and fake-tensor propagation, no inductor).
    """
    from types import SimpleNamespace

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dev.unet_inputs import unet_call_inputs
    from sdxl_worker.speed.options import compile_models

    torch._dynamo.reset()
    unet = meta_model(UNet2DConditionModel, unet_config, torch.float16)
    vae = meta_model(AutoencoderKL, vae_config, torch.bfloat16)
    graphs: list[int] = []

    def counting_backend(graph: Any, example_inputs: list[Any]) -> Any:
        graphs.append(len(graph.graph.nodes))
        return graph.forward

    pipe = SimpleNamespace(unet=unet, vae=vae)
    compile_models(pipe, "default", scope, backend=counting_backend)
    # Inputs made on the meta device, the calls made outside `torch.device(...)`: that context is a torch
    # function mode, which Dynamo would trace through at every call (2x slower here), unlike a worker's start.
    args, kwargs = unet_call_inputs(unet_config, size, dtype=torch.float16, device="meta")
    latents = torch.randn(1, vae_config["latent_channels"], size // 8, size // 8, dtype=torch.bfloat16, device="meta")
    with torch.no_grad():
        started = time.perf_counter()
        pipe.unet(*args, **kwargs)
        unet_s = time.perf_counter() - started
        unet_graphs = len(graphs)
        started = time.perf_counter()
        pipe.vae.decoder(latents)
        vae_s = time.perf_counter() - started
    torch._dynamo.reset()
    return {"unet_s": round(unet_s, 2), "unet_graphs": unet_graphs, "vae_decoder_s": round(vae_s, 2),
            "traced_nodes": sum(graphs)}


def stage_dynamo_tracing(bench: Bench, unet_config: dict[str, Any], vae_config: dict[str, Any]) -> None:
    import torch

    # Dynamo's one-time set-up goes to a throwaway module, not to whichever scope is measured first.
    torch.compile(torch.nn.Linear(4, 4), backend="eager")(torch.randn(2, 4))
    rows = {scope: dynamo_tracing(scope, unet_config, vae_config, bench.args.size) for scope in COMPILE_SCOPES}
    bench.record("dynamo_tracing", rows)


def stage_compile_warm_cache(bench: Bench, volume: Path, device: str, cache_dir: Path, mode: str, scope: str,
                             key: str) -> None:
    """A fresh process with the compile cache filled: what a later cold start pays.

    Run twice, the second measured: the stage before compiled in this process, which may have taken some
    artifacts from its in-memory caches without writing them to `cache_dir` (seen on CPU: inductor's
    precompiled header). The first fresh process writes whatever was missing, as a worker's first start would.
    """
    code = (
        "import json, sys, time; sys.argv = sys.argv[:1]\n"
        "from benchmark import compiled_first_call\n"
        f"print('RESULT', json.dumps(compiled_first_call({str(volume)!r}, {device!r}, {str(cache_dir)!r}, "
        f"{mode!r}, {scope!r}, {bench.args.size}, {bench.args.steps})))\n"
    )
    results = []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=900)
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if run.returncode != 0 or not lines:
            bench.record(key, {"error": run.stderr[-2000:]})
            return
        results.append(json.loads(lines[-1][len("RESULT "):]))
    priming, measured = results
    measured["priming_process_compile_s_estimate"] = priming["compile_s_estimate"]
    bench.record(key, measured)


def compiled_first_call(volume: str, device: str, cache_dir: str, mode: str, scope: str, size: int,
                        steps: int) -> dict:
    started = time.perf_counter()
    pipe, record = load_pipeline(volume, device)
    load_s = time.perf_counter() - started
    options = SpeedOptions(compile=True, compile_mode=mode, compile_scope=scope, compile_cache_dir=cache_dir)
    apply_speedups(pipe, options, device, record.attention)
    first_s, _ = timed(lambda: call_stock(pipe, size, steps, SEED), device)
    second_s, _ = timed(lambda: call_stock(pipe, size, steps, SEED), device)
    import torch._dynamo.utils

    # Where the first call's time went (dynamo tracing, AOT, inductor cache loads), for the report.
    breakdown = torch._dynamo.utils.compile_times(repr="str", aggregate=True)
    return {"load_s": round(load_s, 3), "first_call_s": round(first_s, 3), "second_call_s": round(second_s, 3),
            "compile_s_estimate": round(first_s - second_s, 3), "compile_times": str(breakdown)[-3000:]}


def environment(device: str) -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "device": device, "cpu_count": os.cpu_count()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def table(results: dict[str, Any]) -> str:
    """One markdown table: stock beside ours, with ratios."""
    env = results.get("environment", {})
    lines = [f"Device: {env.get('gpu') or env.get('device')}; torch {env.get('torch')}, diffusers "
             f"{env.get('diffusers')}; {results['settings']['size']}x{results['settings']['size']}, "
             f"{results['settings']['steps']} steps, CFG 7", "",
             "| what | stock diffusers | ours | ours/stock |", "| --- | --- | --- | --- |"]

    def row(what: str, stock: Any, ours: Any, unit: str = " s") -> None:
        ratio = f"{ours / stock:.2f}" if isinstance(stock, (int, float)) and isinstance(ours, (int, float)) and stock \
            else ""
        fmt = lambda v: f"{v}{unit}" if isinstance(v, (int, float)) else (v if v is not None else "n/a")  # noqa: E731
        lines.append(f"| {what} | {fmt(stock)} | {fmt(ours)} | {ratio} |")

    for plan in ("fp16", "standard"):
        load = results.get(f"load_{plan}")
        if load:
            label = "fp16 variant" if plan == "fp16" else "standard files -> fp16 (fallback)"
            lines.append(f"| raw read, {label}: {load['bytes'] / 1e9:.2f} GB, cache: {load['cache_drop']} | "
                         f"{load['raw_read_s']} s ({load['raw_read_gb_s']} GB/s) | "
                         f"{load.get('raw_read_parallel_s', 'n/a')} s with the loader's parallel readers | |")
            row(f"load cold, {label}", load["stock_cold_s"], load["ours_cold_s"])
            row(f"load cold / raw read, {label}", load["stock_cold_vs_read"], load["ours_cold_vs_read"], "x")
            row(f"load warm cache, {label}", load["stock_warm_s"], load["ours_warm_s"])
            parts = load.get("ours_cold_components_s", {})
            leads = load.get("ours_cold_prefetch_lead_gb", {})
            if parts:
                lines.append(f"| ours cold, {label}, by component: s (prefetch lead GB) | | " + ", ".join(
                    f"{name} {secs}" + (f" ({leads[name]})" if name in leads else "") for name, secs in parts.items()
                ) + " | |")
    stock = results.get("generation_stock")
    for key, ours in results.items():
        if not key.startswith("generation_") or key == "generation_stock":
            continue
        label = key.removeprefix("generation_").replace("_", " ")
        if "error" in ours:
            lines.append(f"| {label}: failed | | {ours['error'].splitlines()[0][:200]} | |")
            continue
        if not stock:
            continue
        row(f"options applied ({label})", None, _options(ours.get("speedups", {})), "")
        row(f"warm generation ({label}; inference)", stock["warm_median_s"], ours["warm_median_inference_s"])
        row(f"warm job ({label}; total incl. PNG encode)", None, ours["warm_median_total_s"])
        row(f"first job after start ({label}; total incl. encode)", stock["first_call_s"], ours["first_job_total_s"])
        row(f"first job / warm job ({label})", None, ours["first_job_vs_warm_total"], "x")
        row(f"peak VRAM, batch 1 ({label})", stock["peak_vram_gib"], ours["peak_vram_gib"], " GiB")
        row(f"peak VRAM reserved, batch 1 ({label})", stock.get("peak_reserved_gib"), ours.get("peak_reserved_gib"),
            " GiB")
        row(f"output vs stock ({label}): latents max abs diff / image PSNR", None,
            f"{ours['latents_max_abs_diff_vs_stock']} / {_db(ours['image_psnr_db_vs_stock'])}", "")
        row(f"start: load + speedups + warm-up ({label})", None,
            round(ours["load_and_speedups_s"] + ours["warm_up_s"], 3))
    for key, cache in results.items():
        if key.startswith("compile_warm_cache"):
            scope = key.removeprefix("compile_warm_cache").replace("_", " ").strip() or "full"
            what = f"compile at a cold start with the cache on the volume ({scope}; first call - second call)"
            if "error" in cache:
                lines.append(f"| {what}: failed | | {cache['error'].strip().splitlines()[-1][:200]} | |")
            else:
                row(what, None, cache["compile_s_estimate"])
    for key, ours in results.items():
        profiled = ours.get("profile") if key.startswith("generation_") and isinstance(ours, dict) else None
        if not profiled:
            continue
        label = key.removeprefix("generation_").replace("_", " ")
        lines += ["", f"One warm job under the profiler ({label}): {profiled['what']} busy {profiled['busy_s']} s "
                  f"of {profiled['wall_s_under_profiler']} s wall", "", "| kernel | ms | calls | share |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| `{k['name'][:90]}` | {k['ms']} | {k['calls']} | {k['share']:.1%} |" for k in profiled["top"]]
    for scope, tracing in results.get("dynamo_tracing", {}).items():
        graphs = f"{tracing['unet_graphs']} UNet graph" + ("s" if tracing["unet_graphs"] != 1 else "")
        row(f"Dynamo tracing at a start, COMPILE_SCOPE={scope} ({graphs}): UNet + VAE decoder (meta device, "
            "this host's CPU)", None, f"{tracing['unet_s']} + {tracing['vae_decoder_s']} s", "")
    flops = results.get("unet_flops")
    if flops:
        shares = ", ".join(f"{op} {share:.1%}" for op, share in flops["share_by_op"].items())
        row("UNet FLOPs per call, batch 2 (counted on the meta device): TFLOP; by op; QUANTIZE=fp8's share of "
            "the linear (addmm + mm) work", None, f"{flops['per_call_tflop']} TFLOP; {shares}; "
            f"{flops['fp8_layers_share_of_linear']:.3%}", "")
    kernels = results.get("attention_kernels")
    if kernels:
        names = list(next(iter(kernels.values())))
        lines += ["", "SDPA kernels on the UNet's attention shapes (batch 2, head width 64): ms (TFLOP/s)", "",
                  "| shape | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        for shape, by_kernel in kernels.items():
            cells = [f"{v['ms']} ({v['tflops']})" if isinstance(v, dict) else v for v in by_kernel.values()]
            lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _options(applied: dict[str, Any]) -> str:
    """The speed options a stage ran with, as the worker reported them: a skipped option shows as skipped."""
    shown = [name if value is True else f"{name}={value}" for name, value in applied.items()
             if name not in ("compile_cache_dir", "quantize_skipped")]
    if "quantize_skipped" in applied:
        shown.append("QUANTIZE skipped")
    return ", ".join(shown) or "none"


def _db(psnr_value: float | str) -> str:
    return f"{psnr_value} dB" if isinstance(psnr_value, (int, float)) else str(psnr_value)


def scopes_arg(value: str) -> list[str]:
    scopes = [scope.strip() for scope in value.split(",") if scope.strip()]
    unknown = [scope for scope in scopes if scope not in COMPILE_SCOPES]
    if unknown or not scopes:
        raise argparse.ArgumentTypeError(f"compile scopes are {', '.join(COMPILE_SCOPES)}, not {value!r}")
    return scopes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("tiny", "full"), default="full")
    parser.add_argument("--device", default=None, help="default: cuda if available")
    parser.add_argument("--volume-dir", default="bench-out/volume", help="where the synthetic volume is (re)used")
    parser.add_argument("--out", default="bench-out", help="folder for benchmark.json")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode for --compile")
    parser.add_argument("--compile-scope", default="full", type=scopes_arg,
                        help="comma-separated COMPILE_SCOPE values to measure with --compile (full, blocks)")
    parser.add_argument("--ours", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                        help="also measure the worker with these speed settings (e.g. nofuse:FUSE_QKV=0)")
    parser.add_argument("--skip-loads", action="store_true", help="skip the read/load stage")
    parser.add_argument("--profile", action="store_true",
                        help="profile one warm job per stage of ours: device busy time and top kernels")
    parser.add_argument("--tracing-only", action="store_true",
                        help="only the meta-device figures from the --scale's configs (no volume, no GPU): the "
                             "UNet's FLOPs by op, Dynamo's tracing per compile scope")
    parser.add_argument("--no-drop-caches", dest="drop_caches", action="store_false",
                        help="evict only the benchmark's files (fadvise), not the whole page cache")
    args = parser.parse_args(argv)
    enforce_offline()
    import diffusers
    import torch
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    bench = Bench(args)
    bench.record("environment", environment(device))
    if args.tracing_only:
        unet_config, vae_config = (component_config(args.scale, name) for name in ("unet", "vae"))
        bench.record("unet_flops", unet_flops(unet_config, args.size))
        stage_dynamo_tracing(bench, unet_config, vae_config)
        return finish(bench)
    started = time.perf_counter()
    volume = build_volume(Path(args.volume_dir) / "photonicfusion-sdxl", args.scale, extras=True,
                          device="cuda" if device.startswith("cuda") else "cpu")
    bench.record("volume", {"path": str(volume), "build_or_reuse_s": round(time.perf_counter() - started, 2),
                            "check_s": round(check_volume(volume).seconds, 3)})
    if not args.skip_loads:
        stage_loads(bench, volume, device)
    stage_attention_kernels(bench, device)
    # Each stage's pipeline goes out of scope when it returns; free() then hands its GPU memory back.
    stock = stage_stock_generation(bench, volume, device)
    free(device)
    stage_ours_generation(bench, volume, device, stock, SpeedOptions.from_env(), "generation_ours")
    free(device)
    for spec in args.ours:
        label, _, settings = spec.partition(":")
        overrides = dict(item.split("=", 1) for item in settings.split(",") if item)
        options = SpeedOptions.from_env({**os.environ, **overrides})
        try:
            stage_ours_generation(bench, volume, device, stock, options, f"generation_ours_{label}")
        except Exception as exc:
            bench.record_failure(f"generation_ours_{label}", exc)
        free(device)
    for scope in args.compile_scope if args.compile else []:
        # Beside the model, as COMPILE_CACHE_DIR would be on a real volume; one per scope, so that the
        # second scope's first start is a compile from empty too.
        cache_dir = Path(args.volume_dir).resolve() / ("compile-cache" if scope == "full" else f"compile-cache-{scope}")
        options = SpeedOptions(compile=True, compile_mode=args.compile_mode, compile_scope=scope,
                               compile_cache_dir=str(cache_dir))
        suffix = "" if scope == "full" else f"_{scope}"
        try:
            stage_ours_generation(bench, volume, device, stock, options, f"generation_ours_compiled{suffix}")
            free(device)
            stage_compile_warm_cache(bench, volume, device, cache_dir, args.compile_mode, scope,
                                     f"compile_warm_cache{suffix}")
        except Exception as exc:
            bench.record_failure(f"generation_ours_compiled{suffix}", exc)
        free(device)  # outside the handler: its exception's frames would keep the failed stage's pipeline alive
    return finish(bench)


def finish(bench: Bench) -> int:
    bench.results["total_s"] = round(time.perf_counter() - bench.started, 1)
    bench.save()
    print(table(bench.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
