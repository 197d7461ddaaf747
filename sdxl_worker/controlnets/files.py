"""ControlNets on the volume: one diffusers folder each, and whether a folder is a ControlNet for this model at all.

`CONTROLNET_DIR/NAME/` holds `config.json` and `diffusion_pytorch_model.safetensors` (and/or its `.fp16` variant),
as diffusers saves a ControlNetModel and as SDXL ControlNets are published. A ControlNet steers one UNet: its
config must match the model's UNet where the two meet (input channels, block widths, the text width its
cross-attention reads, SDXL's text-and-time conditioning), so an SD 1.5 ControlNet or one for another size is
refused from the config alone. Everything here reads configs and safetensors headers only (no torch), so the volume
check lists the folder; a resolved path must stay inside the folder, as a LoRA's must.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdxl_worker.loras.files import confined
from sdxl_worker.sentences import alternatives, bounded
from sdxl_worker.weights.files import read_text_bounded
from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, SafetensorsInfo, read_safetensors_header

DEFAULT_CONTROLNET_DIR = "/runpod-volume/controlnets"
WEIGHTS = "diffusion_pytorch_model.safetensors"
FP16_WEIGHTS = "diffusion_pytorch_model.fp16.safetensors"
# Where a ControlNet meets the UNet it steers: its config must say what the UNet's says.
SHARED_KEYS = ("in_channels", "block_out_channels", "cross_attention_dim", "addition_embed_type",
               "projection_class_embeddings_input_dim")


class ControlNetSettings(BaseModel):
    """Where ControlNets live and how many a job and the worker may use; README's environment rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    controlnet_dir: str = Field(DEFAULT_CONTROLNET_DIR, min_length=1, description=(
        "The folder of ControlNets, one diffusers folder each (`NAME/config.json` and its safetensors weights); "
        "nothing outside it is read."))
    controlnet_max_per_job: int = Field(3, ge=1, le=8, description="ControlNets one job may combine.")
    controlnet_cache_mb: int = Field(6000, ge=0, le=1_000_000, description=(
        "ControlNet weights kept loaded between jobs, MB (an SDXL ControlNet is 2.5 GB in float16); the least "
        "recently used go first. 0: loaded for each job."))


class ControlNetFileError(ValueError):
    """A ControlNet a job named that cannot be used; str() is the one sentence to answer with."""


@dataclass(frozen=True)
class ControlNetFolder:
    """A ControlNet folder as its config and headers describe it."""

    name: str
    path: Path
    config: dict[str, Any]
    weights: dict[str, SafetensorsInfo]  # by variant: "standard", "fp16"
    signature: tuple[tuple[int, int, int, int], ...]  # config and weight files: size, mtime, ctime, inode

    @property
    def bytes(self) -> int:
        return max(info.file_bytes for info in self.weights.values())


def names(folder: Path) -> list[str]:
    """The ControlNet names in `folder`: its visible subfolders, sorted; [] if it cannot be read."""
    try:
        return sorted(entry.name for entry in os.scandir(folder) if not entry.name.startswith(".") and entry.is_dir())
    except OSError:
        return []


def signature(path: Path) -> tuple[tuple[int, int, int, int], ...]:
    """What says a ControlNet folder changed: each of its files' size, modification and change times and inode."""
    stamps = []
    for file in ("config.json", WEIGHTS, FP16_WEIGHTS):
        try:
            stat = (path / file).stat()
        except OSError:
            continue
        stamps.append((stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))
    return tuple(stamps)


def resolve(folder: Path, name: str) -> Path:
    """The folder a job's ControlNet name means, inside `folder`; ControlNetFileError naming the others if none."""
    real = confined(folder, name)
    if real is None:
        raise ControlNetFileError(f"ControlNet {name!r} links outside the ControlNet folder; only folders inside "
                                  f"{folder} are read.")
    if not real.is_dir():
        if not Path(folder).is_dir():
            raise ControlNetFileError(f"ControlNet {name!r} not found: the ControlNet folder {folder} does not exist "
                                      "(CONTROLNET_DIR names the folder of ControlNets on the volume).")
        others = names(Path(folder))
        if not others:
            raise ControlNetFileError(f"ControlNet {name!r} not found: {folder} holds no ControlNet folders "
                                      "(CONTROLNET_DIR).")
        raise ControlNetFileError(f"ControlNet {name!r} not found.{alternatives(name, others)}")
    return real


def inspect(folder: Path, name: str, unet_config: Mapping[str, Any]) -> ControlNetFolder:
    """Check a ControlNet folder from its config and headers against the model's UNet config: ControlNetFileError
    with the reason if it cannot steer this model."""
    path = resolve(folder, name)
    for file in ("config.json", WEIGHTS, FP16_WEIGHTS):
        # The folder is inside CONTROLNET_DIR; each file it holds must be too, not a link out of it.
        if confined(folder, f"{name}/{file}") is None:
            raise ControlNetFileError(f"ControlNet {name!r}: {file} links outside the ControlNet folder; only files "
                                      f"inside {folder} are read.")
    try:
        config = json.loads(read_text_bounded(path / "config.json"))
    # RecursionError: JSON nested deeper than the parser goes.
    except (OSError, ValueError, RecursionError) as exc:
        raise ControlNetFileError(f"ControlNet {name!r} has no readable config.json ({bounded(exc, 120)}).") from exc
    if not isinstance(config, dict) or config.get("_class_name") != "ControlNetModel":
        kind = config.get("_class_name") if isinstance(config, dict) else None
        raise ControlNetFileError(f"ControlNet {name!r} is {'a ' + bounded(kind, 40) if kind else 'no model'}, not a "
                                  "ControlNet (diffusers' ControlNetModel config).")
    if config.get("addition_embed_type") != unet_config.get("addition_embed_type") and \
            config.get("cross_attention_dim") == 768:
        raise ControlNetFileError(f"ControlNet {name!r} is an SD 1.5 ControlNet; this model is SDXL (an SDXL "
                                  f"ControlNet reads {unet_config.get('cross_attention_dim')}-wide text).")
    differing = [key for key in SHARED_KEYS if _plain(config.get(key)) != _plain(unet_config.get(key))]
    if differing:
        key = differing[0]
        raise ControlNetFileError(f"ControlNet {name!r} is for another model: its {key} is {config.get(key)!r}, this "
                                  f"model's UNet's {unet_config.get(key)!r}.")
    if (problem := _skeleton_problem(config, unet_config)) is not None:
        raise ControlNetFileError(f"ControlNet {name!r}: config.json {problem}.")
    weights = {}
    for variant, file in (("standard", WEIGHTS), ("fp16", FP16_WEIGHTS)):
        if (path / file).exists():
            try:
                weights[variant] = read_safetensors_header(path / file)
            except SafetensorsHeaderError as exc:
                reason = str(exc).removeprefix(f"{path / file}: ")
                raise ControlNetFileError(f"ControlNet {name!r}: {file} is not a readable safetensors file: "
                                          f"{reason}.") from exc
    if not weights:
        raise ControlNetFileError(f"ControlNet {name!r} holds no {WEIGHTS} (nor its .fp16 variant); a .bin or single "
                                  "file must be saved as diffusers' safetensors folder first.")
    return ControlNetFolder(name, path, config, weights, signature(path))


def scan(folder: Path, unet_config: Mapping[str, Any]) -> tuple[list[ControlNetFolder], dict[str, str]]:
    """Every ControlNet in `folder`, checked: the usable ones, and each broken one's name with its reason."""
    good: list[ControlNetFolder] = []
    broken: dict[str, str] = {}
    for name in names(folder):
        try:
            good.append(inspect(folder, name, unet_config))
        except ControlNetFileError as exc:
            broken[name] = str(exc)
    return good, broken


def _skeleton_problem(config: Mapping[str, Any], unet_config: Mapping[str, Any]) -> str | None:
    """What in the config would build a skeleton no ControlNet of this UNet has, field by field, before anything is
    built from it (its tensors are checked against that skeleton: 10^9 layers would never finish); None if fine.

    A ControlNet copies the UNet's down blocks: the same kinds, each at most as deep as the UNet's (published
    "small" and "mid" SDXL ControlNets keep fewer transformer layers)."""
    blocks = len(unet_config.get("down_block_types") or ())
    if _plain(config.get("down_block_types")) != _plain(unet_config.get("down_block_types")):
        return (f"has down_block_types {bounded(repr(config.get('down_block_types')), 80)}, the UNet's are "
                f"{unet_config.get('down_block_types')}")
    for key in ("layers_per_block", "transformer_layers_per_block"):
        most = max(_per_block(unet_config.get(key, 1), blocks) or [1])
        values = _per_block(config.get(key, 1), blocks)
        if values is None or not all(0 <= value <= most for value in values):
            return (f"has {key} {bounded(repr(config.get(key)), 80)}: a whole number from 0 to {most}, or "
                    f"{blocks} of them, at most the UNet's")
    for key, most in (("attention_head_dim", 4096), ("num_attention_heads", 4096)):
        values = _per_block(config.get(key) or 1, blocks)
        if values is None or not all(1 <= value <= most for value in values):
            return f"has {key} {bounded(repr(config.get(key)), 80)}: a whole number from 1 to {most}, or {blocks}"
    channels = config.get("conditioning_embedding_out_channels", [16, 32, 96, 256])
    if not isinstance(channels, list) or not 1 <= len(channels) <= 8 or \
            not all(type(value) is int and 1 <= value <= 4096 for value in channels):
        return (f"has conditioning_embedding_out_channels {bounded(repr(channels), 80)}: 1 to 8 whole numbers "
                "from 1 to 4096")
    return None


def _per_block(value: Any, blocks: int) -> list[int] | None:
    """A per-down-block setting as one whole number per block; None when it is neither a whole number nor a list of
    `blocks` of them (bool is no number here)."""
    values = value if isinstance(value, list) else [value] * blocks
    if len(values) != blocks or not all(type(item) is int for item in values):
        return None
    return values


def _plain(value: Any) -> Any:
    """A config value as JSON has it: lists and tuples alike."""
    return list(value) if isinstance(value, (list, tuple)) else value
