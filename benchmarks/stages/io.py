"""Reads and loads: the raw read of each load plan's bytes, then stock's and our loader's load, cold and warm.

The raw read is what the disk allows; a load's time beyond it is the loader's work (per component, with how
far the prefetch readers were ahead of it). A cold page cache comes from `drop_caches` where this process may
write it, else from dropping just these files (fadvise); each result says which.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from benchmarks.results import LoadResult
from benchmarks.stages.common import free, stock_load, sync, timed
from sdxl_worker.loading.loader import load_pipeline, weight_files
from sdxl_worker.loading.prefetch import READ_BYTES, Prefetcher
from sdxl_worker.loading.streamed import DEFAULT_STREAMS
from sdxl_worker.volume.check import check_volume
from sdxl_worker.weights.layout import Variant


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
    """Seconds to read `paths` in order, at the prefetch readers' read size, so that both reads compare."""
    buffer = bytearray(READ_BYTES)
    started = time.perf_counter()
    for path in paths:
        with path.open("rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    return time.perf_counter() - started


def parallel_read(paths: list[Path]) -> None:
    """The same bytes read by the loader's prefetch readers: disk speed apart from the loader's work."""
    with Prefetcher(paths) as prefetcher:
        prefetcher.wait()


def plan_files(volume: Path, variant: Variant) -> list[Path]:
    """Every model component's files of one weight set: what the loader reads for that plan."""
    report = check_volume(volume)
    models = [name for name, component in report.components.items() if component.kind == "model"]
    return weight_files(volume, report, dict.fromkeys(models, variant))


def standard_view(volume: Path, suffix: str = "-standard-only", fp16: bool = False) -> Path:
    """The same volume without its fp16 files (hard links, no copy): what a fallback deployment sees. With
    `fp16`, without its standard weight files instead: what a prepared volume holds."""
    view = volume.with_name(volume.name + suffix)
    if view.exists():
        return view
    for path in sorted(volume.rglob("*")):
        target = view / path.relative_to(volume)
        weights = path.name.endswith((".safetensors", ".safetensors.index.json"))
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif (".fp16." in path.name) == fp16 or not weights:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)
    return view


def measure_loads(volume: Path, device: str, drop_all: bool) -> list[LoadResult]:
    """One LoadResult per plan: the fp16 variant, and the standard files cast to fp16 (the fallback). Ours is the
    worker's default (LOAD_STREAMS=auto: the libraries' loader on a local disk), then the read-once loader."""
    plans: dict[Variant, tuple[Path, str | None]] = {"fp16": (volume, "fp16"),
                                                     "standard": (standard_view(volume), None)}
    results = []
    for plan, (path, variant) in plans.items():
        files = plan_files(volume, plan)
        method = evict(files, drop_all)
        read_s = raw_read(files)
        evict(files, drop_all)
        parallel_s, _ = timed(lambda files=files: parallel_read(files), "cpu")
        seconds: dict[str, float] = {}
        record = None
        for loader in ("stock", "ours", "streamed"):
            for state in ("cold", "warm"):
                if state == "cold":
                    evict(files, drop_all)
                started = time.perf_counter()
                if loader == "stock":
                    pipe = stock_load(path, variant, device)
                else:
                    pipe, loaded = load_pipeline(path, device, streams=None if loader == "ours" else DEFAULT_STREAMS)
                    record = loaded if (loader, state) == ("ours", "cold") else record
                sync(device)
                seconds[f"{loader}_{state}"] = round(time.perf_counter() - started, 3)
                del pipe
                free(device)
        assert record is not None
        results.append(LoadResult(
            plan=plan, bytes=sum(p.stat().st_size for p in files), cache_drop=method, raw_read_s=round(read_s, 3),
            raw_read_parallel_s=round(parallel_s, 3), stock_cold_s=seconds["stock_cold"],
            stock_warm_s=seconds["stock_warm"], ours_cold_s=seconds["ours_cold"], ours_warm_s=seconds["ours_warm"],
            ours_variant=record.variant, ours_cold_components_s=record.components_s,
            ours_cold_prefetch_lead_gb=record.prefetch_lead_gb, ours_streams=record.streams,
            streamed_cold_s=seconds["streamed_cold"], streamed_warm_s=seconds["streamed_warm"]))
    return results
