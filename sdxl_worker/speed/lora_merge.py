"""LoRA jobs at graph or compiled speed: the job's LoRAs merged into the UNet's own weights in place, the originals
put back after.

A captured CUDA graph reads each weight at its address, compiled code takes the weights as inputs (a change in
place keeps its guards), and the fused q/k/v attention multiplies by the fused
weight, of which the separate projections are views (options.share_fused_weights). Adding each LoRA layer's
scaled delta to those same tensors lets them draw with the LoRA at full speed, where running PEFT's extra layers
would need the eager, unfused UNet (plain.py: measured 2.4x a plain job on an H200). Each touched weight is
copied before its delta is added and copied back afterwards, never restored by subtracting (float16 would drift),
so the next plain job is bit for bit the one before; a merge that fails part way puts back what it changed. The
copies are as large as the weights a LoRA touches (SDXL's attention projections: 1.9 GB in float16; every linear
layer of its transformer blocks: 4.4 GB), so past LORA_MERGE_DEVICE_MB they wait in host memory instead.

The UNet's PEFT layers are switched off while merged (their deltas are in the weights), or taken out for compiled
code, which guards on the UNet's modules; the text encoders keep PEFT's layers, which run once per job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


def mergeable_layers(unet: Any) -> list[Any] | None:
    """The UNet's LoRA layers with an active adapter; None when one cannot be merged (DoRA, a layer kind PEFT
    computes no delta for), and the job must run PEFT's layers instead."""
    from peft.tuners.lora import Conv2d, LoraLayer
    from peft.tuners.lora import Linear as LoraLinear

    layers = []
    for module in unet.modules():
        if not isinstance(module, LoraLayer) or module.disable_adapters:
            continue
        active = _active(module)
        if not active:
            continue
        if not isinstance(module, (LoraLinear, Conv2d)) or any(module.use_dora.get(name) for name in active):
            return None
        layers.append(module)
    return layers


@dataclass(frozen=True)
class SavedWeights:
    """Where a merge keeps the originals it puts back: bytes on the model's device, bytes in host memory."""

    device_bytes: int
    host_bytes: int


@contextmanager
def merged_unet(unet: Any, layers: list[Any], device_budget: int, take_out: bool = False) -> Iterator[SavedWeights]:
    """Within: `layers`' active adapters (at the scales set_adapters gave them) are in their base weights and the
    PEFT layers are off, or with `take_out` out of the UNet (compiled code guards on its modules: the base layers
    are back where they were, the same objects). The originals are saved on the model's device up to
    `device_budget` bytes and in host memory past it (pinned on CUDA, so putting them back is one copy each); on
    the way out they go back."""
    import torch

    saved: list[tuple[Any, Any]] = []
    on_device = on_host = 0
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                delta = sum(layer.get_delta_weight(name) for name in _active(layer))
                size = weight.numel() * weight.element_size()
                if on_device + size <= device_budget:
                    original, on_device = weight.detach().clone(), on_device + size
                else:
                    original = torch.empty(weight.shape, dtype=weight.dtype, pin_memory=weight.is_cuda)
                    original.copy_(weight)
                    on_host += size
                saved.append((weight, original))
                weight.add_(delta.to(weight.dtype))
        log.info("merged the job's LoRAs into %d UNet weights; originals saved: %.1f MB on %s, %.1f MB in host memory "
                 "(LORA_MERGE_DEVICE_MB)", len(saved), on_device / 1e6, _device(layers), on_host / 1e6)
        if take_out:
            unet.unload_lora()
        else:
            unet.disable_lora()
        yield SavedWeights(on_device, on_host)
    finally:
        with torch.no_grad():
            for weight, original in reversed(saved):
                weight.copy_(original)
        if not take_out:
            unet.enable_lora()


def _device(layers: list[Any]) -> str:
    return str(layers[0].get_base_layer().weight.device) if layers else "the device"


def _active(layer: Any) -> list[str]:
    """The layer's active adapters that hold weights in it (an adapter may touch other layers only)."""
    return [name for name in layer.active_adapters if name in layer.lora_A]
