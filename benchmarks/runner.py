"""Run scenarios in order, saving the results, the table and the chart after each stage (a run cut short at
a device's time limit keeps what it measured). A stage that fails is recorded with its error, and the run goes
on: on a new machine, a failure is a finding."""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.chart import draw_chart
from benchmarks.report import render
from benchmarks.results import Failure, Result, Run
from benchmarks.scenarios import Scenario
from benchmarks.stages.common import environment, free

VOLUME_STAGES = {"loads", "network_loads", "generation", "features", "workload", "cached_start", "prepare",
                 "switch", "aot_compile"}


class Bench:
    """Where a run's results go: benchmark.json, benchmark.md and benchmark.png in `out`."""

    def __init__(self, out: Path, settings: dict[str, Any]) -> None:
        self.out = out
        self.out.mkdir(parents=True, exist_ok=True)
        self.run = Run(settings)
        self.started = time.perf_counter()

    def record(self, scenario: str, result: Result) -> None:
        self.run.entries.append((scenario, result))
        self.save()
        print(f"[bench] {scenario}: {json.dumps(asdict(result), default=str)[:2000]}", flush=True)

    def save(self) -> None:
        self.run.total_s = round(time.perf_counter() - self.started, 1)
        (self.out / "benchmark.json").write_text(json.dumps(self.run.to_json(), indent=2, default=str))
        (self.out / "benchmark.md").write_text(render(self.run) + "\n")
        draw_chart(self.run, self.out / "benchmark.png")


def run_scenarios(bench: Bench, scenarios: list[Scenario], *, scale: str, device: str, size: int, steps: int,
                  runs: int, volume_dir: Path, drop_caches: bool, layout: str = "current") -> None:
    from benchmarks.stages.aot import measure_aot_compile
    from benchmarks.stages.attention import measure_attention
    from benchmarks.stages.compile_cache import measure_cached_start
    from benchmarks.stages.features import measure_features
    from benchmarks.stages.flops import unet_flops
    from benchmarks.stages.generation import Stock, measure_generation, worker_settings
    from benchmarks.stages.io import measure_loads
    from benchmarks.stages.netfs import measure_network_loads
    from benchmarks.stages.prepare import measure_prepare
    from benchmarks.stages.switch import measure_switch
    from benchmarks.stages.tracing import measure_tracing
    from benchmarks.stages.workload import measure_workload
    from dev.netfs import unavailable
    from dev.synthetic_volume import build_volume, component_config

    bench.run.environment = environment(device)
    volume = None
    if any(stage in VOLUME_STAGES for scenario in scenarios for stage in scenario.stages):
        volume = build_volume(volume_dir / "photonicfusion-sdxl", scale, extras=True,
                              device="cuda" if device.startswith("cuda") else "cpu", layout=layout)
    stock: Stock | None = None
    for scenario in scenarios:
        settings = None
        if volume is not None:
            overrides = dict(scenario.settings)
            if overrides.get("COMPILE") == "1" and "COMPILE_CACHE_DIR" not in overrides:
                # Beside the model, as on a real volume; emptied, so the scenario's first start compiles from scratch.
                cache_dir = volume_dir.resolve() / f"compile-cache-{_slug(scenario.name)}"
                shutil.rmtree(cache_dir, ignore_errors=True)
                overrides["COMPILE_CACHE_DIR"] = str(cache_dir)
            settings = worker_settings(volume, device, size, overrides)
        for stage in scenario.stages:
            if stage == "profile":
                continue  # part of the generation stage: one more warm job of the same worker
            # A failure is a result of this machine: recorded, and the next stage runs.
            try:
                if stage == "loads":
                    for result in measure_loads(volume, device, drop_caches):
                        bench.record(f"{scenario.name}: {result.plan}", result)
                elif stage == "network_loads":
                    if (why := unavailable()) is not None:
                        raise RuntimeError(f"no simulated network volume here: {why}")
                    for result in measure_network_loads(volume, device, scale, volume_dir / "netfs-mount"):
                        bench.record(f"{scenario.name}: {result.network}", result)
                elif stage == "attention":
                    bench.record(scenario.name, measure_attention(device, size))
                elif stage == "generation":
                    if stock is None:
                        stock = Stock(volume, device, size, steps)
                        bench.record("stock diffusers", stock.alone)
                    bench.record(scenario.name, measure_generation(stock, settings, runs,
                                                                   "profile" in scenario.stages))
                elif stage == "features":
                    bench.record(scenario.name, measure_features(settings, size, steps, runs, volume_dir / "loras"))
                elif stage == "workload":
                    bench.record(scenario.name, measure_workload(settings, size, steps, runs, volume_dir / "loras"))
                elif stage == "aot_compile":
                    bench.record(scenario.name, measure_aot_compile(volume, device, size))
                elif stage == "switch":
                    bench.record(scenario.name, measure_switch(settings, size, steps, runs, volume_dir))
                elif stage == "cached_start":
                    bench.record(scenario.name, measure_cached_start(settings, size, steps))
                elif stage == "prepare":
                    bench.record(scenario.name, measure_prepare(volume, runs, drop_caches))
                elif stage == "flops":
                    bench.record(scenario.name, unet_flops(component_config(scale, "unet"), size))
                elif stage == "tracing":
                    bench.record(scenario.name, measure_tracing(component_config(scale, "unet"),
                                                                component_config(scale, "vae"), size))
            except Exception as exc:
                bench.record(scenario.name, Failure(stage, f"{type(exc).__name__}: {exc}"[:2000]))
            free(device)  # outside the handler: its exception's frames would keep a failed stage's pipeline alive
    bench.save()


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
