"""Encode generated images in memory (nothing is written to disk per job); delivery makes them base64 or uploads
them as they are.

PNG is written at zlib level 1, not Pillow's default 6: about half the encode time for files about a tenth
larger (benchmarks/RESULTS.md). The encode is part of every job's latency, on a GPU job of about a second,
while the extra bytes of base64 take milliseconds to send. It stays lossless.
"""

from __future__ import annotations

import io
from typing import Any

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
PNG_COMPRESS_LEVEL = 1


def encode_image(image: Any, output_format: str, quality: int) -> bytes:
    """The image's file bytes in `output_format` (quality is ignored for lossless png)."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, format=PIL_FORMATS[output_format], quality=quality)
    return buffer.getvalue()
