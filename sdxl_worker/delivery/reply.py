"""The reply, typed (`Reply`: README's output table is generated from it), and its delivery: the images stay encoded
bytes until here, then go back as base64 or are uploaded to the bucket as they are.

RunPod drops a job result over its payload limit (documented: 10 MB for /run, 20 MB for /runsync): the caller
then sees the job COMPLETED with no output, or an error on job-done. So the worker measures the reply it is about
to return, as JSON, before returning it. Over RESULT_MAX_MB (default 9, under both limits with room for RunPod's
envelope): with a bucket configured and no `output` asked for, the images go to the bucket and the reply carries
URLs and says why; otherwise the job fails with the size, the limit and what to change. A reply RunPod would drop
is never returned. What can be known before generating is refused before it: `"output": "url"` without a bucket,
and PNGs whose estimated size is over the limit with no bucket to take them (`refusal_ahead`).
"""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from sdxl_worker.delivery.bucket import Bucket

RUNPOD_LIMITS = "10 MB on /run, 20 MB on /runsync"
# A PNG's size estimated before generating, in bytes a pixel: below the 2.56 the demo model's noise measures
# (zlib level 1), as smooth images compress further; a job refused on it can insist with `"output": "base64"`.
PNG_BYTES_PER_PIXEL = 1.5
NEEDS_BUCKET = ('output "url" needs a bucket: set BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, '
                "BUCKET_SECRET_ACCESS_KEY and BUCKET_NAME on the endpoint.")


class AppliedLora(BaseModel):
    name: str = Field(description="The LoRA's name, as the job gave it.")
    scale: float = Field(description="The scale it was applied at.")


class AppliedControlNet(BaseModel):
    name: str = Field(description="The ControlNet's name, as the job gave it.")
    scale: float = Field(description="How strongly it steered.")
    start: float = Field(description="The fraction of the steps where it started.")
    end: float = Field(description="The fraction of the steps where it stopped.")
    preprocess: str = Field(description="`none`, or `canny`: the worker drew the control image's edges.")


class AppliedIpAdapter(BaseModel):
    name: str = Field(description="The IP-Adapter's name, as the job gave it.")
    scale: float = Field(description="How strongly the image prompted.")


class PromptTokens(BaseModel):
    prompt: int = Field(description="Tokens of the prompt, every one encoded (75-token chunks past CLIP's 77).")
    negative_prompt: int | None = Field(None, description="Tokens of the negative prompt, when the job has one.")
    dropped: int = Field(0, description="Tokens cut off: always 0.")


class Timings(BaseModel):
    inference_s: float = Field(description="Sampling and decoding.")
    encode_s: float = Field(description="Encoding the images (PNG, JPEG, WebP).")
    total_s: float = Field(description="The job in the worker, from the request to the reply.")
    upload_s: float | None = Field(None, description="With bucket URLs: the upload.")
    switch_s: float | None = Field(None, description=(
        "Making the job's model the one on the device: 0 when it already was; with MODELS, a move from host "
        "memory, or a read from the volume for a model not loaded."))
    graph: Literal["replayed", "captured", "eager"] | None = Field(None, description=(
        "How the UNet ran: `replayed` its CUDA graph for this shape, `captured` one (a shape's first job, two UNet "
        "calls more), `eager` where no graph can hold the job (a LoRA the merge cannot take, such as DoRA)."))


class ModelInfo(BaseModel):
    name: str = Field(description="The job's model: its name in MODELS, or `default` (MODEL_PATH alone).")
    variant: str = Field(description=(
        "The weight set loaded: `fp16`, `standard` or `mixed`; `stack-test`: random weights (STACK_TEST=1, no "
        "volume)."))
    dtype: str = Field(description="The weights' dtype.")
    device: str = Field(description="Where they run.")
    source: str | None = Field(None, description=(
        "Where the weights were read from: the model folder, or `ORG/NAME@COMMIT` from a model cache; absent for "
        "`stack-test`."))


class Reply(BaseModel):
    """What a job that succeeded answers."""

    images: list[str] = Field(description="One per seed: base64 of the encoded image, or its bucket URL.")
    output: Literal["base64", "url"] = Field(description="Which `images` holds.")
    output_note: str | None = Field(None, description="Why the worker chose URLs itself (the reply was too large).")
    seed: int = Field(description="The first image's seed.")
    seeds: list[int] = Field(description="Each image's seed: image i alone is `seed = seeds[i]`, `num_images = 1`.")
    width: int = Field(description="Pixels generated (the input image's for image to image).")
    height: int = Field(description="Pixels generated.")
    mode: Literal["txt2img", "img2img", "inpaint"] = Field(description="Which pipeline ran.")
    loras: list[AppliedLora] = Field(description="The LoRAs applied, with their scales.")
    controlnets: list[AppliedControlNet] = Field(description="The ControlNets that steered the job.")
    embeddings: list[str] = Field(description="The textual-inversion embeddings the prompts used, by name.")
    ip_adapter: AppliedIpAdapter | None = Field(None, description="The image prompt's adapter, when the job had one.")
    prompt_tokens: PromptTokens = Field(description="How many tokens each prompt had; none dropped.")
    format: str = Field(description="`png`, `jpeg` or `webp`.")
    timings: Timings = Field(description="Seconds.")
    model: ModelInfo = Field(description="The loaded model.")


class DeliveryError(ValueError):
    """The images cannot be delivered as asked; the message is the one sentence for the caller."""


def reply_bytes(reply: dict[str, Any]) -> int:
    """The reply's size as RunPod sends it on, its JSON encoding, with each image (encoded bytes) as base64: base64
    text needs no escaping in JSON, so each image adds exactly its base64 length."""
    images = reply["images"]
    return len(json.dumps({**reply, "images": [""] * len(images)}).encode()) + sum(
        4 * math.ceil(len(image) / 3) for image in images)


def deliver(reply: dict[str, Any], job_id: str, output: str | None, limit_mb: int,
            bucket: Bucket | None) -> dict[str, Any]:
    """`reply` (its images encoded bytes) as it goes back: base64 images, or bucket URLs in their place."""
    size, limit = reply_bytes(reply), limit_mb * 1_000_000
    over = size > limit
    if output == "url" or (output is None and over and bucket is not None):
        if bucket is None:
            raise DeliveryError(NEEDS_BUCKET)
        started = time.perf_counter()
        uploads = bucket.upload(job_id, reply["images"], reply["seeds"], reply["format"])
        sent = {**reply, "images": [u.url for u in uploads], "output": "url",
                "timings": {**reply["timings"], "upload_s": round(time.perf_counter() - started, 3)}}
        if output is None:
            sent["output_note"] = (f"The reply would have been {size / 1e6:.1f} MB, over RESULT_MAX_MB={limit_mb}: "
                                   "the images were uploaded to the bucket.")
        return typed(sent)
    if over:
        remedy = 'send output "url"' if bucket is not None else "configure a bucket (BUCKET_*) to get URLs"
        raise DeliveryError(
            f"The reply would be {size / 1e6:.1f} MB, over RESULT_MAX_MB={limit_mb} (RunPod drops results over "
            f"{RUNPOD_LIMITS}): use output_format jpeg or webp, a lower quality, fewer images or a smaller size, "
            f"or {remedy}.")
    return typed({**reply, "images": [base64.b64encode(image).decode("ascii") for image in reply["images"]],
                  "output": "base64"})


def refusal_ahead(output: str | None, output_format: str, images: int, width: int, height: int, limit_mb: int,
                  bucket: Bucket | None) -> str | None:
    """Why a job cannot be delivered, known before it generates; None when only its reply's size will tell."""
    if output == "url" and bucket is None:
        return NEEDS_BUCKET
    if output is not None or bucket is not None or output_format != "png":
        return None
    estimate = images * math.ceil(width * height * PNG_BYTES_PER_PIXEL / 3) * 4
    if estimate <= limit_mb * 1_000_000:
        return None
    return (f"{images} PNG(s) of {width}x{height} would make a reply of about {estimate / 1e6:.0f} MB (estimated at "
            f"{PNG_BYTES_PER_PIXEL:g} bytes a pixel), over RESULT_MAX_MB={limit_mb} (RunPod drops results over "
            f"{RUNPOD_LIMITS}): use output_format jpeg or webp, fewer images or a smaller size, configure a bucket "
            '(BUCKET_*) to get URLs, or send output "base64" to generate it and measure.')


def typed(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply checked against `Reply` and as JSON-ready values, the optional fields left out when unset."""
    return Reply.model_validate(reply).model_dump(exclude_none=True)
