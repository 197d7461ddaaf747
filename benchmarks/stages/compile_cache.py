"""A start with the compile cache filled, as a later cold start of a COMPILE=1 worker pays it.

Measured in a fresh process. The stage before compiled in this process, which may have taken some artifacts
from its in-memory caches without writing them to the cache folder: a first fresh process that writes into the
cache folder filled what was missing, as a worker's first start would, and a second one is measured. One that
writes nothing found the cache whole and is the measurement (seen on the CPU with torch 2.11: one process).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.results import CachedStart
from benchmarks.stages.common import call_pipeline, timed
from sdxl_worker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def measure_cached_start(settings: Settings, size: int, steps: int) -> CachedStart:
    code = ("import json, sys\n"
            "from benchmarks.stages.compile_cache import first_calls\n"
            "from sdxl_worker.settings import Settings\n"
            "settings = Settings.model_validate_json(sys.argv[1])\n"
            f"print('RESULT', json.dumps(first_calls(settings, {size}, {steps})))\n")
    cache = settings.speed.compile_cache_dir
    results = []
    while len(results) < 2:
        before = _files(cache)
        run = subprocess.run([sys.executable, "-c", code, settings.model_dump_json()], cwd=ROOT, capture_output=True,
                             text=True, timeout=900)
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if run.returncode != 0 or not lines:
            print(run.stderr[-4000:], file=sys.stderr)
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the cached-start process exited {run.returncode}: {last}")
        results.append(json.loads(lines[-1].removeprefix("RESULT ")))
        if before is not None and _files(cache) == before:
            break
    *priming, measured = results
    priming_s = round(priming[0]["first_call_s"] - priming[0]["second_call_s"], 3) if priming else None
    return CachedStart(priming_compile_s=priming_s, **measured)


def _files(folder: str | None) -> dict[str, tuple[int, int]] | None:
    """Every file under the compile cache folder with its size and modification time: equal after a process
    means it wrote nothing there. None without a folder of its own (COMPILE_CACHE_DIR unset): always primed."""
    if folder is None:
        return None
    entries = ((path, path.stat()) for path in Path(folder).rglob("*"))
    return {str(path): (info.st_size, info.st_mtime_ns) for path, info in entries if stat.S_ISREG(info.st_mode)}


def first_calls(settings: Settings, size: int, steps: int) -> dict:
    """In a fresh process: load, apply the speed options (compiling lazily), then time two calls."""
    from sdxl_worker.loading.loader import load_pipeline
    from sdxl_worker.loading.plan import resolve_device
    from sdxl_worker.speed.options import apply_speedups

    device = resolve_device(settings.device)
    started = time.perf_counter()
    pipe, _ = load_pipeline(settings.model_path, device)
    load_s = time.perf_counter() - started
    apply_speedups(pipe, settings.speed, device)
    first_s, _ = timed(lambda: call_pipeline(pipe, size, steps), device)
    second_s, _ = timed(lambda: call_pipeline(pipe, size, steps), device)
    import torch._dynamo.utils

    # Where the first call's time went (Dynamo tracing, AOT, inductor cache loads), for the report.
    breakdown = torch._dynamo.utils.compile_times(repr="str", aggregate=True)
    return {"load_s": round(load_s, 3), "first_call_s": round(first_s, 3), "second_call_s": round(second_s, 3),
            "compile_times": str(breakdown)[-3000:]}
