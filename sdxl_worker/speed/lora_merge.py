"""LoRA jobs at graph speed: the job's LoRAs merged into the UNet's own weights in place, the originals put back.

A captured CUDA graph reads each weight at its address, and the fused q/k/v attention multiplies by the fused
weight, of which the separate projections are views (options.share_fused_weights). Adding each LoRA layer's
scaled delta to those same tensors lets both draw with the LoRA at full speed, where running PEFT's extra layers
would need the eager, unfused UNet (plain.py: measured 2.4x a plain job on an H200). Each touched weight is
copied before its delta is added and copied back afterwards, never restored by subtracting (float16 would drift),
so the next plain job is bit for bit the one before; a merge that fails part way puts back what it changed.

The UNet's PEFT layers are switched off while merged (their deltas are in the weights); the text encoders keep
PEFT's layers, which run once per job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def merged_unet(unet: Any, layers: list[Any]) -> Iterator[int]:
    """Within: `layers`' active adapters (at the scales set_adapters gave them) are in their base weights and
    the PEFT layers are off; yields the bytes of the saved originals. On the way out, the originals go back."""
    import torch

    saved: list[tuple[Any, Any]] = []
    try:
        with torch.no_grad():
            for layer in layers:
                weight = layer.get_base_layer().weight
                delta = sum(layer.get_delta_weight(name) for name in _active(layer))
                saved.append((weight, weight.detach().clone()))
                weight.add_(delta.to(weight.dtype))
        held = sum(original.numel() * original.element_size() for _, original in saved)
        log.info("merged the job's LoRAs into %d UNet weights (%.1f MB saved to put back)", len(saved), held / 1e6)
        unet.disable_lora()
        yield held
    finally:
        with torch.no_grad():
            for weight, original in reversed(saved):
                weight.copy_(original)
        unet.enable_lora()


def _active(layer: Any) -> list[str]:
    """The layer's active adapters that hold weights in it (an adapter may touch other layers only)."""
    return [name for name in layer.active_adapters if name in layer.lora_A]
