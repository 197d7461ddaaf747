"""IP-Adapters on the volume: where they are, and whether a file is an SDXL IP-Adapter this model and its image
encoder can use.

`IP_ADAPTER_DIR` holds the adapter files as the published SDXL IP-Adapters are laid out (h94/IP-Adapter's
`sdxl_models/`): `NAME.safetensors` (`image_proj.*` and `ip_adapter.*` tensors: `ip-adapter_sdxl`,
`ip-adapter-plus_sdxl_vit-h`, ...) beside the CLIP image encoder they were trained with, `image_encoder/`
(`config.json`, `model.safetensors`). Everything is decided from headers and configs: the adapter's image
projection must read what the image encoder gives (its projected embedding, or its hidden states for the "plus"
adapters) and write what the UNet's cross-attention reads. A resolved path must stay inside the folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdxl_worker.loras.files import available, confined, signature_of
from sdxl_worker.sentences import alternatives, bounded
from sdxl_worker.weights.files import read_text_bounded
from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, SafetensorsInfo, read_safetensors_header

DEFAULT_IP_ADAPTER_DIR = "/runpod-volume/ip-adapter"
ENCODER = "image_encoder"
MAX_FILE_BYTES = 4 * 2**30  # the published SDXL adapters are 0.7-1.0 GB


class IpAdapterSettings(BaseModel):
    """Where IP-Adapters live; README's environment row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ip_adapter_dir: str = Field(DEFAULT_IP_ADAPTER_DIR, min_length=1, description=(
        "The folder of SDXL IP-Adapters (`NAME.safetensors`) and their CLIP image encoder (`image_encoder/`); "
        "nothing outside it is read."))


class IpAdapterFileError(ValueError):
    """An IP-Adapter a job named that cannot be used; str() is the one sentence to answer with."""


@dataclass(frozen=True)
class IpAdapterFile:
    name: str
    path: Path
    signature: tuple[int, int, int, int]
    info: SafetensorsInfo


# Each an ample bound over the published encoders' (ViT-H: 32 layers of 1280, 5120 wide inside, 1024 projected;
# ViT-bigG: 48 of 1664).
ENCODER_BOUNDS = {"num_hidden_layers": 96, "hidden_size": 8192, "intermediate_size": 32768, "projection_dim": 8192,
                  "num_attention_heads": 128, "image_size": 1024, "patch_size": 1024}


def names(folder: Path) -> list[str]:
    return available(folder)


def encoder_config(folder: Path) -> dict[str, Any]:
    """The image encoder's config, read within the folder; IpAdapterFileError when it is not there."""
    path = confined(folder, f"{ENCODER}/config.json")
    weights = confined(folder, f"{ENCODER}/model.safetensors")
    if path is None or weights is None or not path.is_file() or not weights.is_file():
        raise IpAdapterFileError(f"IP-Adapters need their CLIP image encoder: {folder}/{ENCODER}/ with config.json and "
                                 "model.safetensors (as in the published sdxl_models/image_encoder).")
    try:
        config = json.loads(read_text_bounded(path))
    except (OSError, ValueError) as exc:
        raise IpAdapterFileError(f"The IP-Adapter image encoder's config.json cannot be read ({bounded(exc, 120)}).") \
            from exc
    if not isinstance(config, dict) or "projection_dim" not in config or "hidden_size" not in config:
        raise IpAdapterFileError("The IP-Adapter image encoder's config.json is not a CLIP vision model's "
                                 "(no hidden_size or projection_dim).")
    for key, most in ENCODER_BOUNDS.items():
        # The encoder's skeleton is built from these to check its tensors: a size no CLIP has would cost
        # unbounded time and memory before any check could refuse it.
        value = config.get(key, 1)
        if type(value) is not int or not 1 <= value <= most:
            raise IpAdapterFileError(f"The IP-Adapter image encoder's config.json has {key} "
                                     f"{bounded(repr(value), 40)}, not a whole number from 1 to {most:,}.")
    return config


def inspect(folder: Path, name: str, unet_config: Mapping[str, Any]) -> IpAdapterFile:
    """Check `folder`/NAME.safetensors from its header against the image encoder and the UNet: IpAdapterFileError
    with the reason if this model cannot use it."""
    path = confined(folder, f"{name}.safetensors")
    if path is None:
        raise IpAdapterFileError(f"IP-Adapter {name!r} links outside the IP-Adapter folder; only files inside "
                                 f"{folder} are read.")
    if not path.is_file():
        others = names(folder)
        offered = alternatives(name, others) if others else " It holds no IP-Adapters."
        raise IpAdapterFileError(f"IP-Adapter {name!r} not found in {folder} (IP_ADAPTER_DIR).{offered}")
    signature = signature_of(path)
    if signature is None or signature[0] > MAX_FILE_BYTES:
        raise IpAdapterFileError(f"IP-Adapter {name!r} cannot be read or is over {MAX_FILE_BYTES // 2**30} GB.")
    try:
        info = read_safetensors_header(path)
    except SafetensorsHeaderError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise IpAdapterFileError(f"IP-Adapter {name!r} is not a readable safetensors file: {reason}.") from exc
    shapes = {key: entry.shape for key, entry in info.entries.items()}
    if not shapes or not all(key.startswith(("image_proj.", "ip_adapter.")) for key in shapes):
        raise IpAdapterFileError(f"IP-Adapter {name!r} is not an IP-Adapter: its tensors are not image_proj.* and "
                                 "ip_adapter.* ones.")
    encoder = encoder_config(folder)
    cross = unet_config.get("cross_attention_dim")
    if "image_proj.proj.weight" in shapes:  # the plain adapters: 4 tokens from the projected image embedding
        width, reads = shapes["image_proj.proj.weight"][0] // 4, shapes["image_proj.proj.weight"][-1]
        gives, what = encoder["projection_dim"], "projected embedding"
    elif "image_proj.proj_in.weight" in shapes and "image_proj.proj_out.weight" in shapes:  # "plus": a resampler
        width, reads = shapes["image_proj.proj_out.weight"][0], shapes["image_proj.proj_in.weight"][-1]
        gives, what = encoder["hidden_size"], "hidden states"
    else:
        raise IpAdapterFileError(f"IP-Adapter {name!r} has an image projection this worker does not know (FaceID "
                                 "and full-face adapters need their own encoders).")
    if width != cross:
        raise IpAdapterFileError(f"IP-Adapter {name!r} is for another model: it writes {width}-wide image tokens, "
                                 f"this model's UNet reads {cross}-wide ones.")
    if reads != gives:
        raise IpAdapterFileError(f"IP-Adapter {name!r} needs another image encoder: it reads {reads}-wide {what}, "
                                 f"{folder}/{ENCODER} gives {gives}.")
    return IpAdapterFile(name, path, signature, info)
