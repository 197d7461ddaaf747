"""Typed results of a benchmark run: what each stage measured, saved as JSON and rendered by report.py."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Spread:
    """Repeated measurements of one quantity: their median and range."""

    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def low(self) -> float:
        return min(self.runs)

    @property
    def high(self) -> float:
        return max(self.runs)


@dataclass(frozen=True)
class Environment:
    python: str
    torch: str
    diffusers: str
    transformers: str
    device: str
    cpu_count: int | None
    gpu: str | None = None
    cuda: str | None = None


@dataclass(frozen=True)
class LoadResult:
    """One load plan: its bytes read raw, and stock's and our loader's load, cold and warm."""

    plan: str
    bytes: int
    cache_drop: str
    raw_read_s: float
    raw_read_parallel_s: float
    stock_cold_s: float
    stock_warm_s: float
    ours_cold_s: float
    ours_warm_s: float
    ours_variant: str
    ours_cold_components_s: dict[str, float]
    ours_cold_prefetch_lead_gb: dict[str, float]
    ours_streams: int = 0  # the worker's default loader: its parallel streams; 0: the libraries' loader
    streamed_cold_s: float | None = None  # the read-once loader, its default streams (16)
    streamed_warm_s: float | None = None


@dataclass(frozen=True)
class NetworkLoadResult:
    """One cell of the simulated network volume's grid: each way's seconds, and the bytes it had served."""

    network: str
    plan: str  # the weight set read (fp16: a CPU run reads the volume's fp16-only view)
    plan_bytes: int
    raw_s: float
    raw_parallel_s: float
    stock_s: float  # when stopped, the limit it ran to
    ours_s: float
    raw_bytes: int
    stock_bytes: int  # when stopped, what it had been served by then
    ours_bytes: int
    stock_stopped: bool = False
    ours_by_streams: dict[int, float] = field(default_factory=dict)  # seconds by number of streams
    ours_bytes_most: int = 0  # the most bytes any of ours' loads had served

    @property
    def bound_s(self) -> float:
        return min(self.raw_s, self.raw_parallel_s)


@dataclass(frozen=True)
class Kernel:
    name: str
    ms: float
    calls: int
    share: float


@dataclass(frozen=True)
class Profile:
    """One warm job under torch.profiler: how busy the device was, and with what."""

    what: str
    wall_s: float
    busy_s: float
    top: tuple[Kernel, ...]


@dataclass(frozen=True)
class StockGeneration:
    """Stock diffusers alone, before any scenario of ours is loaded beside it."""

    first_call_s: float
    peak_vram_gib: float | None
    peak_reserved_gib: float | None


@dataclass(frozen=True)
class GenerationResult:
    """A scenario's worker against stock diffusers, their warm jobs interleaved on the same seeds.

    Interleaved (stock, ours, stock, ours, ...) so that load coming and going on a shared host falls on both;
    `ratios` pairs each of ours with the stock run just before it.
    """

    applied: tuple[str, ...]
    start_s: float
    warm_up_s: float
    first_job_s: float
    stock: Spread
    ours: Spread
    ours_total: Spread
    peak_vram_gib: float | None
    peak_reserved_gib: float | None
    latents_max_abs_diff: float
    image_psnr_db: float | None  # None: identical images
    profile: Profile | None = None

    @property
    def ratios(self) -> Spread:
        return Spread(tuple(o / s for o, s in zip(self.ours.runs, self.stock.runs, strict=True)))

    @property
    def verdict(self) -> str:
        """"faster" or "slower" when every interleaved pair agrees; else "inconclusive" (noise exceeds the gap)."""
        ratios = self.ratios
        if ratios.high < 1:
            return "faster"
        if ratios.low > 1:
            return "slower"
        return "inconclusive"


@dataclass(frozen=True)
class CachedStart:
    """A fresh process with the compile cache filled, as a later cold start. `priming_compile_s`: the compile of a
    first fresh process that had to write into the cache (the second was measured); None where the first found
    the cache whole and was measured."""

    load_s: float
    first_call_s: float
    second_call_s: float
    priming_compile_s: float | None
    compile_times: str

    @property
    def compile_s(self) -> float:
        return round(self.first_call_s - self.second_call_s, 3)


@dataclass(frozen=True)
class KernelTiming:
    ms: float
    tflops: float


@dataclass(frozen=True)
class AttentionResult:
    """Each SDPA kernel on each of the UNet's attention shapes: a timing, or None where it cannot run."""

    shapes: dict[str, dict[str, KernelTiming | None]]


@dataclass(frozen=True)
class FlopsResult:
    per_call_tflop: float
    share_by_op: dict[str, float]
    linear_share: float
    fp8_layers_share_of_linear: float


@dataclass(frozen=True)
class TracingResult:
    """Dynamo's first call per compile scope, on the meta device: UNet and VAE decoder seconds, graphs, nodes."""

    scopes: dict[str, dict[str, float]]


@dataclass(frozen=True)
class PrepareResult:
    """`prepare_volume.py add-fp16` on a standard-only volume against a raw copy of the same bytes, interleaved."""

    bytes_read: int
    bytes_written: int
    cache_drop: str
    raw_copy: Spread
    ours: Spread  # the whole command, as an operator runs it
    ours_write: Spread  # its write phase alone (after Python, torch and the volume check)
    peak_rss_gib: float

    @property
    def ratio(self) -> float:
        return self.ours.median / self.raw_copy.median


@dataclass(frozen=True)
class AotCompileResult:
    """`prepare_volume.py compile` for the run's size, in its own process; the packages it wrote (none: there
    already)."""

    wall_s: float
    compile_s: float
    packages: tuple[str, ...]
    bytes_written: int
    peak_rss_gib: float


@dataclass(frozen=True)
class SwitchResult:
    """Two models on one worker, a fine-tune beside its base (MODELS): switches between them once both are loaded."""

    first_read_s: float  # the first job naming the second model: reading it (and its warm-up)
    switch: Spread  # the reply's switch_s
    first_job_after: Spread  # inference seconds of the first job after a switch
    next_job: Spread  # and of the job after it, on the same model
    model_gib: float  # one model's weights
    host_gib: float  # what the model not serving holds besides the serving one's
    shared: tuple[str, ...]  # the components the two hold once


@dataclass(frozen=True)
class FeatureJob:
    """One kind of job beyond text to image, warm, and how the UNet served it (per job; None: no CUDA graph)."""

    job: str
    mode: str
    first_s: float
    warm: Spread
    unet_replays: int | None
    unet_eager_calls: int | None
    image_std: float  # of the 8-bit output: 0 is a flat picture
    prompt_tokens: int
    image_sha: str  # equal for equal images


@dataclass(frozen=True)
class FeaturesResult:
    """A scenario's worker serving each feature's job, text to image first as the yardstick."""

    applied: tuple[str, ...]
    jobs: tuple[FeatureJob, ...]


@dataclass(frozen=True)
class WorkloadKind:
    """One kind of job in the workload mix: its warm seconds on each side, its first time through the worker, and
    how the worker's UNet served it (`graph`: None without CUDA graphs)."""

    kind: str
    shape: str  # WIDTHxHEIGHTxIMAGES as run
    jobs: int  # in one pass of the mix
    stock: Spread  # seconds, every job of the kind in every warm pass
    ours: Spread
    ours_first_s: float  # its first job in the first pass: a new shape's capture, a LoRA's first load
    first_graph: str | None
    graph: str | None  # the statuses its warm jobs replied, joined
    stock_peak_gib: float | None  # reserved GPU memory beyond the other side's, one job alone
    ours_peak_gib: float | None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours.median / self.stock.median


@dataclass(frozen=True)
class WorkloadResult:
    """The mix, job by job, stock diffusers and the worker interleaved: per kind, and the mix's throughput."""

    applied: tuple[str, ...]
    kinds: tuple[WorkloadKind, ...]
    images_per_pass: int
    stock_pass: Spread  # seconds for one pass of the whole mix
    ours_pass: Spread
    ours_first_pass_s: float  # the first pass, captures and first loads included
    graphs_kept: int | None

    def images_per_hour(self, seconds: Spread) -> float:
        return round(3600 * self.images_per_pass / seconds.median, 1)


@dataclass(frozen=True)
class Failure:
    """A stage that failed on this machine: a finding, kept in the report with its error."""

    stage: str
    error: str


Result = (LoadResult | NetworkLoadResult | StockGeneration | GenerationResult | CachedStart | AttentionResult
          | FlopsResult | TracingResult | PrepareResult | FeaturesResult | WorkloadResult | SwitchResult
          | AotCompileResult | Failure)


@dataclass
class Run:
    """Everything one run measured, in order: (scenario name, result) pairs."""

    settings: dict[str, Any]
    environment: Environment | None = None
    entries: list[tuple[str, Result]] = field(default_factory=list)
    total_s: float | None = None

    def of(self, kind: type) -> list[tuple[str, Any]]:
        return [(name, result) for name, result in self.entries if isinstance(result, kind)]

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "environment": asdict(self.environment) if self.environment else None,
                "results": [{"scenario": name, "kind": type(result).__name__, **asdict(result)}
                            for name, result in self.entries],
                "total_s": self.total_s}
