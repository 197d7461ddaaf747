"""A job's LoRAs: found on the volume, loaded once, applied with the job's scales, and gone after the job.

Loading an SDXL LoRA into the UNet takes about a second (benchmarks/RESULTS.md) while switching between loaded
ones takes milliseconds, so loaded LoRAs stay in the pipeline between jobs, switched off, the least recently
used dropped past LORA_CACHE_MB. A LoRA switched off leaves each layer computing its base weights alone, so a
job without LoRAs after one with them gives the same bits as before. A LoRA file changed on the volume
(its size, modification or change time, or inode) is loaded again; weights that are not floating point or not
finite are refused before they reach the model.

A job's LoRAs are merged into the UNet's weights for the job and the originals put back after (speed/lora_merge.py),
so CUDA graphs replay and compiled code runs with them, and eager steps carry no extra layers. With a
compiled UNet the added layers would invalidate the compiled code's guards for every later job, so there the LoRAs
are taken out of the model after the merge and after each job (the same bits again), and what stays between jobs is
their tensors in host memory, within the same budget. A LoRA the merge cannot take (DoRA) runs the plain eager UNet
(speed/plain.py).
"""

from __future__ import annotations

import contextlib
import itertools
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdxl_worker.contract.job_schema import LoraRequest
from sdxl_worker.logs import libraries_quiet
from sdxl_worker.loras.files import LoraFile, LoraFileError, LoraSettings, inspect, resolve, signature_of
from sdxl_worker.sentences import bounded
from sdxl_worker.speed.lora_merge import mergeable_layers, merged_unet
from sdxl_worker.speed.plain import plain_module, plain_unet
from sdxl_worker.weights.finite import first_non_finite
from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError
from sdxl_worker.weights.safetensors_io import read_tensors

# Adapter names unique in the process: two models sharing their text encoders (MODELS) add adapters to the same
# modules, and PEFT refuses a name already there.
ADAPTER_IDS = itertools.count()


@dataclass
class LoadedLora:
    """A LoRA this worker has read: the adapter name it has in the model, and what it holds."""

    file: LoraFile
    adapter: str  # PEFT keeps adapters in module dicts, whose keys cannot hold the dots a file name may
    bytes: int
    tensors: dict[str, Any] | None = None  # kept in host memory when the model does not keep the adapter
    in_model: bool = False


class LoraAdapters:
    """The LoRAs a worker has loaded, applied per job (`applied`), bounded by LORA_CACHE_MB."""

    def __init__(self, settings: LoraSettings, compiled: bool) -> None:
        self.settings = settings
        self.folder = Path(settings.lora_dir)
        # Compiled code (the whole UNet's or its blocks') guards on the layers a LoRA adds.
        self.keep_in_model = not compiled
        self.loaded: OrderedDict[str, LoadedLora] = OrderedDict()  # least recently used first

    @property
    def held_bytes(self) -> int:
        return sum(lora.bytes for lora in self.loaded.values())

    @contextmanager
    def applied(self, pipe: Any, requests: Sequence[LoraRequest]) -> Iterator[list[dict[str, Any]]]:
        """Within: `pipe` draws with these LoRAs at their scales; yields what the reply says was applied."""
        if not requests:
            yield []
            return
        files = [self._file(request.name) for request in requests]  # every name checked before any loading
        # The job's LoRAs are merged into the UNet's weights, which a captured graph and compiled code read where they
        # are, and which cost nothing per step where PEFT's layers add their products at every call; a LoRA that
        # cannot be merged runs PEFT's layers in the eager, unfused UNet (plain_unet).
        try:
            with contextlib.ExitStack() as job:  # unwound in reverse: the UNet's own weights back before the rest
                loading = job.enter_context(contextlib.ExitStack())
                if not self.keep_in_model:
                    loading.enter_context(plain_unet(pipe))  # diffusers' LoRA functions need the uncompiled UNet
                loras = []
                for file in files:
                    loras.append(self._load(pipe, file, keep={lora.file.name for lora in loras}))
                pipe.enable_lora()
                pipe.set_adapters([lora.adapter for lora in loras], adapter_weights=[r.scale for r in requests])
                unet = plain_module(pipe.unet)
                layers = mergeable_layers(unet)
                if layers is not None:
                    budget = self.settings.lora_merge_device_mb * 1_000_000
                    # Compiled code guards on the UNet's modules: PEFT's layers come out again, the merge stays.
                    job.enter_context(merged_unet(unet, layers, budget, take_out=not self.keep_in_model))
                    loading.close()  # compiled: the compiled UNet again, now reading the merged weights
                elif self.keep_in_model:
                    job.enter_context(plain_unet(pipe))
                yield [{"name": r.name, "scale": r.scale} for r in requests]
        finally:
            pipe.disable_lora()
            if not self.keep_in_model:
                self._take_out(pipe)
            self._evict(pipe, self.settings.lora_cache_mb * 1_000_000)

    def _file(self, name: str) -> LoraFile:
        """The named LoRA's file, inspected; one loaded already and unchanged on the volume is not read again."""
        path = resolve(self.folder, name)
        cached = self.loaded.get(name)
        if cached is not None and cached.file.path == path and cached.file.signature == signature_of(path):
            return cached.file
        return inspect(name, path, self.settings.lora_max_mb * 1_000_000)

    def _load(self, pipe: Any, file: LoraFile, keep: set[str]) -> LoadedLora:
        """The LoRA in the model, loaded from the volume unless it is loaded already and unchanged; room is made
        by dropping the least recently used, except those in `keep` (the job's own)."""
        lora = self.loaded.get(file.name)
        if lora is not None and lora.file is not file:  # changed on the volume since it was loaded
            self._drop(pipe, file.name)
            lora = None
        if lora is None:
            tensors = _read_finite(file)
            dtype_size = next(plain_module(pipe.unet).parameters()).element_size()
            held = sum(t.numel() for t in tensors.values()) * dtype_size if self.keep_in_model else file.bytes
            lora = LoadedLora(file, f"lora{next(ADAPTER_IDS)}", held,
                              tensors=None if self.keep_in_model else tensors)
            self._evict(pipe, self.settings.lora_cache_mb * 1_000_000 - held, keep)
            self._into_model(pipe, lora, tensors)
            self.loaded[file.name] = lora
        elif not lora.in_model:
            self._into_model(pipe, lora, lora.tensors or {})
        self.loaded.move_to_end(file.name)
        return lora

    def _into_model(self, pipe: Any, lora: LoadedLora, tensors: dict[str, Any]) -> None:
        name = lora.file.name
        try:
            with libraries_quiet():
                pipe.load_lora_weights(tensors, adapter_name=lora.adapter)
        # What diffusers and PEFT raise for weights that do not fit this model (shapes, names, formats they do
        # not convert): the job's answer, after removing whatever part of the adapter was added.
        except (ValueError, RuntimeError, KeyError, IndexError) as exc:
            if lora.adapter in _adapters(pipe):
                pipe.delete_adapters([lora.adapter])
            raise LoraFileError(f"LoRA {name!r} does not fit this model: {_first_reason(exc)}.") from exc
        if lora.adapter not in _adapters(pipe):
            raise LoraFileError(f"LoRA {name!r} does not fit this model: none of its layers is one of the model's.")
        lora.in_model = True

    def _take_out(self, pipe: Any) -> None:
        """Every adapter out of the model, its layers back to the originals."""
        with plain_unet(pipe):  # diffusers unloads only from the UNet itself, not from a compiled wrapper
            pipe.unload_lora_weights()
        for lora in self.loaded.values():
            lora.in_model = False

    def _evict(self, pipe: Any, budget: int, keep: set[str] = frozenset()) -> None:
        """Drop the least recently used until what is held fits `budget` bytes (inside `plain_unet` unless the
        job merged its LoRAs: then the UNet is the uncompiled one already)."""
        for name in [name for name in self.loaded if name not in keep]:
            if self.held_bytes <= max(budget, 0):
                break
            self._drop(pipe, name)

    def _drop(self, pipe: Any, name: str) -> None:
        lora = self.loaded.pop(name)
        if lora.in_model:
            pipe.delete_adapters([lora.adapter])


def _read_finite(file: LoraFile) -> dict[str, Any]:
    """The LoRA's tensors; LoraFileError if the file changed since its header was read or a weight is NaN or Inf
    (applied, it would turn every latent non-finite: a flat image)."""

    try:
        tensors = dict(read_tensors(file.info))
    except (SafetensorsHeaderError, OSError) as exc:
        raise LoraFileError(f"LoRA {file.name!r} cannot be read: {bounded(exc, 200)}.") from exc
    bad = first_non_finite(tensors.items())
    if bad is not None:
        raise LoraFileError(f"LoRA {file.name!r} holds weights that are not finite (NaN or Inf), e.g. in "
                            f"{bounded(bad, 60)!r}: it would draw a flat image.")
    return tensors


def _first_reason(exc: BaseException) -> str:
    """The first specific line of a library's refusal (torch lists every mismatched tensor: thousands of lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first, more = " ".join(lines), ""
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        first, more = lines[1], f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
    text = bounded(first, 260)
    return (text if text.endswith("...") else text.rstrip(".")) + more


def _adapters(pipe: Any) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}
