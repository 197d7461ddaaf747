"""Loads through a simulated network volume (dev/netfs.py): how long, and how many bytes crossed the network.

For each cell of the grid (latency, bandwidth, page cache on or off) the model folder is served through the
simulator, and the fp16 weight set (what a GPU worker reads) is read: raw in one stream, raw by the loader's
parallel prefetch readers (the best of the two is the bound), by stock `from_pretrained`, and by the worker's
read-once loader with its default number of streams, then with SWEEP's. Each reports the bytes of the set's files
the filesystem served (headers included; configs and tokenizers are not counted): more than the set's bytes means
a byte crossed the network twice. The source files are dropped from the local page cache before each read, so the
local disk is cold too; the network's limits are far below it. Stock runs in a child process, stopped at
STOCK_LIMIT times the best raw read (its seconds then the limit, its bytes those served by then): a load that
faults through a memory map in small requests can take many times the raw read on a network filesystem.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from pathlib import Path

from benchmarks.results import NetworkLoadResult
from benchmarks.stages.common import free, stock_load, sync
from benchmarks.stages.io import evict, parallel_read, plan_files, raw_read, standard_view
from dev.netfs import Network, mounted, read_stats
from sdxl_worker.loading.streamed import DEFAULT_STREAMS

MB = 1e6
# The grid: a near and a far volume, RunPod's documented 200-400 MB/s seen as 100 MB/s a stream and
# 400 MB/s in all, with and without the kernel's page cache.
GRID = tuple(Network(latency_s=latency, stream_bytes_s=100 * MB, total_bytes_s=400 * MB, direct_io=direct)
             for latency in (0.0005, 0.003) for direct in (False, True))
TINY_GRID = (Network(latency_s=0.0005, stream_bytes_s=100 * MB, total_bytes_s=400 * MB),)
# A lent GPU's minutes fit one cell: the far volume without page cache, where a loader has the least help.
GPU_GRID = (GRID[-1],)
# Ours again with other numbers of streams: what LOAD_STREAMS=auto's number is chosen from (on the CPU host).
SWEEP = {"full": (4, 8, 32), "tiny": (2,)}
STOCK_LIMIT = 5.0  # x the best raw read, and at least STOCK_LIMIT_MIN_S
STOCK_LIMIT_MIN_S = 30.0


def measure_network_loads(volume: Path, device: str, scale: str, mount_dir: Path) -> list[NetworkLoadResult]:
    from sdxl_worker.loading.loader import load_pipeline
    from sdxl_worker.loading.plan import plan_load
    from sdxl_worker.volume.check import check_volume

    on_cuda = device.startswith("cuda")
    if not on_cuda:
        # The CPU plans the standard files; the fp16 set alone makes it read what a GPU worker reads.
        volume = standard_view(volume, "-fp16-only", fp16=True)
    variant = plan_load(check_volume(volume), device).label
    import_libraries()
    files = plan_files(volume, variant)
    plan_bytes = sum(path.stat().st_size for path in files)
    results = []
    sweep = () if on_cuda else SWEEP[scale]
    for network in (GPU_GRID if on_cuda else GRID) if scale == "full" else TINY_GRID:
        with mounted(volume.parent, mount_dir, network) as mount:
            served = mount / volume.name
            remote = [served / path.relative_to(volume) for path in files]
            names = [str(path.relative_to(volume.parent)) for path in files]

            def weight_bytes(stats: dict, names: list[str] = names) -> int:  # the plan's files, not configs
                return sum(stats["files"].get(name, 0) for name in names)

            seconds: dict[str, float] = {}
            read: dict[str, int] = {}
            stopped = False
            ways = ["raw", "raw parallel", "stock", "ours", *(f"ours {n}" for n in sweep)]
            for way in ways:
                evict(files, drop_all=False)
                before = weight_bytes(read_stats(mount))
                started = time.perf_counter()
                if way == "raw":
                    raw_read(remote)
                elif way == "raw parallel":
                    parallel_read(remote)
                elif way == "stock":
                    limit_s = max(STOCK_LIMIT_MIN_S, STOCK_LIMIT * min(seconds.values()))
                    stock_s = stock_load_s(served, "fp16" if variant == "fp16" else None, device, limit_s)
                    stopped = stock_s is None
                else:
                    streams = int(way.removeprefix("ours ")) if way != "ours" else DEFAULT_STREAMS
                    pipe, _ = load_pipeline(served, device, streams=streams)
                    sync(device)
                    del pipe
                    free(device)
                seconds[way] = round(time.perf_counter() - started, 3)
                if way == "stock":
                    seconds[way] = round(limit_s if stock_s is None else stock_s, 3)
                read[way] = weight_bytes(read_stats(mount)) - before
        results.append(NetworkLoadResult(
            network=network.describe(), plan=variant, plan_bytes=plan_bytes, raw_s=seconds["raw"],
            raw_parallel_s=seconds["raw parallel"], stock_s=seconds["stock"], ours_s=seconds["ours"],
            raw_bytes=read["raw"], stock_bytes=read["stock"], ours_bytes=read["ours"], stock_stopped=stopped,
            ours_by_streams={DEFAULT_STREAMS: seconds["ours"], **{n: seconds[f"ours {n}"] for n in sweep}},
            ours_bytes_most=max(read[way] for way in ways if way.startswith("ours"))))
    return results


def stock_load_s(volume: Path, variant: str | None, device: str, limit_s: float) -> float | None:
    """Seconds stock diffusers takes to load `volume` in a child process (its imports not counted), or None when
    it had not finished after `limit_s` and was stopped."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_stock_child, args=(volume, variant, device, sender), daemon=True)
    child.start()
    sender.close()
    finished = False
    try:
        if receiver.recv() != "imported":
            raise RuntimeError("the stock loader's process did not start")
        finished = receiver.poll(limit_s)
        return float(receiver.recv()) if finished else None
    except EOFError as exc:
        raise RuntimeError(f"the stock loader's process died (exit code {child.exitcode})") from exc
    finally:
        child.join(timeout=60 if finished else 0)  # a finished child exits by itself, releasing what it holds
        if child.is_alive():
            child.kill()
            child.join()


def import_libraries() -> None:
    """What the loads import, before any clock starts: diffusers and transformers import their classes lazily, and
    whichever load came first would pay for all of them."""
    import accelerate  # noqa: F401
    import diffusers
    import transformers

    for name in ("StableDiffusionXLPipeline", "UNet2DConditionModel", "AutoencoderKL", "EulerDiscreteScheduler"):
        getattr(diffusers, name)
    for name in ("CLIPTextModel", "CLIPTextModelWithProjection", "CLIPTokenizer"):
        getattr(transformers, name)


def _stock_child(volume: Path, variant: str | None, device: str, sender: Connection) -> None:
    import_libraries()
    sender.send("imported")
    started = time.perf_counter()
    pipe = stock_load(volume, variant, device)
    sync(device)
    sender.send(time.perf_counter() - started)
    del pipe
