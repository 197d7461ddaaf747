"""Load what the plan says (loading/plan.py) from the checked volume, offline; any error raised while loading (CUDA,
a file that changed since the check, a bug) propagates with its cause, never a reason to try another weight set.

On a network filesystem (loading/filesystem.py) or the CPU (LOAD_STREAMS=auto) each model is built empty from
its config and given its tensors as parallel streams read its files, each byte once, cast on the way where the
plan says (loading/streamed.py). On a GPU host's local disk, or with LOAD_STREAMS=0, the libraries load it
instead (local files only, safetensors only, dtype passed explicitly because transformers 5 writes its own "dtype"
into configs, straight onto the device with `device_map`) while background readers stream the planned files into
the page cache (see prefetch.py). Then the components are assembled into the pipeline class
model_index.json names.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdxl_worker.loading.plan import LoadPlan, choose_streams, plan_load, reader_name, resolve_device
from sdxl_worker.loading.prefetch import Prefetcher
from sdxl_worker.loading.streamed import read_state_dict
from sdxl_worker.sentences import describe
from sdxl_worker.sources import DEFAULT_MODEL_CACHE
from sdxl_worker.volume.check import check_volume
from sdxl_worker.volume.report import VolumeReport, WeightSet
from sdxl_worker.weights.architecture import map_names, rules_of
from sdxl_worker.weights.layout import Variant, variant_suffix
from sdxl_worker.weights.offline import enforce_offline

log = logging.getLogger(__name__)


@dataclass
class LoadRecord:
    """How the pipeline was loaded; returned with it, logged, and reported with every job."""

    model_path: str
    device: str
    dtype: str
    variant: str
    variants: dict[str, str]
    seconds: float
    bytes_read: int
    reasons: list[str] = field(default_factory=list)
    # Parallel streams that read the weights (0: the libraries' loader), and why that many.
    streams: int = 0
    streams_reason: str = ""
    # See LoadedComponents.
    components_s: dict[str, float] = field(default_factory=dict)
    prefetch_lead_gb: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LoadedComponents:
    """Each component as loaded, with its own load time and, for the weighted ones, the prefetch readers' lead."""

    components: dict[str, Any]
    # In load order. The lead is GB read beyond the component's last byte when it finished (negative: the
    # loader got there first and read those bytes itself): where a cold start's time beyond the raw read goes.
    seconds: dict[str, float]
    prefetch_lead_gb: dict[str, float]


def load_components(plan: LoadPlan, *, prefetch: bool = True, streams: int = 0) -> LoadedComponents:
    """Load every component the plan names, one after another.

    `streams` > 0: each model's files read once by that many parallel streams (loading/streamed.py). 0: the
    libraries' own loader, memory-mapping the files while the prefetch readers stream them into the page cache.
    """
    import torch

    model_path = Path(plan.model_path)
    dtype = getattr(torch, plan.dtype)
    # On the CPU, memory-mapped tensors stay backed by the volume's files: a file truncated or
    # replaced under a running worker would kill it with SIGBUS at the next job. Copy them instead.
    # On CUDA the weights are copied to the GPU anyway, and mapping is what lets prefetch help.
    no_mmap = {} if plan.device.startswith("cuda") else {"disable_mmap": True}
    loaded = LoadedComponents({}, {}, {})
    needed = 0
    with Prefetcher(plan.weight_files()) if prefetch and not streams else nullcontext() as prefetcher:
        for component in plan.components:
            name, weights = component.name, component.weights
            began = time.perf_counter()
            if weights is None:
                loaded.components[name] = _load_component(model_path, name, component.library, component.class_name,
                                                          {})
            elif streams:
                loaded.components[name] = _load_streamed(model_path, name, component.library, component.class_name,
                                                         weights, dtype, plan.device, streams)
            else:
                options = {"variant": variant_suffix(weights.variant), "dtype": dtype, "device_map": plan.device,
                           **no_mmap}
                loaded.components[name] = _load_component(model_path, name, component.library,
                                                          component.class_name, options)
            loaded.seconds[name] = round(time.perf_counter() - began, 3)
            if weights is not None:
                needed += weights.bytes
                if prefetcher is not None:
                    loaded.prefetch_lead_gb[name] = round((prefetcher.bytes_read - needed) / 1e9, 2)
    return loaded


class ComponentLoadError(RuntimeError):
    """A component the volume check passed that its library would not load as its config describes."""


def _load_component(model_path: Path, name: str, library: str, class_name: str, options: dict[str, Any]) -> Any:
    """One component from its subfolder, offline; a model whose weights do not fill it exactly is refused.

    For a model, `options` holds its weight set, dtype and device. Its library reports tensors missing from the
    files (which it would fill with random values), tensors it has no place for, and shapes that differ: each
    is a refusal naming the component, never a warning in a log. Any other error is re-raised with the
    component's name in front, the library's own message after it.
    """
    cls = _component_class(library, class_name)
    try:
        if not options:
            return cls.from_pretrained(model_path, subfolder=name, local_files_only=True)
        # The fallback's float32 files are cast to float16 while loading, before the GPU copy: faster than
        # casting on the GPU (benchmarks/RESULTS.md), and never a float32 copy in GPU memory.
        model, info = cls.from_pretrained(model_path, subfolder=name, local_files_only=True, use_safetensors=True,
                                          output_loading_info=True, **options)
    except Exception as exc:
        raise ComponentLoadError(f"{name}: {describe(exc)}") from exc
    _refuse(name, ("tensor(s) missing from its weights", info.get("missing_keys")),
            ("tensor(s) in its weights that it has no place for", info.get("unexpected_keys")),
            ("tensor(s) of another shape", info.get("mismatched_keys")),
            ("load error(s)", info.get("error_msgs")))
    # Inference only. Loading a LoRA turns requires_grad off on every parameter, and code compiled while it was on
    # records it in its guards: it would recompile for every job after the first LoRA job.
    model.requires_grad_(False)
    return model


def _load_streamed(model_path: Path, name: str, library: str, class_name: str, weights: WeightSet,
                   dtype: Any, device: str, streams: int) -> Any:
    """One model built empty from its config, then given its tensors as read once from the files whose headers
    the volume check parsed, under the names its library gives them (weights/architecture.py: transformers 4's
    `text_model.` prefix, stored `position_ids`, ...); refused, naming the component, when the tensors do not fill
    it exactly (as `_load_component`)."""
    from accelerate import init_empty_weights

    cls = _component_class(library, class_name)
    folder = model_path / name
    try:
        if library == "diffusers":
            config = cls.load_config(folder, local_files_only=True)
            with init_empty_weights():  # parameters on the meta device; buffers real (CLIP's position ids)
                model = cls.from_config(config)
        else:
            config = cls.config_class.from_pretrained(folder, local_files_only=True)
            with init_empty_weights():
                model = cls(config)
        names = map_names(rules_of(model), weights.shapes, model.state_dict(), single_file=not weights.sharded)
    except Exception as exc:
        raise ComponentLoadError(f"{name}: {describe(exc)}") from exc
    # Names are known from the headers: a set the model has no place for is refused before its bytes are read.
    _refuse(name, ("tensor(s) in its weights that it has no place for", names.unexpected),
            ("tensor(s) stored under two names", names.duplicates))
    try:
        state = read_state_dict(weights.headers, dtype, device, streams)
        model.load_state_dict({names.names[k]: t for k, t in state.items() if k in names.names}, strict=False,
                              assign=True)
    except Exception as exc:
        raise ComponentLoadError(f"{name}: {describe(exc)}") from exc
    _refuse(name, ("tensor(s) missing from its weights",
                   [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]))
    model.to(device)  # the buffers the weights do not hold
    model.train(False)  # inference mode for dropout and norms, as from_pretrained leaves it
    model.requires_grad_(False)
    return model


def _refuse(name: str, *found: tuple[str, Any]) -> None:
    """Raise ComponentLoadError naming the component, each kind of problem counted with one example, if any."""
    problems = [f"{len(keys)} {what}, e.g. {sorted(map(str, keys))[0]}" for what, keys in found if keys]
    if problems:
        raise ComponentLoadError(f"{name}: {'; '.join(problems)}")


def assemble_pipeline(plan: LoadPlan, components: Mapping[str, Any]) -> Any:
    """The pipeline class model_index.json names, built from the loaded components and its own settings."""
    import diffusers

    pipeline_cls = getattr(diffusers, plan.pipeline_class)
    accepted = inspect.signature(pipeline_cls.__init__).parameters
    extra = {k: v for k, v in plan.pipeline_config.items() if k in accepted}
    pipe = pipeline_cls(**components, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_planned(plan: LoadPlan, *, prefetch: bool = True, streams: int | None = 0) -> tuple[Any, LoadRecord]:
    """Load what `plan` (made from the volume check) says, offline; the pipeline and how it was loaded.

    `streams`: parallel streams reading each weight byte once; 0: the libraries' loader; None: by the device and the
    filesystem (`choose_streams`)."""
    enforce_offline()
    import diffusers
    import transformers

    # Per-file progress bars would flood the worker's log on every cold start.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    for reason in plan.reasons:
        log.warning("load plan: %s", reason)
    streams, streams_reason = choose_streams(plan.model_path, streams, plan.device)
    log.info("loading %s (%s, %s on %s, %.2f GB) with %s (%s)", plan.model_path, plan.label, plan.dtype,
             plan.device, plan.bytes_to_read / 1e9, reader_name(streams), streams_reason)
    started = time.perf_counter()
    loaded = load_components(plan, prefetch=prefetch, streams=streams)
    pipe = assemble_pipeline(plan, loaded.components)
    record = LoadRecord(
        model_path=plan.model_path,
        device=plan.device,
        dtype=plan.dtype,
        variant=plan.label,
        variants=dict(plan.variants),
        seconds=round(time.perf_counter() - started, 3),
        bytes_read=plan.bytes_to_read,
        reasons=list(plan.reasons),
        components_s=loaded.seconds,
        prefetch_lead_gb=loaded.prefetch_lead_gb,
        streams=streams,
        streams_reason=streams_reason,
    )
    log.info("loaded in %.2f s: %s", record.seconds, record.to_dict())
    return pipe, record


def load_pipeline(path: str | os.PathLike[str], device: str = "auto", *, prefetch: bool = True,
                  streams: int | None = 0, model_cache: str = DEFAULT_MODEL_CACHE) -> tuple[Any, LoadRecord]:
    """Check the model at `path` (a folder, or a Hub id in a model cache), plan and load: the whole path in one
    call, for tools and tests."""
    report = check_volume(path, tensors=True, model_cache=model_cache)
    return load_planned(plan_load(report, resolve_device(device)), prefetch=prefetch, streams=streams)


def weight_files(model_path: Path, report: VolumeReport, variants: Mapping[str, Variant]) -> list[Path]:
    """The weight files a load with these per-component variants reads, in load order."""
    return [path for name, variant in variants.items()
            for path in report.components[name].weight_sets[variant].paths(model_path / name)]


def _component_class(library: str, class_name: str) -> type:
    if library not in ("diffusers", "transformers"):
        raise ValueError(f"component library {library!r} is not one this worker loads")
    return getattr(importlib.import_module(library), class_name)
