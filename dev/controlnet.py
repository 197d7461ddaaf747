"""Write an SDXL ControlNet folder for a model folder, as diffusers saves one (`config.json` and safetensors).

No ControlNet can be fetched here, so the tests and the demo make their own for any model size (the tiny test model
too): diffusers' `ControlNetModel.from_unet` on the model's UNet, with random weights in what from_unet leaves at
zero (its zero convolutions, the conditioning embedding's last layer), since a ControlNet of zeros steers nothing.
Its conditioning embedding downsamples the control image 8x, as the model's VAE does its image.

    python -m dev.controlnet MODEL_DIR OUT_FOLDER [--seed N] [--fp16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sdxl_worker.logs import configure_logging


def write_controlnet(model_dir: Path, out: Path, seed: int = 0, fp16: bool = False, std: float = 0.05,
                     condition_std: float = 100.0) -> Path:
    """`std` for the zero convolutions (how far it steers), `condition_std` for the control image's embedding's last
    layer (how much the control image decides where, against the random UNet copy's own steering)."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", local_files_only=True)
    controlnet = ControlNetModel.from_unet(unet)
    generator = torch.Generator().manual_seed(seed)
    zeroed = [(module, std) for module in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block)]
    zeroed.append((controlnet.controlnet_cond_embedding.conv_out, condition_std))
    with torch.no_grad():
        for module, spread in zeroed:
            for tensor in module.parameters():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * spread)
        # Without biases the embedding is the control image's alone (random biases swamp it: residuals 0.3% apart
        # measured between a black and a random image); scaled up, the image decides much of the steering (on the
        # tiny model: 1.7 levels of 255 apart between a ring and a black control image, 5.8 from no ControlNet).
        for module in controlnet.controlnet_cond_embedding.modules():
            if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.zero_()
    if fp16:
        controlnet.to(torch.float16).save_pretrained(out, variant="fp16")
    else:
        controlnet.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    configure_logging("WARNING", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp16", action="store_true", help="write the fp16 variant (diffusion_pytorch_model.fp16)")
    args = parser.parse_args(argv)
    print(f"wrote {write_controlnet(args.model_dir, args.out, args.seed, args.fp16)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
