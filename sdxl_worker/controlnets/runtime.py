"""A job's ControlNets: their control images decoded with the job's input, the models loaded once, and the job run
by diffusers' SDXL ControlNet pipeline of its mode, built on the loaded pipeline's own components.

A ControlNet folder is checked from its config and headers (files.py beside this one), then its tensors against the
model its config describes, before any weight is read: a folder for another model or with missing tensors is one
sentence, and nothing is loaded. Loaded ControlNets stay on the model's device between jobs, the least recently
used dropped past CONTROLNET_CACHE_MB, loaded again when a file of theirs changes. The UNet is the loaded one,
so a LoRA, CUDA graphs (the ControlNet's residuals are more UNet inputs: a graph of their own per shape) and the
other speed options apply as to any job; the ControlNet itself runs eagerly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdxl_worker.contract.generation import pipeline_on
from sdxl_worker.contract.image_input import decode_image
from sdxl_worker.contract.job_schema import ControlNetRequest
from sdxl_worker.controlnets.files import ControlNetFileError, ControlNetFolder, ControlNetSettings, signature
from sdxl_worker.controlnets.files import inspect as inspect_folder
from sdxl_worker.logs import libraries_quiet
from sdxl_worker.sentences import bounded
from sdxl_worker.weights import architecture
from sdxl_worker.weights.finite import non_finite_weights

CANNY_THRESHOLDS = (100, 200)  # diffusers' and the canny ControlNets' model cards' values
PIPELINES = {"txt2img": "StableDiffusionXLControlNetPipeline", "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
             "inpaint": "StableDiffusionXLControlNetInpaintPipeline"}


def control_images(requests: Sequence[ControlNetRequest], width: int, height: int, max_bytes: int,
                   max_pixels: int) -> list[Any]:
    """Each ControlNet's control image, decoded within the input limits, preprocessed as asked, at the job's size;
    JobInputError naming the field when one cannot be."""
    from PIL import Image

    images = []
    for index, request in enumerate(requests):
        image = decode_image(f"controlnets.{index}.image", request.image, max_bytes, max_pixels).convert("RGB")
        if request.preprocess == "canny":
            image = canny(image)
        images.append(image.resize((width, height), Image.Resampling.LANCZOS) if image.size != (width, height)
                      else image)
    return images


def canny(image: Any) -> Any:
    """The image's edges, white on black, as canny ControlNets were trained on (OpenCV's Canny)."""
    import cv2
    import numpy as np
    from PIL import Image

    edges = cv2.Canny(np.asarray(image.convert("L")), *CANNY_THRESHOLDS)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


@dataclass
class LoadedControlNet:
    folder: ControlNetFolder
    model: Any
    bytes: int


class ControlNets:
    """The ControlNets a worker has loaded, bounded by CONTROLNET_CACHE_MB, and each job's pipeline with them."""

    def __init__(self, settings: ControlNetSettings) -> None:
        self.settings = settings
        self.folder = Path(settings.controlnet_dir)
        self.loaded: OrderedDict[str, LoadedControlNet] = OrderedDict()  # least recently used first

    @property
    def held_bytes(self) -> int:
        return sum(controlnet.bytes for controlnet in self.loaded.values())

    def pipeline(self, base: Any, mode: str, requests: Sequence[ControlNetRequest],
                 images: list[Any]) -> tuple[Any, dict[str, Any]]:
        """The pipeline for `mode` steered by `requests` (built on `base`'s components), and the call's ControlNet
        arguments."""
        import diffusers

        models = [self._load(base, request.name, keep={r.name for r in requests}).model for request in requests]
        self._evict(self.settings.controlnet_cache_mb * 1_000_000, keep={r.name for r in requests})
        controlnet = models[0] if len(models) == 1 else diffusers.MultiControlNetModel(models)
        pipe = pipeline_on(getattr(diffusers, PIPELINES[mode]), base, controlnet=controlnet)

        def each(values: list[Any]) -> Any:
            return values[0] if len(values) == 1 else values

        arguments = {"image" if mode == "txt2img" else "control_image": each(images),
                     "controlnet_conditioning_scale": each([r.scale for r in requests]),
                     "control_guidance_start": each([r.start for r in requests]),
                     "control_guidance_end": each([r.end for r in requests])}
        return pipe, arguments

    def _load(self, base: Any, name: str, keep: set[str]) -> LoadedControlNet:
        """The named ControlNet on the UNet's device and dtype, loaded unless it is already and unchanged."""
        cached = self.loaded.get(name)
        if cached is not None and signature(cached.folder.path) == cached.folder.signature:
            self.loaded.move_to_end(name)
            return cached
        if cached is not None:
            del self.loaded[name]
        folder = inspect_folder(self.folder, name, dict(base.unet.config))
        unet_weight = next(base.unet.parameters())
        # The fp16 file on CUDA as for the model, or where it is the only one (cast to the UNet's dtype).
        variant = "fp16" if "fp16" in folder.weights and (unet_weight.is_cuda or len(folder.weights) == 1) else \
            "standard"
        expected = architecture.expected_from_meta("diffusers", "ControlNetModel", folder.config)
        found = {entry_name: entry.shape for entry_name, entry in folder.weights[variant].entries.items()}
        problem = architecture.compare(expected, found, single_file=False)
        if problem is not None:
            raise ControlNetFileError(f"ControlNet {name!r}: {folder.weights[variant].path.name}: {problem}.")
        self._evict(self.settings.controlnet_cache_mb * 1_000_000 - folder.bytes, keep)
        from diffusers import ControlNetModel

        try:
            with libraries_quiet():
                model = ControlNetModel.from_pretrained(
                    folder.path, variant="fp16" if variant == "fp16" else None, dtype=unet_weight.dtype,
                    use_safetensors=True, local_files_only=True)
        # What diffusers and safetensors raise for weights they cannot read or place.
        except (OSError, ValueError, RuntimeError) as exc:
            raise ControlNetFileError(f"ControlNet {name!r} cannot be loaded: {bounded(exc, 200)}.") from exc
        if (problem := non_finite_weights(model.named_parameters())) is not None:
            raise ControlNetFileError(f"ControlNet {name!r}: {folder.weights[variant].path.name} {problem}: it would "
                                      "draw a flat image.")
        model.to(unet_weight.device).requires_grad_(False)  # from_pretrained leaves it in eval mode
        held = sum(tensor.numel() * tensor.element_size() for tensor in model.parameters())
        loaded = self.loaded[name] = LoadedControlNet(folder, model, held)
        return loaded

    def trim(self) -> None:
        """After a job: what is held back within CONTROLNET_CACHE_MB, the least recently used dropped first."""
        self._evict(self.settings.controlnet_cache_mb * 1_000_000, keep=set())

    def _evict(self, budget: int, keep: set[str]) -> None:
        """Drop the least recently used, except `keep` (the job's own), until what is held fits `budget` bytes."""
        for name in [name for name in self.loaded if name not in keep]:
            if self.held_bytes <= max(budget, 0):
                break
            del self.loaded[name]
