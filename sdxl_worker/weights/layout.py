"""Where diffusers and transformers expect a component's safetensors weights, per variant.

One module owns these names so that the volume check, the loader's plan and the synthetic volume
builder agree with each other and with the libraries' own naming (diffusers'
`variant_compatible_siblings`, transformers' `SAFE_WEIGHTS_NAME`). Only safetensors count: the
worker loads with `use_safetensors=True`, so `.bin`, flax, ONNX and OpenVINO files on a volume are
decoys it never reads.
"""

from __future__ import annotations

from typing import Literal

# The two weight sets a volume can hold: the fp16 variant and the standard (usually fp32) files.
Variant = Literal["fp16", "standard"]
VARIANTS: tuple[Variant, ...] = ("fp16", "standard")

WEIGHT_PREFIX: dict[str, str] = {
    "diffusers": "diffusion_pytorch_model",
    "transformers": "model",
}
# The pickled weights older repositories ship (never loaded by the worker; prepare_volume converts them).
BIN_PREFIX: dict[str, str] = {
    "diffusers": "diffusion_pytorch_model",
    "transformers": "pytorch_model",
}


def variant_suffix(variant: Variant) -> str | None:
    """The `variant=` argument diffusers and transformers take for a set (None for standard)."""
    return None if variant == "standard" else variant


def single_file_name(library: str, variant: Variant) -> str:
    """`diffusion_pytorch_model.fp16.safetensors`, `model.safetensors`, ..."""
    prefix = WEIGHT_PREFIX[library]
    return f"{prefix}.safetensors" if variant == "standard" else f"{prefix}.{variant}.safetensors"


def index_file_names(library: str, variant: Variant) -> tuple[str, ...]:
    """Names of a sharded set's index, the current naming first, then diffusers' legacy one."""
    prefix = WEIGHT_PREFIX[library]
    if variant == "standard":
        return (f"{prefix}.safetensors.index.json",)
    return (f"{prefix}.safetensors.index.{variant}.json", f"{prefix}.safetensors.{variant}.index.json")


def shard_file_name(library: str, variant: Variant, index: int, total: int) -> str:
    """`model-00001-of-00002.safetensors` or `model.fp16-00001-of-00002.safetensors`."""
    prefix = WEIGHT_PREFIX[library]
    stem = prefix if variant == "standard" else f"{prefix}.{variant}"
    return f"{stem}-{index:05d}-of-{total:05d}.safetensors"


def bin_file_names(library: str, variant: Variant) -> tuple[str, str]:
    """A pickled set's single file and shard index: `pytorch_model.fp16.bin`, `pytorch_model.bin.index.fp16.json`."""
    prefix = BIN_PREFIX[library]
    if variant == "standard":
        return f"{prefix}.bin", f"{prefix}.bin.index.json"
    return f"{prefix}.{variant}.bin", f"{prefix}.bin.index.{variant}.json"
