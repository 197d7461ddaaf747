"""Convert an SDXL single-file checkpoint (the A1111/Civitai layout) into the diffusers folder the worker serves.

diffusers' `from_single_file` does this in memory and, without a local config folder, asks the hub for SDXL's
configs; it also tells the two text encoders apart by their widths. Here each part of the checkpoint is taken by
its own key prefix and converted with diffusers' own key mappings (`diffusers.loaders.single_file_utils`), the
configs and tokenizers come from the SDXL base 1.0 files the project ships (or a `--config` folder), and nothing
is fetched. Before a byte is written the conversion runs once on meta tensors built from the header, so every
output file's names, shapes and size are known, and checked against the config, in advance.

Memory: one component's tensors as the checkpoint stores them (the UNet: 5.1 GB from an fp16 checkpoint,
10.3 GB from an fp32 one), read with plain reads, then written to its fp16 file tensor by tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sdxl_worker.prepare.fp16_set import ComponentWork, PrepareError, component_work, to_float16
from sdxl_worker.sentences import bounded
from sdxl_worker.volume.check import check_weight_set
from sdxl_worker.volume.sdxl import MODELS
from sdxl_worker.weights import architecture
from sdxl_worker.weights.layout import single_file_name
from sdxl_worker.weights.safetensors_header import SafetensorsInfo
from sdxl_worker.weights.safetensors_io import (
    TORCH_DTYPES,
    Progress,
    TensorSpec,
    fsync_path,
    layout,
    read_tensors,
    write_safetensors,
)

# Where each component's weights sit in an SDXL base checkpoint (Stability's sgm layout).
PREFIXES = {
    "unet": "model.diffusion_model.",
    "vae": "first_stage_model.",
    "text_encoder": "conditioner.embedders.0.transformer.",
    "text_encoder_2": "conditioner.embedders.1.model.",
}
LIBRARIES = {name: library for name, (library, _) in MODELS.items()}
CLASSES = {name: class_name for name, (_, class_name) in MODELS.items()}
# diffusers' names for what a checkpoint is (infer_diffusers_model_type), in words.
MODEL_TYPES = {
    "v1": "a Stable Diffusion 1.x model", "inpainting": "a Stable Diffusion 1.x inpainting model",
    "v2": "a Stable Diffusion 2.x model", "inpainting_v2": "a Stable Diffusion 2.x inpainting model",
    "xl_refiner": "the SDXL refiner", "xl_inpaint": "an SDXL inpainting model", "playground-v2-5": "Playground v2.5",
    "upscale": "the Stable Diffusion x4 upscaler", "sd3": "Stable Diffusion 3", "sd35_medium": "Stable Diffusion 3.5",
    "sd35_large": "Stable Diffusion 3.5",
}
# The model types whose key names (diffusers' CHECKPOINT_KEY_NAMES) no SD 1.x, 2.x or SDXL checkpoint holds.
DISTINCT_KEYS = ("sd3", "sd35_large", "playground-v2-5", "upscale")
LORA_MARKERS = ("lora_down", "lora_up", "lora_A", "lora_B", "lora_unet_", "lora_te")



@dataclass
class ConvertedComponent:
    """One component taken from the checkpoint: its fp16 file's tensors and size."""

    name: str
    target: Path
    specs: list[TensorSpec]
    bytes: int


def identify(info: SafetensorsInfo) -> str | None:
    """None for an SDXL base checkpoint; else one sentence on what the file looks like."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type

    names = list(info.entries)
    lora = next((n for n in names if any(marker in n for marker in LORA_MARKERS)), None)
    if lora is not None:
        return f"{info.path.name} looks like a LoRA (tensors such as {lora}), not a model checkpoint"
    try:
        model_type = infer_diffusers_model_type(_meta_tensors(info))
    # diffusers' detector indexes the shapes and names of the tensors it finds (a 1-d conv_in, an SD3 file without
    # its pos_embed): a file none of its layouts fits fails inside it.
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        family = next((kind for kind in DISTINCT_KEYS if any(
            key in info.entries for key in _as_list(CHECKPOINT_KEY_NAMES[kind]))), None)
        if family is not None:
            return (f"{info.path.name} looks like {MODEL_TYPES[family]} (with tensors diffusers cannot read), not "
                    "SDXL base: this worker serves SDXL base fine-tunes only")
        return (f"{info.path.name} is not an SDXL base checkpoint: its tensors fit none of the layouts diffusers "
                f"recognises ({type(exc).__name__}: {bounded(exc, 80)})")
    if model_type == "xl_base" or (model_type == "v1" and _sdxl_base_unet(info)):
        return None
    if model_type == "v1" and CHECKPOINT_KEY_NAMES["v1"] not in info.entries:
        sample = ", ".join(sorted(names)[:2]) or "none"
        return (f"{info.path.name} holds no Stable Diffusion checkpoint: none of its {len(names)} tensors is "
                f"named like an SDXL one (e.g. {sample})")
    words = "a Flux model" if model_type.startswith("flux") else MODEL_TYPES.get(model_type, f"a '{model_type}' model")
    return f"{info.path.name} looks like {words}, not SDXL base: this worker serves SDXL base fine-tunes only"


def _as_list(keys: str | list[str]) -> list[str]:
    return [keys] if isinstance(keys, str) else keys


def _sdxl_base_unet(info: SafetensorsInfo) -> bool:
    """An SDXL base UNet whatever its depth (diffusers' own test looks for text encoder layer 9, which a small
    model lacks): size-and-time conditioning (label_emb), 4 latent channels in, and no refiner's encoder."""
    conv_in = info.entries.get(PREFIXES["unet"] + "input_blocks.0.0.weight")
    return (PREFIXES["unet"] + "label_emb.0.0.weight" in info.entries and conv_in is not None
            and len(conv_in.shape) == 4 and conv_in.shape[1] == 4
            and not any(n.startswith("conditioner.embedders.0.model.") for n in info.entries))


def components_in(info: SafetensorsInfo) -> dict[str, int]:
    """How many tensors the checkpoint holds for each component."""
    return {name: sum(n.startswith(prefix) for n in info.entries) for name, prefix in PREFIXES.items()}


def plan_component(info: SafetensorsInfo, component: str, folder: Path, config: dict[str, Any],
                   config_source: str) -> ConvertedComponent:
    """Convert the component on meta tensors: the fp16 file it gives, checked against `config`."""
    try:
        converted = convert(component, _meta_tensors(info, PREFIXES[component]), config)
    # diffusers' mappings index the tensors they expect: a checkpoint that lacks one, or holds one of another
    # shape, fails there, before anything is written.
    except (KeyError, IndexError, ValueError, RuntimeError) as exc:
        raise PrepareError(f"{component}: the checkpoint's tensors cannot be converted ({type(exc).__name__}: "
                           f"{bounded(exc, 160)})") from None
    shapes = {name: tuple(t.shape) for name, t in converted.items()}
    expected = architecture.expected_from_manifest(component, CLASSES[component], config) \
        or architecture.expected_from_meta(LIBRARIES[component], CLASSES[component], config)
    problem = architecture.compare(expected, shapes)
    if problem:
        raise PrepareError(f"{component}: the checkpoint's weights do not fit {config_source}'s config: {problem}")
    specs = [TensorSpec(name, "F16" if t.is_floating_point() else _safetensors_dtype(t), tuple(t.shape))
             for name, t in converted.items()]
    target = folder / component / single_file_name(LIBRARIES[component], "fp16")
    return ConvertedComponent(component, target, specs, layout(specs, {"format": "pt"}).file_bytes)


def write_component(info: SafetensorsInfo, part: ConvertedComponent, config: dict[str, Any],
                    progress: Progress | None = None) -> None:
    """Read the component's tensors, convert them and write its fp16 file (atomically)."""
    tensors = dict(read_tensors(info, [n for n in info.entries if n.startswith(PREFIXES[part.name])]))
    converted = convert(part.name, tensors, config)
    del tensors

    def cast() -> Iterator[tuple[str, Any]]:
        while converted:
            name, tensor = converted.popitem()
            yield name, to_float16(name, tensor)

    write_safetensors(part.target, part.specs, cast(), {"format": "pt"}, progress)


def convert(component: str, tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The component's checkpoint tensors (keys with their prefix) under diffusers' and transformers' names."""
    from diffusers.loaders import single_file_utils as sfu

    if component == "unet":
        return sfu.convert_ldm_unet_checkpoint(tensors, config)
    if component == "vae":
        return sfu.convert_ldm_vae_checkpoint(tensors, config)
    if component == "text_encoder":
        converted = sfu.convert_ldm_clip_checkpoint(tensors)
        # A buffer transformers 5 no longer stores; some checkpoints carry it.
        converted.pop("text_model.embeddings.position_ids", None)
        return converted
    holder = SimpleNamespace(config=SimpleNamespace(hidden_size=config["hidden_size"]))
    return sfu.convert_open_clip_checkpoint(holder, tensors, prefix=PREFIXES["text_encoder_2"])


def vae_work(vae_dir: Path, folder: Path) -> ComponentWork:
    """The fp16 VAE file from a diffusers VAE folder (its standard weights cast, else its fp16 ones copied)."""
    for variant in ("standard", "fp16"):
        weights = check_weight_set("diffusers", vae_dir, variant)
        if weights.complete:
            return component_work("vae", "diffusers", vae_dir, weights.files, f"from --vae {vae_dir}", folder / "vae")
    problem = check_weight_set("diffusers", vae_dir, "standard").problem
    raise PrepareError(f"--vae {vae_dir} holds no complete VAE weights ({problem})", exit_code=2)


def sync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`, so the rename that publishes it publishes complete files."""
    for root, _, files in os.walk(folder):
        for path in [*(Path(root) / name for name in files), Path(root)]:
            fsync_path(path)


def _meta_tensors(info: SafetensorsInfo, prefix: str = "") -> dict[str, Any]:
    """The header's tensors as meta tensors: names, shapes and dtypes, no data."""
    import torch

    return {name: torch.empty(e.shape, dtype=getattr(torch, TORCH_DTYPES.get(e.dtype, "uint8")), device="meta")
            for name, e in info.entries.items() if name.startswith(prefix)}


def _safetensors_dtype(tensor: Any) -> str:
    from sdxl_worker.weights.safetensors_io import SAFETENSORS_DTYPES

    return SAFETENSORS_DTYPES[str(tensor.dtype).removeprefix("torch.")]

