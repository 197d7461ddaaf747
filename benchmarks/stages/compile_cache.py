"""A start with the compile cache filled, as a later cold start of a COMPILE=1 worker pays it.

Measured in fresh processes, run twice and the second measured: the stage before compiled in this process,
which may have taken some artifacts from its in-memory caches without writing them to the cache folder
(seen on CPU: inductor's precompiled header). The first fresh process writes whatever was missing, as a
worker's first start would.
"""

from __future__ import annotations

import json
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
    results = []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", code, settings.model_dump_json()], cwd=ROOT, capture_output=True,
                             text=True, timeout=900)
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if run.returncode != 0 or not lines:
            print(run.stderr[-4000:], file=sys.stderr)
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the cached-start process exited {run.returncode}: {last}")
        results.append(json.loads(lines[-1].removeprefix("RESULT ")))
    priming, measured = results
    return CachedStart(priming_compile_s=round(priming["first_call_s"] - priming["second_call_s"], 3), **measured)


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
