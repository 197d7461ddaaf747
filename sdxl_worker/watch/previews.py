"""Small previews of a job's images while it samples: the current latents drawn by a tiny decoder when the volume
has one (madebyollin's TAESD for SDXL, `taesdxl`, in diffusers' `AutoencoderTiny` layout), else mapped to colours
by a linear fit (no weights at all). The previews are the latents as they are at that step, noisy early on."""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

from sdxl_worker.logs import libraries_quiet
from sdxl_worker.weights.files import read_text_bounded
from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, read_safetensors_header

log = logging.getLogger("worker")

PREVIEW_SIDE = 256  # the long side at most, in pixels
PREVIEW_IMAGES = 4  # a job's first images, side by side
PREVIEW_QUALITY = 70
TINY_DECODER_CLASS = "AutoencoderTiny"
TINY_DECODER_WEIGHTS = "diffusion_pytorch_model.safetensors"
# SDXL's 4 latent channels to R, G, B, and a bias, fitted by ComfyUI (comfy/latent_formats.py, class SDXL) on the
# scaled latents the sampler works on; the result is in [-1, 1].
SDXL_LATENT_RGB = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
                   (-0.3165, -0.2492, -0.2188))
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


def tiny_decoder_problem(folder: Path) -> str | None:
    """Why `folder` is no tiny decoder the previews can use (None: it is one); torch-free, reads headers only."""
    config_file, weights = folder / "config.json", folder / TINY_DECODER_WEIGHTS
    if not config_file.is_file():
        return f"{folder} has no config.json"
    try:
        config = json.loads(read_text_bounded(config_file))
    except (ValueError, OSError) as exc:
        return f"{config_file} is not readable JSON ({exc})"
    if not isinstance(config, dict) or config.get("_class_name") != TINY_DECODER_CLASS:
        return f"{config_file} is no {TINY_DECODER_CLASS} config"
    if config.get("latent_channels", 4) != len(SDXL_LATENT_RGB):
        return f"{config_file} decodes {config.get('latent_channels')} latent channels, not SDXL's 4"
    if not weights.is_file():
        return f"{folder} has no {TINY_DECODER_WEIGHTS}"
    try:
        read_safetensors_header(weights)
    except SafetensorsHeaderError as exc:
        return f"{weights}: {exc}"
    return None


class Previewer:
    """Turns a step's latents into a base64 JPEG; `tiny_decoder` None: the linear colour map."""

    def __init__(self, tiny_decoder: Any | None = None) -> None:
        self.tiny_decoder = tiny_decoder
        self.kind = "taesdxl" if tiny_decoder is not None else "linear"

    @classmethod
    def load(cls, folder: Path, device: str, dtype: Any) -> Previewer:
        """The tiny decoder in `folder` when it is one, else the linear map (the reason logged once)."""
        if not folder.exists():
            log.info("previews: no tiny decoder at %s (PREVIEW_VAE_DIR), the latents' linear colour map", folder)
            return cls()
        problem = tiny_decoder_problem(folder)
        if problem is not None:
            log.warning("previews: %s; using the latents' linear colour map", problem)
            return cls()
        from diffusers import AutoencoderTiny

        try:
            with libraries_quiet():  # diffusers' AutoencoderTiny notes the options its own save_pretrained wrote
                decoder = AutoencoderTiny.from_pretrained(str(folder), dtype=dtype).to(device).train(False)
        except (OSError, ValueError, RuntimeError) as exc:  # tensors of other shapes than its config's
            log.warning("previews: the tiny decoder at %s does not load (%s); using the latents' linear colour map",
                        folder, str(exc).splitlines()[0][:300])
            return cls()
        log.info("previews: tiny decoder %s", folder)
        return cls(decoder)

    def jpeg(self, latents: Any) -> str:
        """The first PREVIEW_IMAGES images of `latents` (batch, 4, h, w) side by side, long side at most
        PREVIEW_SIDE, as base64 JPEG."""
        import torch
        from PIL import Image

        latents = latents[:PREVIEW_IMAGES]
        with torch.inference_mode():
            if self.tiny_decoder is not None:
                # Decoded at the preview's size, not the image's: the latents averaged down first (the decoder
                # upsamples 8x), which makes a 1024x1024 image's preview 1/16 of the decoder's work.
                count, _, height, width = latents.shape
                scale = min(1.0, PREVIEW_SIDE / (8 * max(count * width, height)))
                if scale < 1:
                    size = (max(1, round(height * scale)), max(1, round(width * scale)))
                    latents = torch.nn.functional.interpolate(latents.float(), size=size, mode="area")
                rgb = self.tiny_decoder.decode(latents.to(self.tiny_decoder.dtype)).sample  # (n, 3, H, W)
                rgb = rgb.permute(0, 2, 3, 1)
            else:
                factors = torch.tensor(SDXL_LATENT_RGB, dtype=torch.float32, device=latents.device)
                bias = torch.tensor(SDXL_LATENT_RGB_BIAS, dtype=torch.float32, device=latents.device)
                rgb = latents.float().permute(0, 2, 3, 1) @ factors + bias  # (n, h, w, 3)
            pixels = ((rgb.float() + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).cpu()
        row = torch.cat(list(pixels), dim=1).numpy()  # the images side by side
        image = Image.fromarray(row)
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))  # keeps the aspect ratio, never enlarges
        out = io.BytesIO()
        image.save(out, "JPEG", quality=PREVIEW_QUALITY)
        return base64.b64encode(out.getvalue()).decode("ascii")
