"""Inputs for one SDXL UNet call, shaped from the UNet's config: for the benchmark and tests that call it alone.

In a job the pipeline makes these from the prompt: both text encoders' states side by side, the pooled
text embedding, and SDXL's six size-and-crop numbers. A UNet called on its own needs only their shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def unet_call_inputs(config: Mapping[str, Any], size: int, batch: int = 2, dtype: Any = None, device: Any = None,
                     generator: Any = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(sample, timestep, encoder_hidden_states) and the `added_cond_kwargs` for a `size`-pixel square image.

    `batch` 2 is one image with classifier-free guidance. Random values (from `generator` when given);
    the timestep is 999.0, the first of a 1000-step schedule.
    """
    import torch

    def randn(*shape: int) -> Any:
        return torch.randn(*shape, dtype=dtype, device=device, generator=generator)

    latent = size // 8
    text_dim = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    sample = randn(batch, config["in_channels"], latent, latent)
    text = randn(batch, 77, config["cross_attention_dim"])
    added = {"text_embeds": randn(batch, text_dim),
             "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * batch, dtype=dtype, device=device)}
    return (sample, torch.tensor(999.0, device=device), text), {"added_cond_kwargs": added}
