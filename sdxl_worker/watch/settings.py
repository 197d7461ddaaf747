"""The operator's settings for stopping and watching jobs; README's environment rows."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PREVIEW_VAE_DIR = "/runpod-volume/taesdxl"


class WatchSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    job_timeout_s: float | None = Field(None, gt=0, le=86_400, allow_inf_nan=False, description=(
        "A job still sampling after this many seconds stops at its next step and answers one sentence (unset: no "
        "bound but RunPod's own execution timeout, which also stops it at the next step)."))
    stream: bool = Field(False, description=(
        "Stream each job's progress updates (and the previews a job asks for) through RunPod's `/stream`; `/run` and "
        "`/runsync` then answer the list of them, the reply last. Off: they go to the job's status while it runs."))
    preview_vae_dir: str = Field(DEFAULT_PREVIEW_VAE_DIR, min_length=1, description=(
        "A tiny SDXL decoder for previews (madebyollin's `taesdxl`, diffusers' `AutoencoderTiny` folder); without "
        "one, previews are a linear map of the latents to colours, no weights needed."))
