"""`prepare_volume.py compile` as an operator runs it (its own process), for the run's size on the run's device:
its wall time, what it wrote, and its peak memory. The scenario's next stage then starts a worker that loads those
packages (AOT=auto), measured as any generation is: start, first job, warm jobs against stock's, peak memory."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.results import AotCompileResult

ROOT = Path(__file__).resolve().parents[2]


def measure_aot_compile(volume: Path, device: str, size: int) -> AotCompileResult:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "prepare_volume.py", "compile", str(volume), "--shapes", f"{size}x{size}",
                          "--device", "cuda" if device.startswith("cuda") else "cpu", "--json"], cwd=ROOT,
                         capture_output=True, text=True)
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"prepare_volume.py compile exited {run.returncode}: {run.stderr[-1500:]}")
    summary = json.loads(run.stdout)
    return AotCompileResult(wall_s=round(wall, 1), compile_s=round(summary["seconds"], 1),
                            packages=tuple(summary["written"]), bytes_written=summary["bytes_to_write"],
                            peak_rss_gib=round((summary["peak_memory_bytes"] or 0) / 1024**3, 2))
