"""The job contract: every input field, its type, default, bounds and choices, in one schema.

runpod's own validator skips `constraints` on keys that have a default, so bounds would go
unchecked; pydantic checks them all. Strict types: "30" is not a step count and `true` is not a
width, because silently coercing a client's mistake hides it. A bad job gets one readable sentence
naming the field and the rule (`JobInputError`), never a traceback.
"""

from __future__ import annotations

import difflib
import itertools
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from sdxl_worker.sentences import bounded

SchedulerName = Literal[
    "default", "euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_sde_karras", "ddim", "unipc",
    "euler_trailing", "ddim_trailing", "lcm", "tcd",
]
SCHEDULERS: tuple[str, ...] = get_args(SchedulerName)
ETA_SCHEDULERS = ("tcd", "ddim", "ddim_trailing")  # the ones whose step takes an eta
OutputFormat = Literal["png", "jpeg", "webp"]

# 1536 x 1536: SDXL's quality falls off past ~1.5 MP and memory grows with it; raise with MAX_PIXELS.
DEFAULT_MAX_PIXELS = 1536 * 1536
MIN_SIDE, MAX_SIDE = 256, 2048
MIN_PIXELS = MIN_SIDE * MIN_SIDE
MAX_PROMPT_CHARS = 2000
# SDXL's training timesteps are 0..999; a distilled recipe names a few of them (DMD2: 999, 749, 499, 249).
MAX_TRAIN_TIMESTEP = 999
MAX_TIMESTEPS = 50
DEFAULT_QUALITY = 90
DEFAULT_STRENGTH = 0.75
MAX_NAMED = 3  # breaches named in a refusal; the rest are counted, so that a refusal stays a sentence
DEFAULT_MAX_LORAS = 4
DEFAULT_MAX_CONTROLNETS = 3
MAX_CLIP_SKIP = 10  # SDXL's smaller text encoder (CLIP ViT-L) has 12 layers: 10 skipped from its penultimate
# A LoRA's name is its file's stem under LORA_DIR: no separators, no leading dot (so never `.` or `..`).
LORA_NAME_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$"


class JobInputError(ValueError):
    """A job's input broke the contract; str() is the sentence to return to the caller."""


class LoraRequest(BaseModel):
    """One LoRA a job applies: which file, how strongly."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(pattern=LORA_NAME_PATTERN, description=(
        "The file's stem under `LORA_DIR` (`NAME.safetensors`): letters, digits, `._-`, no leading dot."))
    scale: float = Field(default=1.0, ge=-2.0, le=2.0, allow_inf_nan=False, description=(
        "How strongly it applies; 0 is the base model, negative inverts it."))


class ControlNetRequest(BaseModel):
    """One ControlNet a job applies: which one, its control image, how strongly and over which part of sampling."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(pattern=LORA_NAME_PATTERN, description=(
        "The folder's name under `CONTROLNET_DIR` (`NAME/config.json` and its weights)."))
    image: str = Field(description=(
        "The control image (pose, depth, edges, ...), encoded as `image` is; resized to the job's size."))
    scale: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False, description=(
        "How strongly it steers; 0 is the job without it."))
    start: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False, description=(
        "The fraction of the steps where it starts steering."))
    end: float = Field(default=1.0, ge=0.0, le=1.0, allow_inf_nan=False, description=(
        "The fraction of the steps where it stops; above `start`."))
    preprocess: Literal["none", "canny"] = Field(default="none", description=(
        "`canny`: the worker draws the image's edges (OpenCV, thresholds 100 and 200) for a canny ControlNet; "
        "other preprocessing is the caller's."))

    @model_validator(mode="after")
    def _steering_window(self) -> ControlNetRequest:
        if self.start >= self.end:
            raise ValueError(f"start {self.start:g} must be below end {self.end:g}")
        return self


class IpAdapterRequest(BaseModel):
    """A job's image prompt: which IP-Adapter, the image, how strongly."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(pattern=LORA_NAME_PATTERN, description=(
        "The adapter file's stem under `IP_ADAPTER_DIR` (`ip-adapter_sdxl`, `ip-adapter-plus_sdxl_vit-h`, ...)."))
    image: str = Field(description="The image prompt, encoded as `image` is.")
    scale: float = Field(default=0.6, ge=0.0, le=2.0, allow_inf_nan=False, description=(
        "How strongly the image prompts; 0 is the job without it."))


class JobInput(BaseModel):
    """What a caller may put in a job's `input`; anything else is refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw; not only whitespace.")
    negative_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS, description="What to avoid.")
    width: int = Field(default=1024, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8, description=(
        "Pixels; width x height at most `MAX_PIXELS`."))
    height: int = Field(default=1024, ge=MIN_SIDE, le=MAX_SIDE, multiple_of=8, description="Pixels.")
    num_inference_steps: int = Field(default=30, ge=1, le=100, description="Sampling steps.")
    guidance_scale: float = Field(default=7.0, ge=0.0, le=30.0, allow_inf_nan=False, description=(
        "Classifier-free guidance; finite. At most 1: none, one UNet pass a step (step-distilled models' 4-8-step "
        "recipes), and then no `negative_prompt`."))
    timesteps: list[int] | None = Field(default=None, min_length=1, max_length=MAX_TIMESTEPS, description=(
        f"The sampler's timesteps themselves, for a recipe that names them (DMD2: `[999, 749, 499, 249]` with `lcm`):"
        f" strictly descending, each 0-{MAX_TRAIN_TIMESTEP}; their count is the steps. Text to image, with the "
        "samplers that take them (`euler`, `euler_trailing`, `lcm`, `tcd`, `dpmpp_2m`...)."))
    eta: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False, description=(
        "Noise the `tcd`, `ddim` and `ddim_trailing` samplers add back a step, 0-1 (TCD's recipes: 0.3); null: 0. "
        "Other samplers have none."))
    model: str | None = Field(default=None, min_length=1, max_length=64, description=(
        "Which of the endpoint's models draws (a name in MODELS); null: the first."))
    preview: int | None = Field(default=None, ge=1, le=100, description=(
        "Every this many steps, a small JPEG of the images so far (base64, at most 256 px on its long side) in the "
        "job's progress update: its status while it runs, or its stream with `STREAM=1`. Null: none."))
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, description=(
        "Null: a random one, returned. Image i of a job uses seed + i."))
    num_images: int = Field(default=1, ge=1, le=4, description="Images from one prompt, one seed each.")
    scheduler: SchedulerName = Field(default="default", description=(
        "The sampler, built from the volume's scheduler config; `default` is that config as it is. For 4-8-step "
        "distilled models: `euler_trailing` (SDXL-Lightning), `lcm` (LCM-LoRA, DMD2), `tcd` (TCD, Hyper-SD); "
        "`ddim_trailing` too (docs/fast-sampling.md)."))
    output_format: OutputFormat = Field(default="png", description=(
        "png is lossless (written at zlib level 1: about half the time of Pillow's default, files ~11% larger)."))
    quality: int | None = Field(default=None, ge=1, le=100, description=(
        f"jpeg and webp only; null: {DEFAULT_QUALITY}."))
    clip_skip: int | None = Field(default=None, ge=1, le=MAX_CLIP_SKIP, description=(
        "Text-encoder layers skipped, counted as diffusers' SDXL pipelines do, on both encoders and long prompts: "
        "null is SDXL's own penultimate layer, 1 the layer before it; at most the model's layers less 2."))
    controlnets: list[ControlNetRequest] = Field(default_factory=list, description=(
        "ControlNets to steer with, at most `CONTROLNET_MAX_PER_JOB`, each name once; with text to image, image to "
        "image and inpainting alike."))
    ip_adapter: IpAdapterRequest | None = Field(default=None, description=(
        "An image prompt through an IP-Adapter, beside the text prompt."))
    embeddings: bool = Field(default=True, description=(
        "A word of a prompt equal to a file's name in `EMBEDDINGS_DIR` uses that textual-inversion embedding, as in "
        "A1111 (weighting around it applies); false: every word is text. Each prompt, its embeddings expanded, is at "
        "most as many tokens as its character cap (2000)."))
    prompt_weighting: bool = Field(default=True, description=(
        "A1111 weights in the prompts: `(word:1.3)`, `(word)` x1.1, `[word]` /1.1; false: parentheses are text."))
    image: str | None = Field(default=None, description=(
        "Image to image: a base64 PNG, JPEG or WebP, or a `data:` URL (never an http URL: the worker fetches "
        "nothing); at most `MAX_INPUT_IMAGE_MB` encoded and `MAX_PIXELS` decoded. Sides not a multiple of 8 are "
        "cut down to one; `width` and `height`, when given, resize it."))
    strength: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False, description=(
        f"With `image`: how far to move from it, 0 < s <= 1; null: {DEFAULT_STRENGTH}."))
    mask: str | None = Field(default=None, description=(
        "With `image`: inpainting; same encoding and size as the image, white = repaint."))
    loras: list[LoraRequest] = Field(default_factory=list, description=(
        "LoRAs from the volume for this job only, `[{\"name\": ..., \"scale\": 1.0}]`; at most "
        "`LORA_MAX_PER_JOB`, each name once. The next job without them is the base model again."))
    output: Literal["base64", "url"] | None = Field(default=None, description=(
        "How images come back: null is base64 in the reply, or bucket URLs when the reply would exceed "
        "`RESULT_MAX_MB` and a bucket is set; `url` always uploads (needs the bucket)."))

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain text, not only whitespace")
        return value

    @model_validator(mode="after")
    def _limits(self, info: ValidationInfo) -> JobInput:
        max_pixels = (info.context or {}).get("max_pixels", DEFAULT_MAX_PIXELS)
        max_loras = (info.context or {}).get("max_loras", DEFAULT_MAX_LORAS)
        # With an image the size generated is the image's (image_input.py checks it, with any width or height given).
        if self.image is None and self.width * self.height > max_pixels:
            raise ValueError(
                f"width x height is {self.width}x{self.height} = {self.width * self.height:,} pixels, "
                f"over this endpoint's limit of {max_pixels:,} (MAX_PIXELS)"
            )
        max_clip_skip = (info.context or {}).get("max_clip_skip", MAX_CLIP_SKIP)
        if self.clip_skip is not None and self.clip_skip > max_clip_skip:
            raise ValueError(f"clip_skip {self.clip_skip} is past this model's text encoders: at most {max_clip_skip} "
                             "(their layers less 2)")
        if len(self.loras) > max_loras:
            raise ValueError(f"{len(self.loras)} LoRAs, over this endpoint's limit of {max_loras} per job "
                             "(LORA_MAX_PER_JOB)")
        max_controlnets = (info.context or {}).get("max_controlnets", DEFAULT_MAX_CONTROLNETS)
        if len(self.controlnets) > max_controlnets:
            raise ValueError(f"{len(self.controlnets)} ControlNets, over this endpoint's limit of {max_controlnets} "
                             "per job (CONTROLNET_MAX_PER_JOB)")
        controlnets = [controlnet.name for controlnet in self.controlnets]
        if len(set(controlnets)) < len(controlnets):
            twice = next(name for name in controlnets if controlnets.count(name) > 1)
            raise ValueError(f"ControlNet {twice!r} is named twice: give each ControlNet once")
        names = [lora.name for lora in self.loras]
        if len(set(names)) < len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise ValueError(f"LoRA {twice!r} is named twice: give each LoRA once, with its scale")
        if self.quality is not None and self.output_format == "png":
            raise ValueError("quality applies to jpeg and webp only, not png")
        if self.image is None and (self.strength is not None or self.mask is not None):
            raise ValueError("strength and mask apply with an image only")
        if self.negative_prompt and self.guidance_scale <= 1:
            raise ValueError(f"negative_prompt has no effect at guidance_scale {self.guidance_scale:g} (at most 1 "
                             "runs one UNet pass a step, with no negative branch): drop it, or raise guidance_scale "
                             "above 1")
        if self.eta is not None and self.scheduler not in ETA_SCHEDULERS:
            raise ValueError(f"eta applies to the {', '.join(ETA_SCHEDULERS)} samplers only, not {self.scheduler!r}")
        if self.timesteps is not None:
            steps = self.timesteps
            outside = any(not 0 <= t <= MAX_TRAIN_TIMESTEP for t in steps)
            if outside or any(a <= b for a, b in itertools.pairwise(steps)):
                raise ValueError(f"timesteps must be strictly descending, each 0-{MAX_TRAIN_TIMESTEP} (SDXL's "
                                 f"training range), e.g. [999, 749, 499, 249]; got {bounded(steps, 120)}")
            if "num_inference_steps" in self.model_fields_set and self.num_inference_steps != len(steps):
                raise ValueError(f"num_inference_steps {self.num_inference_steps} and {len(steps)} timesteps "
                                 "disagree: give the timesteps alone")
            if self.image is not None:
                raise ValueError("timesteps apply to text to image only; with an image, strength picks the steps")
        if self.image is not None and int(self.num_inference_steps * self.image_strength) < 1:
            raise ValueError(f"num_inference_steps x strength is {self.num_inference_steps * self.image_strength:.2f}: "
                             "it must reach at least 1 step")
        return self

    @property
    def steps(self) -> int:
        """The sampling steps the job runs: its timesteps' count when it names them."""
        return len(self.timesteps) if self.timesteps is not None else self.num_inference_steps

    @property
    def image_strength(self) -> float:
        return DEFAULT_STRENGTH if self.strength is None else self.strength

    @property
    def mode(self) -> Literal["txt2img", "img2img", "inpaint"]:
        return "txt2img" if self.image is None else "inpaint" if self.mask is not None else "img2img"

    @property
    def encode_quality(self) -> int:
        return DEFAULT_QUALITY if self.quality is None else self.quality


# Job fields whose values are objects: their model, and where a sentence says an unknown field stood.
NESTED_ITEMS: dict[str, tuple[type[BaseModel], str]] = {"loras": (LoraRequest, "a LoRA"),
                                                       "controlnets": (ControlNetRequest, "a ControlNet"),
                                                       "ip_adapter": (IpAdapterRequest, "the IP-Adapter request")}


def parse_job_input(raw: Any, max_pixels: int = DEFAULT_MAX_PIXELS, max_loras: int = DEFAULT_MAX_LORAS,
                    max_clip_skip: int = MAX_CLIP_SKIP, max_controlnets: int = DEFAULT_MAX_CONTROLNETS) -> JobInput:
    """Validate a job's `input`, raising JobInputError with one sentence on any breach."""
    if not isinstance(raw, dict):
        raise JobInputError(
            f"input must be a JSON object with at least a prompt, got {type(raw).__name__}"
        )
    try:
        return JobInput.model_validate(raw, context={"max_pixels": max_pixels, "max_loras": max_loras,
                                                     "max_clip_skip": max_clip_skip,
                                                     "max_controlnets": max_controlnets})
    except ValidationError as exc:
        raise JobInputError(_sentence(exc)) from None


def _sentence(exc: ValidationError) -> str:
    """One sentence for any number of breaches, bounded: the first few named, the rest counted."""
    errors = exc.errors(include_url=False)
    unknown = [str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden"]
    others = [e for e in errors if e["type"] != "extra_forbidden"]
    parts = []
    if unknown:
        names = ", ".join(repr(_cut(name)) for name in unknown[:MAX_NAMED])
        more = f" and {len(unknown) - MAX_NAMED} more" if len(unknown) > MAX_NAMED else ""
        nested = NESTED_ITEMS.get(str(next(e for e in errors if e["type"] == "extra_forbidden")["loc"][0]))
        fields = list(nested[0].model_fields if nested else JobInput.model_fields)
        where = f" in {nested[1]}" if nested else ""
        # A near miss (`num_inference_step`) is named; a field that merely shares letters is not.
        close = next((f"did you mean {match[0]!r}? " for name in unknown[:MAX_NAMED]
                      if (match := difflib.get_close_matches(name, fields, n=1, cutoff=0.8))), "")
        parts.append(f"unknown field{'s' * (len(unknown) > 1)} {names}{more}{where} ({close}allowed: "
                     f"{', '.join(fields)})")
    for error in others[:MAX_NAMED]:
        field = _cut(".".join(str(p) for p in error["loc"])) or "input"
        if error["type"] == "missing":
            parts.append(f"{field} is required")
        else:
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "string_pattern_mismatch" and error["loc"][0] == "loras":
                message = "a LoRA name is its file's name without .safetensors: letters, digits, '.', '_', '-', " \
                          "not starting with a dot"
            elif error["type"] == "string_pattern_mismatch" and error["loc"][0] == "ip_adapter":
                message = "an IP-Adapter name is its file's name without .safetensors: letters, digits, '.', '_', " \
                          "'-', not starting with a dot"
            elif error["type"] == "string_pattern_mismatch" and error["loc"][0] == "controlnets":
                message = "a ControlNet name is its folder's name: letters, digits, '.', '_', '-', not starting " \
                          "with a dot"
            got = "" if field == "input" else f" (got {_cut(repr(error.get('input')))})"
            parts.append(f"{field}: {message}{got}")
    if len(others) > MAX_NAMED:
        parts.append(f"{len(others) - MAX_NAMED} more problem(s)")
    return "Invalid input: " + "; ".join(parts) + "."


def _cut(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
