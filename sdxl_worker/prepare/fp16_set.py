"""Write the fp16 variant of every model component that lacks a complete one, from its standard files.

Without the fp16 set the worker serves through its fallback and every cold start reads the float32 files,
twice the bytes, for as long as the volume lives; this writes the set once. What it writes is what diffusers'
`save_pretrained(variant="fp16")` would hold for the standard files cast to float16:

- the same sharding as the standard set (one file, or the same tensors per shard), named as diffusers and
  transformers name a variant's files and index (sdxl_worker/weights/layout.py), the same header metadata;
- each floating tensor cast exactly as `tensor.to(torch.float16)`, other dtypes kept; a finite value beyond
  float16's range (it would become inf) fails that component, naming the tensor and how many values;
- streamed tensor by tensor: memory holds one tensor in both dtypes at a time (for SDXL, text_encoder_2's token
  embedding: 253 MB float32 + 126 MB float16), whatever the shard or model size.

Nothing half-written is ever visible: each file is written under a hidden temporary name, fsynced, then renamed;
a sharded set's index is renamed last, so until then the worker sees no fp16 set for that component (and keeps
its fallback), and a broken fp16 set is removed, index first, before its replacement is written. A later run
removes what an interrupted one left and does the rest.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxl_worker.volume.report import ComponentReport, VolumeReport, format_bytes
from sdxl_worker.weights.files import read_text_bounded
from sdxl_worker.weights.layout import index_file_names, shard_file_name, single_file_name
from sdxl_worker.weights.safetensors_header import SafetensorsInfo, read_safetensors_header
from sdxl_worker.weights.safetensors_io import (
    Progress,
    TensorSpec,
    layout,
    leftovers,
    read_tensors,
    removed_on_error,
    write_json,
    write_safetensors,
)

FLOAT_DTYPES = frozenset({"F32", "F64", "BF16", "F16"})
FLOAT16_MAX = 65504.0
# Kept free beyond the bytes to write: filesystem overhead and the volume's other writers.
MARGIN_BYTES = 64 * 1024**2
MARGIN_FRACTION = 0.01



class PrepareError(RuntimeError):
    """A preparation that cannot go on; the message is one sentence, exit_code what the command returns."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Float16RangeError(ValueError):
    """A finite value too large for float16: casting would write inf."""


@dataclass
class OutputFile:
    """One fp16 file to write from one standard file."""

    path: Path
    source: SafetensorsInfo
    specs: list[TensorSpec]
    bytes: int


@dataclass
class ComponentWork:
    """What one component needs: the fp16 files from its standard ones, the index last, a broken set removed."""

    name: str
    folder: Path
    reason: str
    outputs: list[OutputFile]
    index: tuple[Path, dict[str, Any]] | None = None
    remove: list[Path] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(o.bytes for o in self.outputs)


@dataclass
class Fp16Plan:
    """Everything add-fp16 would do, decided from the volume check and the standard files' headers."""

    model_path: Path
    work: list[ComponentWork]
    complete: list[str]
    blocked: dict[str, str]
    leftovers: list[Path]
    free_bytes: int

    @property
    def bytes_to_write(self) -> int:
        return sum(w.bytes for w in self.work)

    @property
    def bytes_needed(self) -> int:
        return bytes_needed(self.bytes_to_write) if self.work else 0


def bytes_needed(to_write: int) -> int:
    """Free space a run asks for: the bytes it writes and a margin."""
    return to_write + max(MARGIN_BYTES, int(to_write * MARGIN_FRACTION))


def output_specs(source: SafetensorsInfo) -> list[TensorSpec]:
    """The fp16 file's tensors: floating ones as F16, the rest as they are."""
    return [TensorSpec(name, "F16" if e.dtype in FLOAT_DTYPES else e.dtype, e.shape)
            for name, e in source.entries.items()]


def plan_fp16(report: VolumeReport, free_bytes: int) -> Fp16Plan:
    """Decide from the check which components need their fp16 set, and the files each needs."""
    model_path = Path(report.model_path)
    plan = Fp16Plan(model_path, [], [], {}, [], free_bytes)
    for component in report.components.values():
        if component.kind != "model":
            continue
        folder = model_path / component.name
        plan.leftovers += leftovers(folder)
        fp16, standard = component.weight_sets.get("fp16"), component.weight_sets.get("standard")
        if fp16 is not None and fp16.complete:
            plan.complete.append(component.name)
            continue
        if standard is None or not standard.complete:
            why = standard.problem if standard is not None else "no standard weights"
            plan.blocked[component.name] = f"no complete standard set to write it from ({why})"
            continue
        reason = f"fp16 set broken: {fp16.problem}" if fp16 is not None and fp16.present else "no fp16 set"
        work = component_work(component.name, component.library, folder, standard.files, reason)
        if fp16 is not None and fp16.present:
            # Index first: the moment it is gone the set is invisible, whatever is deleted after. Never a file of
            # the standard set, even when a broken index names one.
            work.remove = [folder / f for f in fp16.files if (folder / f).is_file() and f not in standard.files]
        plan.work.append(work)
    return plan


def component_work(name: str, library: str, source_folder: Path, files: list[str], reason: str,
                   folder: Path | None = None) -> ComponentWork:
    """The fp16 set of the weight set `files` in `source_folder`, to be written into `folder` (default: the same)."""
    folder = source_folder if folder is None else folder
    index_names = [f for f in files if f.endswith(".json")]
    shards = [f for f in files if not f.endswith(".json")]
    outputs = []
    for number, shard in enumerate(shards, start=1):
        source = read_safetensors_header(source_folder / shard)
        target = shard_file_name(library, "fp16", number, len(shards)) if index_names \
            else single_file_name(library, "fp16")
        specs = output_specs(source)
        outputs.append(OutputFile(folder / target, source, specs, layout(specs, source.metadata).file_bytes))
    work = ComponentWork(name, folder, reason, outputs)
    if index_names:
        source_index = json.loads(read_text_bounded(source_folder / index_names[0]))
        weight_map = {t: o.path.name for o in outputs for t in o.source.entries}
        metadata = dict(source_index.get("metadata") or {})
        metadata["total_size"] = sum(s.nbytes for o in outputs for s in o.specs)
        work.index = (folder / index_file_names(library, "fp16")[0], {"metadata": metadata, "weight_map": weight_map})
    return work


def preflight(plan: Fp16Plan) -> None:
    """Refuse before the first byte when the volume cannot hold what the run writes."""
    if plan.work and plan.free_bytes < plan.bytes_needed:
        raise PrepareError(space_sentence(plan.model_path, plan.free_bytes, plan.bytes_to_write, plan.bytes_needed))


def space_sentence(where: Path, free: int, to_write: int, needed: int) -> str:
    return (f"not enough free space for {where}: {format_bytes(free)} free, {format_bytes(needed)} needed "
            f"({format_bytes(to_write)} to write and a margin); nothing written")


def to_float16(name: str, tensor: Any) -> Any:
    """A floating tensor as `tensor.to(torch.float16)` gives it, refusing values that would become inf; other
    dtypes as they are."""
    import torch

    if not tensor.is_floating_point() or tensor.dtype == torch.float16:
        return tensor
    cast = tensor.to(torch.float16)
    # aminmax is one fast pass (isinf over the cast measured 8x slower); values are counted only when some lie
    # beyond float16's largest finite value, 65504.
    low, high = torch.aminmax(tensor) if tensor.numel() else (tensor.new_zeros(()), tensor.new_zeros(()))
    beyond = bool(high > FLOAT16_MAX or low < -FLOAT16_MAX)
    overflow = int((torch.isinf(cast) & torch.isfinite(tensor)).sum()) if beyond else 0
    if overflow:
        raise Float16RangeError(f"tensor {name} has {overflow} value(s) beyond float16's range (they would become inf)")
    return cast


def cast_tensors(output: OutputFile) -> Iterator[tuple[str, Any]]:
    """The source file's tensors as the fp16 file holds them, in the source's order."""
    for name, tensor in read_tensors(output.source):
        yield name, to_float16(name, tensor)


def write_component(work: ComponentWork, progress: Progress | None = None) -> list[Path]:
    """Write one component's fp16 set (see the module docstring); return the files written.

    On any error the files this call wrote are removed again and the error propagates: the component is left
    with no fp16 set, which the worker handles by its fallback.
    """
    for path in work.remove:
        path.unlink(missing_ok=True)
    with removed_on_error() as written:
        for output in work.outputs:
            write_safetensors(output.path, output.specs, cast_tensors(output), output.source.metadata, progress)
            written.append(output.path)
        if work.index is not None:
            write_json(*work.index)
            written.append(work.index[0])
    return written


def verify_fp16_set(folder: Path, component: ComponentReport) -> str | None:
    """Re-read every fp16 tensor with the safetensors library and compare it bit for bit with the standard tensor
    of the same name cast to float16; return the first difference, or None. One tensor in memory at a time."""
    import torch
    from safetensors import safe_open

    def shards(variant: str) -> list[Path]:
        return [path for path in component.weight_sets[variant].paths(folder) if path.suffix != ".json"]

    holder = {name: path for path in shards("fp16") for name in read_safetensors_header(path).entries}
    seen: set[str] = set()
    with ExitStack() as stack:
        handles = {path: stack.enter_context(safe_open(str(path), framework="pt")) for path in set(holder.values())}
        for path in shards("standard"):
            for name, tensor in read_tensors(read_safetensors_header(path)):
                if name not in holder:
                    return f"tensor {name} is in the standard files but not in the fp16 set"
                try:
                    expected = to_float16(name, tensor)
                except Float16RangeError as exc:
                    return str(exc)
                found = handles[holder[name]].get_tensor(name)
                if found.dtype != expected.dtype or found.shape != expected.shape or not torch.equal(
                        found.reshape(-1).view(torch.uint8), expected.reshape(-1).view(torch.uint8)):
                    return f"tensor {name} in {holder[name].name} differs from its standard tensor cast to float16"
                seen.add(name)
    extra = sorted(set(holder) - seen)
    return f"the fp16 set has {len(extra)} tensor(s) the standard files lack, e.g. {extra[0]}" if extra else None


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding `path`."""
    return shutil.disk_usage(path).free

