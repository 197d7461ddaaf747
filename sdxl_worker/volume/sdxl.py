"""SDXL's anatomy: the components a StableDiffusionXLPipeline takes, the classes the worker loads for each, which of
them hold weights and which it cannot generate without. Every module that names SDXL's parts reads them here."""

from __future__ import annotations

TOKENIZERS = frozenset({"CLIPTokenizer", "CLIPTokenizerFast"})
SCHEDULERS = frozenset({
    "DDIMScheduler", "DDPMScheduler", "DEISMultistepScheduler", "DPMSolverMultistepScheduler",
    "DPMSolverSDEScheduler", "DPMSolverSinglestepScheduler", "EDMDPMSolverMultistepScheduler", "EDMEulerScheduler",
    "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "KDPM2DiscreteScheduler", "LCMScheduler", "LMSDiscreteScheduler",
    "PNDMScheduler", "TCDScheduler", "UniPCMultistepScheduler",
})
# The weighted models, in model_index.json's order: (library, class).
MODELS: dict[str, tuple[str, str]] = {
    "text_encoder": ("transformers", "CLIPTextModel"),
    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
    "unet": ("diffusers", "UNet2DConditionModel"),
    "vae": ("diffusers", "AutoencoderKL"),
}
MODEL_COMPONENTS = tuple(MODELS)
# Every component a StableDiffusionXLPipeline takes, and the classes the worker loads for each.
SDXL_CLASSES: dict[str, frozenset[str]] = {
    **{name: frozenset({class_name}) for name, (_, class_name) in MODELS.items()},
    "tokenizer": TOKENIZERS, "tokenizer_2": TOKENIZERS, "scheduler": SCHEDULERS,
    "image_encoder": frozenset({"CLIPVisionModelWithProjection"}),
    "feature_extractor": frozenset({"CLIPImageProcessor"}),
}
# Components a StableDiffusionXLPipeline cannot generate without.
SDXL_REQUIRED = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
SUPPORTED_PIPELINES = ("StableDiffusionXLPipeline",)
# The sizes SDXL was trained at, width x height: its aspect-ratio buckets near one megapixel (the SDXL report's
# appendix), which is what users send. `CUDA_GRAPH_SHAPES=sdxl` captures them all at the start.
TRAINED_SIZES: tuple[tuple[int, int], ...] = (
    (1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344), (1536, 640),
    (640, 1536),
)
