"""A random-weight tiny decoder for previews, saved as diffusers saves madebyollin's taesdxl (config.json and
diffusion_pytorch_model.safetensors): taesdxl's own architecture (AutoencoderTiny's defaults), or a narrow one for
tests."""

from __future__ import annotations

from pathlib import Path


def write_tiny_decoder(folder: Path, narrow: bool = False, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    shape = dict(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                 num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)) if narrow else {}
    AutoencoderTiny(**shape).save_pretrained(folder)
    return folder
