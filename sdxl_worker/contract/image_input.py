"""A job's input image and mask: decoded from base64 or a data: URL, in memory, within the endpoint's limits.

What arrives is a user's bytes, so every limit applies before the pixels are decoded: the encoded size
(MAX_INPUT_IMAGE_MB), the formats (PNG, JPEG, WebP only, whatever the bytes claim), and the pixel count from
the header (MAX_PIXELS, checked before `load()`; Pillow's own decompression-bomb guard stays on as a
backstop). A URL is refused: the worker fetches nothing. Each failure is one sentence naming the field.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from dataclasses import dataclass
from typing import Any

from sdxl_worker.contract.job_schema import MAX_SIDE, MIN_SIDE, JobInput, JobInputError
from sdxl_worker.sentences import bounded

FORMATS = ("PNG", "JPEG", "WEBP")
# What Pillow's parsers raise on bytes that are not the image they claim to be: OSError ("Truncated File Read", "could
# not create decoder object"), ValueError (a text or ICC chunk inflating past its cap), and the ones its own
# Image.open treats as "not this format" (SyntaxError, struct.error, IndexError, TypeError, EOFError).
DECODER_ERRORS = (OSError, ValueError, SyntaxError, struct.error, IndexError, TypeError, EOFError)
DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


@dataclass(frozen=True)
class InputImages:
    """The decoded image (RGB) and mask (L, white = repaint), both at the size the job generates."""

    image: Any
    mask: Any | None
    width: int
    height: int


def load_inputs(job: JobInput, max_bytes: int, max_pixels: int) -> InputImages | None:
    """The job's image and mask at the generation size, or None for a text-to-image job."""
    if job.image is None:
        return None
    image = decode_image("image", job.image, max_bytes, max_pixels).convert("RGB")
    mask = None
    if job.mask is not None:
        mask = decode_image("mask", job.mask, max_bytes, max_pixels).convert("L")
        if mask.size != image.size:
            raise _refusal("mask", f"is {mask.width}x{mask.height}, the image {image.width}x{image.height}: "
                                   "they must be the same size")
    given = {"width", "height"} & job.model_fields_set
    width = job.width if "width" in given else image.width // 8 * 8
    height = job.height if "height" in given else image.height // 8 * 8
    # The size generated, whichever sides came from the job and which from the image, within every bound a
    # text-to-image job has (the schema could check a side alone only against the other's default).
    size = f"{width}x{height}" + (f" ({' and '.join(sorted(given))} from the job, the rest from the image)"
                                  if len(given) == 1 else "")
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        what = f"is {image.width}x{image.height}" if not given else f"would be generated at {size}"
        raise _refusal("image", f"{what}: each side must be {MIN_SIDE}-{MAX_SIDE} pixels "
                                "(send width and height to resize it)")
    if width * height > max_pixels:
        raise _refusal("image", f"would be generated at {size} = {width * height:,} pixels, over this endpoint's "
                                f"limit of {max_pixels:,} (MAX_PIXELS): send a smaller width and height")
    if (width, height) != image.size:
        from PIL import Image

        image = image.resize((width, height), Image.Resampling.LANCZOS)
        mask = mask.resize((width, height), Image.Resampling.NEAREST) if mask is not None else None
    return InputImages(image, mask, width, height)


def decode_image(field: str, text: str, max_bytes: int, max_pixels: int) -> Any:
    """One field's image, decoded; JobInputError with one sentence when it is not one the worker accepts."""
    from PIL import Image, UnidentifiedImageError

    if text.lstrip().lower().startswith(("http://", "https://", "ftp://", "file:")):
        raise _refusal(field, "is a URL; the worker fetches nothing: send the image itself, base64 or a data: URL")
    payload = DATA_URL.sub("", text.strip(), count=1)
    if len(payload) > (max_bytes + 2) // 3 * 4 + 4:
        raise _refusal(field, f"is over MAX_INPUT_IMAGE_MB ({max_bytes / 1e6:g} MB encoded)")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _refusal(field, "is not base64 (or a data: URL)") from None
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise _refusal(field, "is not a PNG, JPEG or WebP image") from None
    except Image.DecompressionBombError:
        raise _refusal(field, f"declares more pixels than Pillow decodes safely, far over MAX_PIXELS "
                              f"({max_pixels:,})") from None
    except DECODER_ERRORS as exc:  # the header's chunks are corrupt, cut short or inflate past Pillow's caps
        raise _refusal(field, f"cannot be decoded ({bounded(exc)})") from None
    if image.width * image.height > max_pixels:
        raise _refusal(field, f"is {image.width}x{image.height} = {image.width * image.height:,} pixels, over "
                              f"this endpoint's limit of {max_pixels:,} (MAX_PIXELS)")
    try:
        image.load()
    except DECODER_ERRORS as exc:  # truncated or corrupt pixel data
        raise _refusal(field, f"cannot be decoded ({bounded(exc)})") from None
    return image


def _refusal(field: str, words: str) -> JobInputError:
    return JobInputError(f"Invalid input: {field} {words}.")
