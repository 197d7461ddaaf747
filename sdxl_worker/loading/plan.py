"""The load plan, decided from the volume check alone, before any weight is read (`plan_load`, a pure function): on
CUDA the fp16 variant when every component has it complete, else the standard files cast to float16 (the fallback,
logged with the reason); a component-by-component mix only when neither set is complete, and then said so; on CPU
float32, from the standard files if they are complete, else from fp16. Because the plan asks only for files the
check found intact, no exception is ever needed to discover a missing variant. Also how the weights are read
(`choose_streams`: LOAD_STREAMS) and on which device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sdxl_worker.loading.filesystem import mount_of
from sdxl_worker.loading.streamed import DEFAULT_STREAMS
from sdxl_worker.volume.report import VolumeReport, WeightSet, format_bytes
from sdxl_worker.weights.layout import Variant


class VolumeNotLoadable(RuntimeError):
    """The volume check found no way to load the pipeline; the message is the check's summary."""

    def __init__(self, report: VolumeReport) -> None:
        super().__init__(report.summary())
        self.report = report


@dataclass(frozen=True)
class ComponentPlan:
    """One component as the loader loads it: its class and, for a model, the weight set the check found intact
    (files and parsed headers: the read-once loader reads the data from these, not the headers again)."""

    name: str
    library: str
    class_name: str
    weights: WeightSet | None = None  # None: a tokenizer, scheduler or processor, loaded from its folder


@dataclass(frozen=True)
class LoadPlan:
    """Everything the loader needs: which weight set each model is read from, in which dtype, on which device, and
    the pipeline the components make."""

    model_path: str
    device: str
    dtype: str
    variants: dict[str, Variant]
    label: str
    bytes_to_read: int
    components: tuple[ComponentPlan, ...]  # in model_index.json's order
    pipeline_class: str
    pipeline_config: dict[str, object]
    reasons: tuple[str, ...] = ()

    def weight_files(self) -> list[Path]:
        """The weight files the load reads, in load order."""
        return [path for c in self.components if c.weights is not None
                for path in c.weights.paths(Path(self.model_path) / c.name)]


def plan_load(report: VolumeReport, device: str) -> LoadPlan:
    """Decide the load from the check alone; raise VolumeNotLoadable if the volume cannot be served."""
    if not report.loadable:
        raise VolumeNotLoadable(report)
    models = {n: c for n, c in report.components.items() if c.kind == "model"}
    on_cuda = device.startswith("cuda")
    preferred: Variant = "fp16" if on_cuda else "standard"
    other: Variant = "standard" if on_cuda else "fp16"
    reasons: list[str] = []
    if report.plans[preferred].possible:
        variants = dict.fromkeys(models, preferred)
    elif report.plans[other].possible:
        variants = dict.fromkeys(models, other)
        missing = ", ".join(report.plans[preferred].missing_in)
        if on_cuda:
            standard = [models[name].weight_sets["standard"] for name in models]
            reasons.append(f"fp16 variant incomplete in {missing}: loading the standard files cast to float16, "
                           f"reading {format_bytes(sum(w.bytes for w in standard))} where an fp16 set would read "
                           f"{format_bytes(2 * sum(w.parameters for w in standard))}")
        else:
            reasons.append(f"standard weights incomplete in {missing}: loading the fp16 files as float32 on CPU")
    else:
        variants = {n: (preferred if preferred in c.complete_variants() else other) for n, c in models.items()}
        reasons.append(
            "no weight set is complete for every component; mixing deliberately: "
            + ", ".join(f"{n}={v}" for n, v in sorted(variants.items()))
        )
    return plan_of(report, device, "float16" if on_cuda else "float32", variants, tuple(reasons))


def plan_of(report: VolumeReport, device: str, dtype: str, variants: dict[str, Variant],
            reasons: tuple[str, ...] = ()) -> LoadPlan:
    """The plan that loads each model from the weight set `variants` names, as `dtype` on `device`."""
    label = next(iter(set(variants.values()))) if len(set(variants.values())) == 1 else "mixed"
    models = {name: report.components[name].weight_sets[variant] for name, variant in variants.items()}
    components = tuple(ComponentPlan(name, c.library, c.class_name, models.get(name))
                       for name, c in report.components.items())
    return LoadPlan(report.model_path, device, dtype, variants, label, sum(w.bytes for w in models.values()),
                    components, report.pipeline_class or "", dict(report.pipeline_config), reasons)


def choose_streams(model_path: str | os.PathLike[str], setting: int | None, device: str) -> tuple[int, str]:
    """LOAD_STREAMS resolved, and why: the setting when given; for auto (None) DEFAULT_STREAMS on the CPU or when
    the model folder is on a network filesystem, else 0 (the libraries' loader, measured within 1.1x of a raw read
    on a GPU host's local disk; on the CPU, where it may not memory-map the volume, it measured 1.4-1.7x slower
    than the read-once loader: benchmarks/RESULTS.md)."""
    if setting is not None:
        return setting, f"LOAD_STREAMS={setting}"
    if not device.startswith("cuda"):
        return DEFAULT_STREAMS, "LOAD_STREAMS=auto: on the CPU the weights are copied into memory, not mapped"
    mount = mount_of(model_path)
    if mount is None:
        return 0, "LOAD_STREAMS=auto: the mount table is unreadable, so the libraries' loader"
    where = f"{mount.fs_type} at {mount.mount_point}"
    if mount.network:
        return DEFAULT_STREAMS, f"LOAD_STREAMS=auto: {where} is a network filesystem"
    return 0, f"LOAD_STREAMS=auto: {where} is a local filesystem"


def reader_name(streams: int) -> str:
    """How a load with `streams` (0: none) reads the weights, in words for logs and reports."""
    return f"{streams} parallel streams" if streams else "the libraries' loader"


class DeviceError(ValueError):
    """DEVICE names a GPU this machine does not have; the message is one sentence."""


def resolve_device(setting: str) -> str:
    """The DEVICE setting as a torch device: `auto` is CUDA when torch sees a GPU, else the CPU; a CUDA device
    torch cannot see is DeviceError (the libraries would fail deep in the load, naming a driver or a build)."""
    if setting == "cpu":
        return setting
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if setting == "auto":
        return "cuda" if available else "cpu"
    index = int(setting.partition(":")[2] or 0)
    if index >= available:
        seen = "no CUDA GPU" if not available else f"{available} CUDA GPU(s), cuda:0 to cuda:{available - 1}"
        raise DeviceError(f"DEVICE={setting}, but torch sees {seen} here: set DEVICE=auto (or cpu), or run the "
                          "worker where that GPU is")
    return setting
