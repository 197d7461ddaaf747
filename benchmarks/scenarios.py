"""What a benchmark run measures, as data: suites of scenarios, each a name, worker settings and its stages.

A scenario's `settings` are worker environment variables over the defaults (never the caller's own
environment, so a run measures what it says). Stages:

- `loads`: raw sequential and parallel reads of each load plan's bytes, then stock `from_pretrained` against
  the worker's loader, cold and warm page cache, for the fp16 variant and for the standard-files fallback;
- `network_loads`: the fp16 plan through a simulated network volume (dev/netfs.py; needs FUSE), a grid of
  latency, bandwidth and page cache: raw reads, stock and ours, seconds and bytes served;
- `attention`: each SDPA kernel on the UNet's attention shapes;
- `generation`: the worker started with `settings`, its warm jobs interleaved with stock diffusers' on the
  same seeds, first job, peak memory, and how far its output is from stock's;
- `profile`: one warm job of the scenario under torch.profiler (kernel time, top kernels);
- `features`: the worker started with `settings` serving image to image, inpainting, a long weighted prompt, a
  LoRA, an embedding, one and two ControlNets and an IP-Adapter image prompt beside text to image: warm times, how
  the UNet served each (graph replays, eager calls), a blank-image check, and the same text-to-image image after
  them as before;
- `workload`: a realistic job mix (stages/workload.py: sizes, image counts, LoRAs, long prompts, image to image,
  samplers, and fast sampling: distilled LoRAs' 4- and 8-step recipes without guidance), stock diffusers and the
  worker interleaved job by job: per kind, warm seconds on each side, the worker's first time (a new shape's
  capture), how its UNet ran, peak memory; the mix's images per hour;
- `cached_start`: with COMPILE=1, a fresh process with the compile cache filled, as a later cold start;
- `prepare`: `prepare_volume.py add-fp16` on a standard-only view of the volume against a raw copy of the same
  bytes (read the standard set, write the fp16 set's size), cold page cache, interleaved; its peak RSS;
- `flops`, `tracing`: the meta device alone, from the scale's configs: the UNet's FLOPs by op, and Dynamo's
  tracing per compile scope (CPU work that no compile cache skips).

To measure something new, add a scenario here; the report and chart pick it up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Stage = Literal["loads", "network_loads", "attention", "generation", "profile", "features", "workload", "cached_start",
                "flops", "tracing", "prepare", "switch", "aot_compile"]


@dataclass(frozen=True)
class Scenario:
    name: str
    stages: tuple[Stage, ...]
    settings: Mapping[str, str] = field(default_factory=dict)


LOADS = Scenario("loads", ("loads",))
ATTENTION = Scenario("attention kernels", ("attention",))
FLOPS = Scenario("UNet FLOPs", ("flops",))
TRACING = Scenario("Dynamo tracing", ("tracing",))
PREPARE = Scenario("add-fp16", ("prepare",))
NETWORK_LOADS = Scenario("network volume", ("network_loads",))
SWITCH = Scenario("two models", ("switch",))
COMPILED_BLOCKS = {"COMPILE": "1", "COMPILE_SCOPE": "blocks"}

SUITES: dict[str, tuple[Scenario, ...]] = {
    # The GPU check: the defaults, and each speed option that might replace them, against stock on one machine.
    "gpu-check": (
        ATTENTION,
        Scenario("ours", ("generation", "profile")),
        Scenario("ours eager", ("generation", "profile"), {"CUDA_GRAPHS": "0"}),
        Scenario("ours compiled blocks", ("generation", "profile", "cached_start"), COMPILED_BLOCKS),
    ),
    # The defaults against eager alone: the shortest check that the worker as shipped beats stock on a GPU.
    "defaults": (
        Scenario("ours", ("generation", "profile", "features")),
        Scenario("ours eager", ("generation",), {"CUDA_GRAPHS": "0"}),
    ),
    # The image's stack (scripts/gpu_check.sh's default): the worker's default start through the simulated network
    # volume (read-once onto the device) against the raw read, the loads from local disk, one job of each kind.
    "image-stack": (NETWORK_LOADS, LOADS, Scenario("ours", ("features",))),
    # Every kind of job users send, at graph speed or not: stock against the defaults, then against COMPILE=1.
    "workload": (Scenario("ours", ("workload",)),),
    "workload-compiled": (Scenario("ours compiled", ("workload",), {"COMPILE": "1"}),),
    # What earlier GPU checks measured already (benchmarks/RESULTS.md): the loads, the whole-UNet compile.
    "loads": (LOADS,),
    # Loads through a simulated network volume: CPU and FUSE, any machine with /dev/fuse.
    "netfs": (NETWORK_LOADS,),
    # Writing the fp16 set onto a volume that lacks it: CPU and disk only, any machine.
    "prepare": (PREPARE,),
    # The compiled packages (prepare_volume.py compile, then AOT=auto) against the default without them, each
    # against stock; the packages stay on the run's volume, so this suite runs alone or last.
    "aot": (Scenario("ours", ("generation",), {"AOT": "off"}),
            Scenario("ours aot", ("aot_compile", "generation", "profile"))),
    # Several models on one worker (MODELS): a switch between a fine-tune and its base, and the job after it.
    "models": (SWITCH,),
    "compile-full": (
        Scenario("ours compiled", ("generation", "profile", "cached_start"),
                 {"COMPILE": "1", "COMPILE_MODE": "reduce-overhead"}),
    ),
    # LoRA jobs and the other features under the defaults (CUDA graphs) and under a compiled UNet, no stock.
    "features": (Scenario("ours", ("features",)), Scenario("ours compiled blocks", ("features",), COMPILED_BLOCKS)),
    "fp8": (Scenario("ours fp8 with CUDA graphs", ("generation", "profile"), {"QUANTIZE": "fp8", "CUDA_GRAPHS": "1"}),
            Scenario("ours fp8 compiled blocks", ("generation", "profile"), {"QUANTIZE": "fp8", **COMPILED_BLOCKS})),
    # Figures from the meta device, on any machine: no volume, no GPU.
    "meta": (FLOPS, TRACING),
    # Every stage kind once, for the CI smoke run at tiny scale on the CPU.
    "smoke": (
        LOADS,
        ATTENTION,
        Scenario("ours", ("generation", "profile", "features")),
        Scenario("ours nofuse", ("generation",), {"FUSE_QKV": "0"}),
        Scenario("ours fp8", ("generation",), {"QUANTIZE": "fp8"}),
        Scenario("ours compiled blocks", ("generation", "cached_start"), COMPILED_BLOCKS),
        FLOPS,
        TRACING,
        PREPARE,
        SWITCH,
    ),
}
