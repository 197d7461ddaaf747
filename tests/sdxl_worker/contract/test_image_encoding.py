"""Images are encoded in memory: PNG lossless and fast to write, JPEG/WebP at the asked quality."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from sdxl_worker.contract.image_encoding import encode_image


def _picture() -> Image.Image:
    """Smooth gradients with some grain, like a generated picture rather than pure noise."""
    y, x = np.mgrid[0:256, 0:256]
    grain = np.random.default_rng(0).normal(0, 4, (256, 256))
    channels = [x + grain, y + grain, (x + y) / 2 + grain]
    return Image.fromarray(np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8))


def _decode(data: bytes) -> bytes:
    assert isinstance(data, bytes)  # base64 only at delivery
    return data


def test_png_is_lossless() -> None:
    image = _picture()
    back = Image.open(io.BytesIO(_decode(encode_image(image, "png", 90))))
    assert back.format == "PNG"
    assert np.array_equal(np.asarray(back.convert("RGB")), np.asarray(image))


def test_png_is_written_at_the_fastest_zlib_level() -> None:
    """The level is part of every job's latency (see the module's figures); zlib records it in each stream."""
    data = _decode(encode_image(_picture(), "png", 90))
    offset, idat = 8, b""
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IDAT":
            idat += data[offset + 8:offset + 8 + length]
        offset += 12 + length
    assert idat[1] >> 6 == 0, "FLEVEL 0: compressor used its fastest algorithm"
    assert zlib.decompress(idat)  # and the stream is whole


def test_lossy_formats_follow_the_quality_asked() -> None:
    image = _picture()
    for output_format, pil_format in (("jpeg", "JPEG"), ("webp", "WEBP")):
        low, high = (_decode(encode_image(image, output_format, q)) for q in (20, 95))
        assert Image.open(io.BytesIO(high)).format == pil_format
        assert len(low) < len(high)
