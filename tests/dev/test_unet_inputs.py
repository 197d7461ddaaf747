"""Example UNet inputs follow the config: SDXL's shapes at full size, and a tiny UNet accepts them."""

from __future__ import annotations

from pathlib import Path

import torch

from dev.synthetic_volume import component_config
from dev.unet_inputs import unet_call_inputs


def test_sdxl_shapes() -> None:
    config = component_config("full", "unet")
    (sample, timestep, text), kwargs = unet_call_inputs(config, 1024, dtype=torch.float16, device="meta")
    added = kwargs["added_cond_kwargs"]
    assert (sample.shape, timestep.shape, text.shape) == ((2, 4, 128, 128), (), (2, 77, 2048))
    assert (added["text_embeds"].shape, added["time_ids"].shape) == ((2, 1280), (2, 6))
    assert {sample.device.type, text.device.type, added["time_ids"].device.type} == {"meta"}


def test_a_unet_runs_on_them(tiny_volume_source: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_volume_source, subfolder="unet", local_files_only=True)
    args, kwargs = unet_call_inputs(unet.config, 256, batch=1, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        (noise,) = unet(*args, **kwargs, return_dict=False)
    assert noise.shape == (1, 4, 32, 32) and bool(torch.isfinite(noise).all())
