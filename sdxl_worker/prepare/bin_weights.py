"""Convert components' pickled `.bin` weights to safetensors, never running code from a pickle.

Older diffusers and transformers repositories ship `diffusion_pytorch_model.bin` / `pytorch_model.bin` (an fp16
variant as `*.fp16.bin`, big sets as shards with a `*.bin.index.json`). The worker loads safetensors only, so such
a volume is converted once. Each pickle is read by `torch.load(weights_only=True)`, whose unpickler accepts
tensors, numbers and plain containers and refuses any other global (a pickle that would call code) before
anything runs; what it gives must then be names mapped to tensors, nothing else. A component's pickles are all
read and checked before its first file is written; the files are written as add-fp16 writes them (hidden name,
fsync, rename, shards before their index), under the names and sharding the libraries use, with the tensors'
names and dtypes as stored. The `.bin` files are left in place: the worker never reads them.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdxl_worker.loras.files import confined
from sdxl_worker.prepare.fp16_set import PrepareError
from sdxl_worker.sentences import bounded, describe
from sdxl_worker.weights.files import read_text_bounded
from sdxl_worker.weights.layout import (
    VARIANTS,
    Variant,
    bin_file_names,
    index_file_names,
    shard_file_name,
    single_file_name,
)
from sdxl_worker.weights.safetensors_io import (
    SAFETENSORS_DTYPES,
    Progress,
    TensorSpec,
    removed_on_error,
    write_json,
    write_safetensors,
)

MESSAGE_CHARS = 200  # of a library's error inside a refusal


class BinRefused(PrepareError):
    """A pickle that is not plain weights, or not readable; the message names the file and why."""


@dataclass
class BinWork:
    """One component's pickled set for one variant, to write as safetensors beside it."""

    name: str
    library: str
    folder: Path
    variant: Variant
    sources: list[Path]  # the pickles, in shard order
    sharded: bool

    @property
    def bytes(self) -> int:
        """About what the safetensors files take: the pickles' own size."""
        return sum(path.stat().st_size for path in self.sources)

    def targets(self) -> list[Path]:
        if not self.sharded:
            return [self.folder / single_file_name(self.library, self.variant)]
        return [self.folder / shard_file_name(self.library, self.variant, number, len(self.sources))
                for number in range(1, len(self.sources) + 1)]


def plan_bins(components: Mapping[str, tuple[str, set[Variant]]], model_path: Path) -> list[BinWork]:
    """For each model component (name -> library and the variants it has complete in safetensors), the pickled
    sets it has and lacks in safetensors. An index whose shards cannot be listed is a refusal."""
    work = []
    for name, (library, complete) in components.items():
        folder = model_path / name
        for variant in VARIANTS:
            if variant in complete:
                continue
            single, index = (folder / n for n in bin_file_names(library, variant))
            if index.is_file():
                work.append(BinWork(name, library, folder, variant, _shards(index), sharded=True))
            elif single.is_file():
                work.append(BinWork(name, library, folder, variant, [single], sharded=False))
    return work


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(read_text_bounded(index)).get("weight_map")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise BinRefused(f"{index}: not a shard index ({bounded(exc, MESSAGE_CHARS)})") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise BinRefused(f"{index}: has no weight_map of tensor names to file names")
    shards = [index.parent / shard for shard in sorted(set(weight_map.values()))]
    outside = [s.name for s in shards if s.parent != index.parent or not s.is_file()]
    if outside:
        raise BinRefused(f"{index}: names shard {bounded(outside[0], MESSAGE_CHARS)}, which is not a file in its "
                         "folder")
    return shards


def load_bin(path: Path) -> dict[str, Any]:
    """The tensors a pickled weight file holds, read with the unpickler that runs no code; refused otherwise."""
    import torch

    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _refuse_inflation(path)
    try:
        # Files in torch's zip format are memory-mapped: memory holds what the writer is writing, not the file.
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        raise BinRefused(f"{path}: refused: torch's weights-only loader, which runs no code, does not read it as "
                         f"plain tensors ({bounded(_refusal_detail(exc), MESSAGE_CHARS)}); nothing in it was run"
                         ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise BinRefused(f"{path}: cannot be read as PyTorch weights ({describe(exc, MESSAGE_CHARS)})") from None
    if not isinstance(data, Mapping):
        raise BinRefused(f"{path}: holds a {type(data).__name__}, not tensor names mapped to tensors")
    wrong = next((k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
                  or str(v.dtype).removeprefix("torch.") not in SAFETENSORS_DTYPES or v.layout != torch.strided), None)
    if wrong is not None:
        raise BinRefused(f"{path}: entry {bounded(repr(wrong), MESSAGE_CHARS)} is a {type(data[wrong]).__name__}, "
                         "not a dense tensor safetensors can hold")
    return dict(data)


# What a zip's members may hold beyond the file's own size: torch.save stores them uncompressed, so a member that
# inflates (a compressed bomb: 1 MB on disk, 1 GiB read) is no file torch wrote.
INFLATION_ALLOWANCE = 1 << 20


def _refuse_inflation(path: Path) -> None:
    """BinRefused when the zip's directory says its members hold more than the file itself (before any is read)."""
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise BinRefused(f"{path}: cannot be read as PyTorch weights ({describe(exc, MESSAGE_CHARS)})") from None
    on_disk = path.stat().st_size
    if inflated > on_disk + INFLATION_ALLOWANCE:
        raise BinRefused(f"{path}: refused: its members inflate to {inflated:,} bytes from {on_disk:,} on disk, and "
                         "torch.save stores them uncompressed; nothing in it was read")


def convert(work: BinWork, progress: Progress | None = None) -> list[Path]:
    """Write the work's safetensors files (and index); return them. Every pickle is read and checked first; on any
    error the files this call wrote are removed again and the error propagates."""
    model_path = work.folder.parent
    for source in work.sources:
        # As every add-on's files: what a command reads is inside the folder it was given, not linked out of it.
        if confined(model_path, f"{work.name}/{source.name}") is None:
            raise BinRefused(f"{source}: links outside the model folder {model_path}; only files inside it are "
                             "converted")
    shards = [load_bin(path) for path in work.sources]
    with removed_on_error() as written:
        for tensors, target in zip(shards, work.targets(), strict=True):
            specs = [TensorSpec(name, SAFETENSORS_DTYPES[str(t.dtype).removeprefix("torch.")], tuple(t.shape))
                     for name, t in tensors.items()]
            write_safetensors(target, specs, tensors.items(), {"format": "pt"}, progress)
            written.append(target)
        if work.sharded:
            index = work.folder / index_file_names(work.library, work.variant)[0]
            weight_map = {name: target.name for tensors, target in zip(shards, written, strict=True)
                          for name in tensors}
            total = sum(t.numel() * t.element_size() for tensors in shards for t in tensors.values())
            write_json(index, {"metadata": {"total_size": total}, "weight_map": weight_map})
            written.append(index)
    return written


def _refusal_detail(exc: Exception) -> str:
    """The line of torch's refusal that says what stopped it (the rest is advice on loading the file anyway)."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith(advice)), lines[0] if lines else type(exc).__name__)


