"""Benchmark the worker against stock diffusers on one machine, in one run: a table, a chart and JSON.

    python -m benchmarks                           # the GPU check's suite: full-size SDXL on the GPU
    python -m benchmarks --suite loads --suite compile-full
    python -m benchmarks --scale tiny --device cpu --suite smoke     # every stage kind, tiny, on a CPU
    python -m benchmarks --suite meta --scale full # FLOPs and Dynamo tracing from SDXL's configs, any machine
    python -m benchmarks --scale tiny --device cpu --suite smoke --scenario "UNet FLOPs"   # one scenario of it
    python -m benchmarks --list                    # the suites and their scenarios

The suites are data (benchmarks/scenarios.py). A full-size random-weight volume is built once under
--volume-dir and reused. Figures come from this run only; nothing is assumed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks.results import Failure
from benchmarks.runner import Bench, run_scenarios
from benchmarks.scenarios import SUITES

# The stages that read the volume cold, after evicting it from the page cache.
COLD_STAGES = ("loads", "prepare")

# Per scale: image size, steps. Tiny is for the CPU: seconds, not minutes.
DEFAULTS = {"full": (1024, 30), "tiny": (256, 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", action="append", choices=sorted(SUITES), help="repeatable; default: gpu-check")
    parser.add_argument("--scale", choices=sorted(DEFAULTS), default="full")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--size", type=int, help="image width and height (default: 1024 full, 256 tiny)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: 30 full, 4 tiny)")
    parser.add_argument("--runs", type=int, default=3, help="warm runs of each side, interleaved")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="folder for the results")
    parser.add_argument("--layout", choices=("current", "published", "legacy"), default="current",
                        help="whose tensor names the synthetic volume uses (dev/synthetic_volume.py)")
    parser.add_argument("--volume-dir", type=Path, default=Path("bench-out/volume"),
                        help="where the synthetic volume is built or reused")
    parser.add_argument("--no-drop-caches", dest="drop_caches", action="store_false",
                        help="evict only the benchmark's files (fadvise), not the whole page cache")
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help="repeatable; run only these scenarios of the suites (names as --list prints them)")
    parser.add_argument("--list", action="store_true", help="print the suites and their scenarios, run nothing")
    args = parser.parse_args(argv)
    if args.list:
        for name, scenarios in SUITES.items():
            print(f"{name}: " + "; ".join(f"{s.name} ({', '.join(s.stages)}"
                                          f"{', ' + str(dict(s.settings)) if s.settings else ''})" for s in scenarios))
        return 0
    suites = args.suite or ["gpu-check"]
    scenarios = [s for suite in suites for s in SUITES[suite] if not args.scenario or s.name in args.scenario]
    if unknown := sorted(set(args.scenario or ()) - {s.name for suite in suites for s in SUITES[suite]}):
        parser.error(f"no scenario {', '.join(map(repr, unknown))} in the suites {', '.join(suites)} (see --list)")
    size, steps = DEFAULTS[args.scale]
    args.size, args.steps = args.size or size, args.steps or steps

    from sdxl_worker.weights.offline import enforce_offline

    enforce_offline()
    import diffusers
    import torch
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = {**{k: str(v) for k, v in vars(args).items()}, "suite": suites, "device": device}
    bench = Bench(args.out, settings)
    if args.drop_caches and os.geteuid() == 0 and any(stage in COLD_STAGES for s in scenarios for stage in s.stages):
        print("[bench] each cold read first drops this machine's whole page cache (root may write "
              "/proc/sys/vm/drop_caches); --no-drop-caches evicts only the benchmark's own files", flush=True)
    run_scenarios(bench, scenarios, scale=args.scale, device=device,
                  size=args.size, steps=args.steps, runs=args.runs, volume_dir=args.volume_dir,
                  drop_caches=args.drop_caches, layout=args.layout)
    print((args.out / "benchmark.md").read_text())
    failed = bench.run.of(Failure)
    if failed:
        print(f"{len(failed)} stage(s) failed on this machine (the report's last table): "
              + "; ".join(f"{name}: {failure.error.splitlines()[0]}" for name, failure in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
