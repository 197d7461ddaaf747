"""Encode generated images for the JSON reply, in memory: nothing is written to disk per job."""

from __future__ import annotations

import base64
import io
from typing import Any

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(image: Any, output_format: str, quality: int) -> str:
    """Return the image as base64 text in `output_format` (quality is ignored for lossless png)."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format=PIL_FORMATS[output_format], quality=quality)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
