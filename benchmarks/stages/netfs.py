"""Loads through a simulated network volume (dev/netfs.py): how long, and how many bytes crossed the network.

For each cell of the grid (latency, bandwidth, page cache on or off) the model folder is served through the
simulator, and the fp16 weight set (what a GPU worker reads) is read four ways: raw in one stream, raw by the
loader's parallel prefetch readers (the best of the two is the bound), stock `from_pretrained`, and the worker's
read-once loader (LOAD_STREAMS=8). Each reports the bytes the filesystem served: more than the plan's bytes means
a byte crossed the network twice. The source files are dropped from the local page cache before each read, so
the local disk is cold too; the network's limits are far below it. At full size, with stock's memory-mapped load
faulting through the simulator in small requests, one cell had not finished after 20 minutes here (stopped):
run it at tiny scale, or with time to spare.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.results import NetworkLoadResult
from benchmarks.stages.common import free, stock_load, sync
from benchmarks.stages.io import evict, parallel_read, plan_files, raw_read, standard_view
from dev.netfs import Network, mounted, read_stats
from sdxl_worker.weights.streamed import DEFAULT_STREAMS

MB = 1e6
# The grid: a near and a far volume, RunPod's documented 200-400 MB/s seen as 100 MB/s a stream and
# 400 MB/s in all, with and without the kernel's page cache.
GRID = tuple(Network(latency_s=latency, stream_bytes_s=100 * MB, total_bytes_s=400 * MB, direct_io=direct)
             for latency in (0.0005, 0.003) for direct in (False, True))
TINY_GRID = (Network(latency_s=0.0005, stream_bytes_s=100 * MB, total_bytes_s=400 * MB),)


def measure_network_loads(volume: Path, device: str, scale: str, mount_dir: Path) -> list[NetworkLoadResult]:
    from model_loader import load_pipeline, plan_load
    from volume_check import check_volume

    if not device.startswith("cuda"):
        # The CPU plans the standard files; the fp16 set alone makes it read what a GPU worker reads.
        volume = standard_view(volume, "-fp16-only", fp16=True)
    variant = plan_load(check_volume(volume), device).label
    files = plan_files(volume, variant)
    plan_bytes = sum(path.stat().st_size for path in files)
    results = []
    for network in GRID if scale == "full" else TINY_GRID:
        with mounted(volume.parent, mount_dir, network) as mount:
            served = mount / volume.name
            remote = [served / path.relative_to(volume) for path in files]
            seconds: dict[str, float] = {}
            read: dict[str, int] = {}
            for way in ("raw", "raw parallel", "stock", "ours"):
                evict(files, drop_all=False)
                before = read_stats(mount)["bytes"]
                started = time.perf_counter()
                if way == "raw":
                    raw_read(remote)
                elif way == "raw parallel":
                    parallel_read(remote)
                elif way == "stock":
                    pipe = stock_load(served, "fp16" if variant == "fp16" else None, device)
                else:
                    pipe, _ = load_pipeline(served, device, streams=DEFAULT_STREAMS)
                sync(device)
                seconds[way] = round(time.perf_counter() - started, 3)
                read[way] = read_stats(mount)["bytes"] - before
                if way in ("stock", "ours"):
                    del pipe
                    free(device)
        results.append(NetworkLoadResult(
            network=network.describe(), plan=variant, plan_bytes=plan_bytes, raw_s=seconds["raw"],
            raw_parallel_s=seconds["raw parallel"], stock_s=seconds["stock"], ours_s=seconds["ours"],
            raw_bytes=read["raw"], stock_bytes=read["stock"], ours_bytes=read["ours"]))
    return results
