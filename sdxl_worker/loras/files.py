"""LoRA files on the volume: where they are, which one a job's name means, and whether a file is a LoRA at all.

A job names a LoRA by its file's stem under LORA_DIR (`photonic-style` is `LORA_DIR/photonic-style.safetensors`).
The name's characters are checked by the job schema; here the resolved path must stay inside LORA_DIR (a symlink
that leaves it is refused), the file must be a safetensors file within LORA_MAX_MB whose header the project's
reader accepts, and its tensor names must be a LoRA's in a format diffusers converts: diffusers/PEFT
(`unet.….lora_A.weight`) or kohya, as A1111 and Civitai share them (`lora_unet_….lora_down.weight`, `.alpha`).
Everything is decided from the header alone, so the volume check lists the folder without importing torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sdxl_worker.sentences import alternatives, bounded
from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, SafetensorsInfo, read_safetensors_header

DEFAULT_LORA_DIR = "/runpod-volume/loras"
SUFFIX = ".safetensors"
LoraFormat = Literal["diffusers", "kohya"]
MODELS = ("unet", "text_encoder", "text_encoder_2")  # the parts a LoRA may change, in the order they are listed
# The model each key prefix belongs to, per format.
PARTS = {"unet": "unet", "text_encoder": "text_encoder", "text_encoder_2": "text_encoder_2",
         "lora_unet": "unet", "lora_te1": "text_encoder", "lora_te": "text_encoder", "lora_te2": "text_encoder_2"}
# Kinds of adapter files diffusers' SDXL loader does not convert: said as such rather than "not a LoRA".
LYCORIS_MARKS = ("hada_w1", "lokr_w1", ".oft_", "lora_mid.weight")
# safetensors' floating-point dtypes: what a LoRA's weights are (an integer or bool tensor fits no layer).
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})


class LoraSettings(BaseModel):
    """Where LoRAs live and how much of them a job and the worker may use; README's environment rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lora_dir: str = Field(DEFAULT_LORA_DIR, min_length=1, description=(
        "The folder of LoRA files (`NAME.safetensors`) a job's `loras` name; nothing outside it is read."))
    lora_max_per_job: int = Field(4, ge=1, le=16, description="LoRAs one job may combine.")
    lora_max_mb: int = Field(1024, ge=1, le=100_000, description=(
        "Largest LoRA file accepted, MB."))
    lora_cache_mb: int = Field(2048, ge=0, le=1_000_000, description=(
        "LoRA weights kept loaded between jobs, MB; the least recently used go first. 0: loaded for each job."))
    lora_merge_device_mb: int = Field(4096, ge=0, le=1_000_000, description=(
        "A LoRA job's LoRAs are merged into the UNet's weights (under CUDA graphs or `COMPILE=1`), whose originals "
        "are saved to be put back after the job: on the GPU up to this many MB, past it in host memory."))


class LoraFileError(ValueError):
    """A LoRA a job named that cannot be used; str() is the one sentence to answer with."""


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file as its header describes it."""

    name: str
    path: Path
    bytes: int
    stamp: tuple[int, int, int]  # see signature
    format: LoraFormat
    parts: tuple[str, ...]  # of unet, text_encoder, text_encoder_2
    rank: int  # the largest among its layers
    info: SafetensorsInfo

    @property
    def signature(self) -> tuple[int, int, int, int]:
        """What says the file changed since it was inspected: its size, modification and change times and inode.
        The change time moves on every write and cannot be set back (`touch -r` can restore the modification time
        of a file rewritten in place); the inode changes when another file is renamed over it."""
        return (self.bytes, *self.stamp)


def signature_of(path: Path) -> tuple[int, int, int, int] | None:
    """A file's `LoraFile.signature` now; None if it cannot be read."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_size, *_stamp(stat))


def _stamp(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


def available(folder: Path) -> list[str]:
    """The LoRA names in `folder`: the stems of its visible `.safetensors` files, sorted; [] if it cannot be read."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return sorted(e.name[: -len(SUFFIX)] for e in entries
                  if e.name.endswith(SUFFIX) and not e.name.startswith(".") and len(e.name) > len(SUFFIX))


def confined(folder: Path, file_name: str) -> Path | None:
    """`folder`/`file_name` with every link resolved, or None when that leaves `folder` (a symlink out of it)."""
    root = Path(os.path.realpath(folder))
    real = Path(os.path.realpath(root / file_name))
    return real if real.is_relative_to(root) else None


def resolve(folder: Path, name: str) -> Path:
    """The file a job's LoRA name means, inside `folder`; LoraFileError naming the alternatives if none."""
    root = Path(os.path.realpath(folder))
    real = confined(root, f"{name}{SUFFIX}")
    if real is None:
        raise LoraFileError(f"LoRA {name!r} links outside the LoRA folder; only files inside {folder} are read.")
    if not real.is_file():
        names = available(root)
        if not root.is_dir():
            raise LoraFileError(f"LoRA {name!r} not found: the LoRA folder {folder} does not exist (LORA_DIR names "
                                "the folder of LoRA files on the volume).")
        if not names:
            raise LoraFileError(f"LoRA {name!r} not found: the LoRA folder {folder} holds no .safetensors files "
                                "(LORA_DIR).")
        raise LoraFileError(f"LoRA {name!r} not found.{alternatives(name, names)}")
    return real


def inspect(name: str, path: Path, max_bytes: int) -> LoraFile:
    """Check a LoRA file from its size and header alone: LoraFileError with the reason if it is unusable."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise LoraFileError(f"LoRA {name!r} cannot be read ({exc.strerror or exc}).") from exc
    size = stat.st_size
    if size > max_bytes:
        raise LoraFileError(f"LoRA {name!r} is {size / 1e6:,.0f} MB, over this endpoint's limit of "
                            f"{max_bytes / 1e6:,.0f} MB (LORA_MAX_MB).")
    try:
        info = read_safetensors_header(path)
    except SafetensorsHeaderError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise LoraFileError(f"LoRA {name!r} is not a readable safetensors file: {reason}.") from exc
    keys = list(info.entries)
    odd = sorted({entry.dtype for entry in info.entries.values()} - FLOAT_DTYPES)
    if odd:
        example = next(key for key, entry in info.entries.items() if entry.dtype in odd)
        raise LoraFileError(f"LoRA {name!r} holds {', '.join(odd)} tensors (e.g. {bounded(example, 60)!r}); a LoRA's "
                            "weights are floating point.")
    fmt = _format(keys)
    if fmt is None:
        if any(mark in key for key in keys for mark in LYCORIS_MARKS):
            raise LoraFileError(f"LoRA {name!r} is a LyCORIS (LoHa/LoKr/OFT) file, which this worker cannot apply; "
                                "use a plain LoRA.")
        example = f", e.g. {keys[0][:60]!r}" if keys else ""
        raise LoraFileError(f"LoRA {name!r} is not a LoRA: none of its {len(keys)} tensor names is a LoRA "
                            f"weight's{example}.")
    found = {PARTS[key.split(".", 1)[0] if fmt == "diffusers" else _kohya_prefix(key)] for key in keys}
    parts = [part for part in MODELS if part in found]
    ranks = [entry.shape[0] for key, entry in info.entries.items()
             if (".lora_A." in key or ".lora_down." in key or ".lora.down." in key) and entry.shape]
    return LoraFile(name, path, size, _stamp(stat), fmt, tuple(parts), max(ranks, default=0), info)


def scan(folder: Path, max_bytes: int) -> tuple[list[LoraFile], dict[str, str]]:
    """Every LoRA in `folder`, checked: the usable ones, and each broken one's name with its reason."""
    good: list[LoraFile] = []
    broken: dict[str, str] = {}
    for name in available(folder):
        try:
            good.append(inspect(name, resolve(folder, name), max_bytes))
        except LoraFileError as exc:
            broken[name] = str(exc)
    return good, broken


def _format(keys: list[str]) -> LoraFormat | None:
    """The key format, when every key belongs to a LoRA of it."""
    if keys and all(_part_key(key, "kohya") for key in keys):
        return "kohya"
    if keys and all(_part_key(key, "diffusers") for key in keys):
        return "diffusers"
    return None


def _part_key(key: str, fmt: LoraFormat) -> bool:
    if fmt == "kohya":
        return _kohya_prefix(key) in PARTS and any(
            mark in key for mark in (".lora_down.", ".lora_up.", ".alpha", ".dora_scale"))
    prefix = key.split(".", 1)[0]
    return prefix in MODELS and any(
        mark in key for mark in (".lora_A.", ".lora_B.", ".lora.down.", ".lora.up.", ".lora_magnitude_vector"))


def _kohya_prefix(key: str) -> str:
    """`lora_unet_input_blocks_4_…` -> `lora_unet`; `lora_te1_…` -> `lora_te1`."""
    head = key.split(".", 1)[0]
    for prefix in ("lora_unet", "lora_te1", "lora_te2", "lora_te"):
        if head.startswith(prefix + "_"):
            return prefix
    return head
