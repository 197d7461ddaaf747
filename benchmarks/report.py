"""The markdown report of a run: one table per kind of result, rendered from the typed results."""

from __future__ import annotations

from benchmarks.results import (
    AotCompileResult,
    AttentionResult,
    CachedStart,
    Failure,
    FeaturesResult,
    FlopsResult,
    GenerationResult,
    LoadResult,
    NetworkLoadResult,
    PrepareResult,
    Run,
    Spread,
    StockGeneration,
    SwitchResult,
    TracingResult,
    WorkloadResult,
)
from sdxl_worker.loading.plan import reader_name


def render(run: Run) -> str:
    settings, env = run.settings, run.environment
    device = (env.gpu or env.device) if env else settings.get("device")
    versions = f"torch {env.torch}, diffusers {env.diffusers}; " if env else ""
    lines = [f"Device: {device}; {versions}{settings['size']}x{settings['size']}, {settings['steps']} steps, CFG 7; "
             f"suites: {', '.join(settings['suite'])}"]
    if settings.get("scale") == "tiny":
        lines += ["", "Tiny scale: a model of a few MB at 256 pixels, for checking that every stage runs. Its times "
                  "are overheads (imports, threads, Python), not what a full-size model does: loaders and speed "
                  "options are compared at `--scale full`."]
    lines += _generation(run) + _features(run) + _workload(run) + _cached_starts(run) + _loads(run)
    lines += _network_loads(run) + _prepare(run) + _switches(run) + _aot_compiles(run)
    lines += _profiles(run) + _attention(run) + _meta(run)
    failures = run.of(Failure)
    if failures:
        lines += ["", "| failed | stage | error |", "| --- | --- | --- |"]
        lines += [f"| {name} | {f.stage} | {_one_line(f.error)} |" for name, f in failures]
    return "\n".join(lines)


def _generation(run: Run) -> list[str]:
    stock = run.of(StockGeneration)
    results = run.of(GenerationResult)
    if not results and not stock:
        return []
    lines = ["", "Warm jobs, interleaved with stock diffusers' on the same seeds (inference seconds: median, range); "
             "ours/stock per interleaved pair; a verdict only when every pair agrees.", "",
             "| scenario | options applied | stock | ours | ours/stock | verdict | first job | start | peak VRAM "
             "(reserved) | vs stock: latents max diff / PSNR |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, alone in stock:
        memory = _gib(alone.peak_vram_gib, alone.peak_reserved_gib)
        lines.append(f"| {name} | | | | | | {alone.first_call_s} s | | {memory} | |")
    for name, g in results:
        psnr = "identical" if g.image_psnr_db is None else f"{g.image_psnr_db} dB"
        ratios = g.ratios
        lines.append(
            f"| {name} | {', '.join(g.applied) or 'none'} | {_spread(g.stock)} | {_spread(g.ours)} | "
            f"{ratios.median:.2f} ({ratios.low:.2f}-{ratios.high:.2f}) | {g.verdict} | {g.first_job_s} s | "
            f"{g.start_s} s | {_gib(g.peak_vram_gib, g.peak_reserved_gib)} | {g.latents_max_abs_diff} / {psnr} |")
    return lines


def _features(run: Run) -> list[str]:
    lines = []
    for name, f in run.of(FeaturesResult):
        lines += ["", f"Each kind of job, warm ({name}: {', '.join(f.applied) or 'none'}; inference seconds: median, "
                  "range); the UNet's calls per job as CUDA-graph replays / eager calls.", "",
                  "| job | mode | prompt tokens | first | warm | UNet replays / eager | image std | image sha256 |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for j in f.jobs:
            calls = "n/a" if j.unet_replays is None else f"{j.unet_replays} / {j.unet_eager_calls}"
            lines.append(f"| {j.job} | {j.mode} | {j.prompt_tokens} | {j.first_s} s | {_spread(j.warm)} | {calls} | "
                         f"{j.image_std} | `{j.image_sha}` |")
    return lines


def _workload(run: Run) -> list[str]:
    lines = []
    for name, w in run.of(WorkloadResult):
        kept = "" if w.graphs_kept is None else f"; CUDA graphs kept at the end: {w.graphs_kept}"
        lines += ["", f"The workload mix ({name}: {', '.join(w.applied) or 'none'}), job by job, stock then ours; "
                  "seconds per job (median, range; ours: the reply's total less its image encoding); first: the "
                  "kind's first job through the worker; graph: how its UNet ran (first / warm).", "",
                  "| kind | shape | jobs | stock | ours | ours/stock | ours first | graph | peak reserved: stock / "
                  "ours | note |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for k in w.kinds:
            graph = "n/a" if k.graph is None and k.first_graph is None else f"{k.first_graph} / {k.graph}"
            memory = "n/a" if k.ours_peak_gib is None else f"{k.stock_peak_gib} / {k.ours_peak_gib} GiB"
            lines.append(f"| {k.kind} | {k.shape} | {k.jobs} | {_spread(k.stock)} | {_spread(k.ours)} | "
                         f"{k.ratio:.2f} | {k.ours_first_s} s | {graph} | {memory} | {k.note} |")
        lines += ["", f"The mix: {w.images_per_pass} images a pass; stock {_spread(w.stock_pass)}, "
                  f"{w.images_per_hour(w.stock_pass)} images/hour; ours {_spread(w.ours_pass)}, "
                  f"**{w.images_per_hour(w.ours_pass)} images/hour**; ours' first pass {w.ours_first_pass_s} s{kept}"]
    return lines


def _cached_starts(run: Run) -> list[str]:
    results = run.of(CachedStart)
    if not results:
        return []
    lines = ["", "A fresh process with the compile cache filled (a later cold start): the first call's extra time.", "",
             "| scenario | load | first call | second call | compile with the cache | first process (filling it) |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {c.load_s} s | {c.first_call_s} s | {c.second_call_s} s | **{c.compile_s} s** | "
              f"{'none: the cache was whole' if c.priming_compile_s is None else f'{c.priming_compile_s} s'} |"
              for name, c in results]
    return lines


def _loads(run: Run) -> list[str]:
    results = run.of(LoadResult)
    if not results:
        return []
    lines = ["", "| load plan | bytes | raw read (parallel readers) | stock cold / warm | ours cold / warm | "
             "read-once, 16 streams: cold / warm | cold / raw read: stock, ours, read-once | "
             "ours cold by component: s (prefetch lead GB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results:
        parts = ", ".join(f"{c} {s}" + (f" ({r.ours_cold_prefetch_lead_gb[c]})" if c in r.ours_cold_prefetch_lead_gb
                                        else "") for c, s in r.ours_cold_components_s.items())
        streamed = f"{r.streamed_cold_s} / {r.streamed_warm_s} s" if r.streamed_cold_s is not None else "-"
        ratios = [r.stock_cold_s, r.ours_cold_s] + ([r.streamed_cold_s] if r.streamed_cold_s is not None else [])
        cells = [f"{name} (ours loaded: {r.ours_variant} by {reader_name(r.ours_streams)}; cache: {r.cache_drop})",
                 f"{r.bytes / 1e9:.2f} GB",
                 f"{r.raw_read_s} s ({r.raw_read_parallel_s} s)", f"{r.stock_cold_s} / {r.stock_warm_s} s",
                 f"{r.ours_cold_s} / {r.ours_warm_s} s", streamed,
                 ", ".join(f"{s / r.raw_read_s:.2f}x" for s in ratios), parts]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _network_loads(run: Run) -> list[str]:
    results = run.of(NetworkLoadResult)
    if not results:
        return []
    lines = ["", "The fp16 set through the simulated network volume (dev/netfs.py), cold, ours the read-once loader "
             "(16 streams): seconds (x the best raw read); ours by number of streams; the bytes of the set's files the "
             "filesystem served (x the set's bytes; ours: the most any of its loads had).", "",
             "| network | plan | raw read: 1 stream / parallel | stock | ours | ours by streams | bytes served: raw, "
             "stock, ours |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for _, r in results:
        ours_bytes = max(r.ours_bytes, r.ours_bytes_most)
        served = ", ".join(f"{b / r.plan_bytes:.2f}x" for b in (r.raw_bytes, r.stock_bytes, ours_bytes))
        stock = f"{r.stock_s} s ({r.stock_s / r.bound_s:.2f}x)"
        if r.stock_stopped:
            stock = f"> {r.stock_s} s (> {r.stock_s / r.bound_s:.1f}x: stopped)"
            served += f" (stock: by {r.stock_s} s)"
        sweep = ", ".join(f"{n}: {s} s" for n, s in sorted(r.ours_by_streams.items(), key=lambda item: int(item[0])))
        lines.append(f"| {r.network} | {r.plan}, {r.plan_bytes / 1e9:.2f} GB | {r.raw_s} / {r.raw_parallel_s} s | "
                     f"{stock} | **{r.ours_s} s ({r.ours_s / r.bound_s:.2f}x)** | {sweep or '-'} | {served} |")
    return lines


def _prepare(run: Run) -> list[str]:
    results = run.of(PrepareResult)
    if not results:
        return []
    lines = ["", "Writing the fp16 set onto a standard-only volume, against a raw copy of the same bytes (cold page "
             "cache, interleaved; seconds: median, range).", "",
             "| scenario | reads | writes | raw copy | add-fp16 command | its write phase | command / raw copy | "
             "peak RSS |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} (cache: {r.cache_drop}) | {r.bytes_read / 1e9:.2f} GB | {r.bytes_written / 1e9:.2f} GB | "
              f"{_spread(r.raw_copy)} | {_spread(r.ours)} | {_spread(r.ours_write)} | **{r.ratio:.2f}x** | "
              f"{r.peak_rss_gib} GiB |" for name, r in results]
    return lines


def _aot_compiles(run: Run) -> list[str]:
    results = run.of(AotCompileResult)
    if not results:
        return []
    lines = ["", "`prepare_volume.py compile` for the run's size (its own process: wall time with Python and the "
             "load; compile: the packages alone).", "",
             "| scenario | wall | compile | packages | size | peak memory |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {a.wall_s} s | {a.compile_s} s | {', '.join(a.packages) or 'there already'} | "
              f"{a.bytes_written / 1e6:.1f} MB | {a.peak_rss_gib} GiB |" for name, a in results]
    return lines


def _switches(run: Run) -> list[str]:
    results = run.of(SwitchResult)
    if not results:
        return []
    lines = ["", "Two models on one worker, a fine-tune beside its base (MODELS): a switch between the two loaded "
             "models (the reply's switch_s) and the inference time of the first job after it and of the next one "
             "(seconds: median, range).", "",
             "| scenario | first read | switch | first job after | next job | one model | held besides the serving "
             "one | shared |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {s.first_read_s} s | {_spread(s.switch)} | {_spread(s.first_job_after)} | "
              f"{_spread(s.next_job)} | {s.model_gib} GiB | {s.host_gib} GiB | {', '.join(s.shared) or 'none'} |"
              for name, s in results]
    return lines


def _profiles(run: Run) -> list[str]:
    lines = []
    for name, g in run.of(GenerationResult):
        if g.profile is None:
            continue
        p = g.profile
        lines += ["", f"One warm job under the profiler ({name}): {p.what} busy {p.busy_s} s of {p.wall_s} s wall", "",
                  "| kernel | ms | calls | share |", "| --- | --- | --- | --- |"]
        lines += [f"| `{k.name[:90]}` | {k.ms} | {k.calls} | {k.share:.1%} |" for k in p.top]
    return lines


def _attention(run: Run) -> list[str]:
    lines = []
    for _, a in run.of(AttentionResult):
        kernels = list(next(iter(a.shapes.values())))
        lines += ["", "SDPA kernels on the UNet's attention shapes (batch 2, head width 64): ms (TFLOP/s)", "",
                  "| shape | " + " | ".join(kernels) + " |", "| --- |" + " --- |" * len(kernels)]
        for shape, timings in a.shapes.items():
            cells = [f"{t.ms} ({t.tflops})" if t else "unsupported" for t in timings.values()]
            lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return lines


def _meta(run: Run) -> list[str]:
    lines = []
    for _, f in run.of(FlopsResult):
        shares = ", ".join(f"{op} {share:.1%}" for op, share in f.share_by_op.items())
        lines += ["", f"UNet FLOPs per call, batch 2 (meta device): {f.per_call_tflop} TFLOP; by op: {shares}; "
                  f"linear {f.linear_share:.1%}, of which QUANTIZE=fp8's layers {f.fp8_layers_share_of_linear:.3%}"]
    for _, t in run.of(TracingResult):
        lines += ["", "Dynamo tracing at a start, by COMPILE_SCOPE (meta device, this host's CPU):", "",
                  "| scope | UNet | UNet graphs | VAE decoder | traced nodes |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {scope} | {r['unet_s']} s | {r['unet_graphs']} | {r['vae_decoder_s']} s | {r['traced_nodes']} |"
                  for scope, r in t.scopes.items()]
    return lines


def _spread(spread: Spread) -> str:
    return f"{spread.median:.3f} s ({spread.low:.3f}-{spread.high:.3f})"


def _gib(vram: float | None, reserved: float | None) -> str:
    return "n/a" if vram is None else f"{vram} GiB ({reserved})"


def _one_line(text: str) -> str:
    """An error's first line (its message), cut to fit a table cell."""
    return (text.strip().splitlines() or [""])[0][:200]
