"""The UNet as plain eager modules for one job, whatever speed options were applied at the start.

A job that changes the UNet's modules (a LoRA adds layers beside its projections) cannot use what the speed
options built from the modules as they were: a captured CUDA graph replays the base model's kernels and would
silently leave the LoRA out; compiled code guards on the modules' types and would recompile inside the job; and
fused q/k/v attention multiplies by the fused weight, leaving out a LoRA on `to_q`, `to_k` or `to_v` (measured:
0.69 apart from the unfused result on the tiny model). Inside `plain_unet` the graph and any ahead-of-time
compiled package (aot.py) are bypassed, compiled code is skipped (torch's `force_eager` stance; the pipeline holds
the uncompiled UNet, whose methods diffusers' LoRA functions need), and attention goes through the separate
projections, which share the fused weight's memory (options.share_fused_weights), so the arithmetic is the base
model's plus the LoRA. Everything is put back on
the way out; the speed options' code and graphs are untouched, so the next plain job replays them as before.
LoRA jobs run inside it only where their LoRAs cannot be merged (lora_merge.py) or no graph or compiled code runs;
with a compiled UNet, loading and taking out a LoRA run inside it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def plain_module(module: Any) -> Any:
    """The module itself under a `torch.compile` wrapper (the wrapper's `_orig_mod`), else `module`."""
    return getattr(module, "_orig_mod", module)


@contextmanager
def plain_unet(pipe: Any) -> Iterator[Any]:
    """Within: `pipe.unet` is the uncompiled UNet, run eagerly with unfused attention; yields it."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

    wrapped = pipe.unet
    unet = plain_module(wrapped)
    # The forwards standing in for the UNet's own (a CUDA graph's, a compiled package's), outermost first.
    standing_in = []
    forward = unet.__dict__.get("forward")
    while hasattr(forward, "bypass"):
        standing_in.append(forward)
        forward = forward.eager
    processors = dict(unet.attn_processors)
    fused = any(isinstance(p, FusedAttnProcessor2_0) for p in processors.values())
    if unet is not wrapped:
        pipe.unet = unet
    for stand_in in standing_in:
        stand_in.bypass = True
    if fused:
        unet.set_attn_processor(AttnProcessor2_0())
    try:
        with torch.compiler.set_stance("force_eager"):  # restores the worker's own stance on the way out
            yield unet
    finally:
        if fused:
            unet.set_attn_processor(processors)
        for stand_in in standing_in:
            stand_in.bypass = False
        if unet is not wrapped:
            pipe.unet = wrapped
