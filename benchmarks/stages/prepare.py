"""Volume preparation: `prepare_volume.py add-fp16` on a standard-only view of the volume, against a raw copy of
the same bytes (read the standard set, write as many bytes as the fp16 set holds, fsync), interleaved, each
from a cold page cache. The command runs as its own process, as an operator runs it: its wall time includes
starting Python and importing torch, and its peak RSS is the whole process's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.results import PrepareResult, Spread
from benchmarks.stages.io import evict, plan_files, standard_view
from sdxl_worker.loading.prefetch import READ_BYTES

ROOT = Path(__file__).resolve().parents[2]


def raw_copy(sources: list[Path], write_bytes: int, out: Path) -> float:
    """Seconds to read `sources` and write `write_bytes` of them to `out`, fsynced: the disk's floor for add-fp16."""
    buffer = bytearray(READ_BYTES)
    share = write_bytes / sum(p.stat().st_size for p in sources)
    started = time.perf_counter()
    with out.open("wb") as sink:
        for path in sources:
            with path.open("rb", buffering=0) as handle:
                while count := handle.readinto(buffer):
                    sink.write(memoryview(buffer)[: int(count * share)])
        sink.flush()
        os.fsync(sink.fileno())
    seconds = time.perf_counter() - started
    out.unlink()
    return seconds


def add_fp16(view: Path) -> tuple[float, float, float]:
    """Run the command on `view`: (wall seconds, its write phase's seconds, its peak RSS in GiB, as it reports)."""
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "prepare_volume.py", "add-fp16", str(view), "--json"], cwd=ROOT,
                         capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"add-fp16 exited {run.returncode}: {run.stderr[-1500:]}")
    summary = json.loads(run.stdout)
    return wall, summary["seconds"], (summary["peak_memory_bytes"] or 0) / 1024**3


def measure_prepare(volume: Path, runs: int, drop_all: bool) -> PrepareResult:
    """add-fp16 against the raw copy, `runs` interleaved pairs."""
    sources = plan_files(volume, "standard")
    fp16_bytes = sum(p.stat().st_size for p in plan_files(volume, "fp16"))
    raw, wall, write, peak = [], [], [], []
    method = "none"
    for _ in range(runs):
        method = evict(sources, drop_all)
        raw.append(round(raw_copy(sources, fp16_bytes, volume.parent / "raw-copy.bin"), 3))
        view = standard_view(volume, "-prepare")
        try:
            evict(sources, drop_all)
            seconds, writing, rss = add_fp16(view)
        finally:
            shutil.rmtree(view)
        wall.append(round(seconds, 3))
        write.append(round(writing, 3))
        peak.append(rss)
    return PrepareResult(bytes_read=sum(p.stat().st_size for p in sources), bytes_written=fp16_bytes,
                         cache_drop=method, raw_copy=Spread(tuple(raw)), ours=Spread(tuple(wall)),
                         ours_write=Spread(tuple(write)), peak_rss_gib=round(max(peak), 3))
