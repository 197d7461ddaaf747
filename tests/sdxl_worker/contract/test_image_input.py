"""A job's input image and mask: every limit checked before decoding, one sentence each, resized as documented."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from sdxl_worker.contract.image_input import decode_image, load_inputs
from sdxl_worker.contract.job_schema import JobInputError, parse_job_input

MB = 1_000_000


def encoded(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def png_header_only(width: int, height: int) -> str:
    """A PNG whose header declares width x height and holds no pixels: a decompression bomb's first bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) +
                            chunk(b"IEND", b"")).decode()


def job(**fields: object) -> object:
    return parse_job_input({"prompt": "a lighthouse", "num_inference_steps": 4, **fields})


PHOTO = Image.new("RGB", (300, 260), (200, 120, 40))


@pytest.mark.parametrize(("text", "words"), [
    ("https://example.com/cat.png", "image is a URL; the worker fetches nothing"),
    ("data:image/png;base64,@@@", "image is not base64"),
    (base64.b64encode(b"GIF89a not allowed").decode(), "image is not a PNG, JPEG or WebP image"),
    (encoded(PHOTO)[:300], "image cannot be decoded"),
    (png_header_only(60000, 60000), "declares more pixels than Pillow decodes safely"),
    (png_header_only(3000, 3000), "image is 3000x3000 = 9,000,000 pixels, over this endpoint's limit of 2,359,296"),
    (encoded(Image.new("RGB", (1500, 1500), 0), "BMP"), "image is not a PNG, JPEG or WebP image"),
])
def test_each_bad_image_is_one_sentence(text: str, words: str) -> None:
    with pytest.raises(JobInputError, match=words.replace("(", r"\(")) as caught:
        decode_image("image", text, 10 * MB, 1536 * 1536)
    assert str(caught.value).startswith("Invalid input: image ") and str(caught.value).count(".") <= 3


def test_over_the_encoded_size_is_refused_before_decoding() -> None:
    with pytest.raises(JobInputError, match=r"image is over MAX_INPUT_IMAGE_MB \(1 MB encoded\)"):
        decode_image("image", "A" * (2 * MB), 1 * MB, 1536 * 1536)


def test_a_data_url_and_each_format_decode() -> None:
    for fmt in ("PNG", "JPEG", "WEBP"):
        image = decode_image("image", f"data:image/{fmt.lower()};base64,{encoded(PHOTO, fmt)}", MB, 1536 * 1536)
        assert image.size == (300, 260) and image.format == fmt


def test_sides_are_cut_to_multiples_of_8_and_width_height_resize() -> None:
    inputs = load_inputs(job(image=encoded(PHOTO)), 10 * MB, 1536 * 1536)
    assert (inputs.width, inputs.height, inputs.image.size, inputs.mask) == (296, 256, (296, 256), None)
    resized = load_inputs(job(image=encoded(PHOTO), mask=encoded(Image.new("L", (300, 260), 255)), width=512,
                              height=384), 10 * MB, 1536 * 1536)
    assert resized.image.size == resized.mask.size == (512, 384)


def test_a_mask_of_another_size_and_an_image_too_small() -> None:
    with pytest.raises(JobInputError, match="mask is 100x100, the image 300x260: they must be the same size"):
        load_inputs(job(image=encoded(PHOTO), mask=encoded(Image.new("L", (100, 100)))), 10 * MB, 1536 * 1536)
    with pytest.raises(JobInputError, match="image is 200x200: each side must be 256-2048 pixels"):
        load_inputs(job(image=encoded(Image.new("RGB", (200, 200)))), 10 * MB, 1536 * 1536)


@pytest.mark.parametrize(("size", "fields", "words"), [
    ((1536, 1536), {"width": 2048}, "image would be generated at 2048x1536 (width from the job, the rest from the "
                                    "image) = 3,145,728 pixels, over this endpoint's limit of 2,359,296"),
    ((2048, 96), {"width": 1024}, "image would be generated at 1024x96 (width from the job, the rest from the image): "
                                  "each side must be 256-2048 pixels"),
    ((96, 2048), {"height": 1024}, "image would be generated at 96x1024 (height from the job"),
    ((1536, 1536), {"width": 2048, "height": 1536}, "image would be generated at 2048x1536 = 3,145,728 pixels"),
])
def test_one_side_from_the_job_keeps_every_bound(size: tuple[int, int], fields: dict, words: str) -> None:
    """A side the job gives and a side the image gives make the size generated: MAX_PIXELS and the minimum side
    hold for it (a 1536x1536 image with only `width: 2048` once ran as 2048x1536, over the cap)."""
    picture = encoded(Image.new("RGB", size, (10, 20, 30)), "JPEG")
    with pytest.raises(JobInputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load_inputs(job(image=picture, **fields), 10 * MB, 1536 * 1536)
    assert load_inputs(job(image=picture, width=1024, height=1024), 10 * MB, 1536 * 1536).image.size == (1024, 1024)


@pytest.mark.parametrize(("fields", "words"), [
    ({"strength": 0.5}, "strength and mask apply with an image only"),
    ({"image": "x", "strength": 0.0}, "strength: Input should be greater than 0"),
    ({"image": "x", "strength": 1.5}, "strength: Input should be less than or equal to 1"),
    ({"image": "x", "strength": 0.1}, "num_inference_steps x strength is 0.40: it must reach at least 1 step"),
])
def test_strength_bounds(fields: dict, words: str) -> None:
    with pytest.raises(JobInputError, match=words):
        job(**fields)


def hostile_images() -> list[tuple[str, bytes]]:
    """Pillow's own writers' output (text and ICC chunks inflating past Pillow's caps, EXIF) and seeded
    mutations of it: flipped, cut and inserted bytes, and every image cut short."""
    import random

    from PIL import PngImagePlugin

    rng = random.Random(26)
    picture = Image.effect_noise((64, 48), 40).convert("RGB")
    text = PngImagePlugin.PngInfo()
    text.add_text("comment", "a" * 3_000_000, zip=True)
    writes = {"png": {"format": "PNG"}, "jpeg": {"format": "JPEG"}, "webp": {"format": "WEBP"},
              "png-text": {"format": "PNG", "pnginfo": text},
              "png-icc": {"format": "PNG", "icc_profile": bytes(3_000_000)},
              "jpeg-icc-exif": {"format": "JPEG", "icc_profile": bytes(300_000), "exif": b"Exif\0\0" + bytes(900)}}
    cases = []
    for name, options in writes.items():
        buffer = io.BytesIO()
        picture.save(buffer, **options)
        data = buffer.getvalue()
        cases.append((name, data))
        cases += [(f"{name} cut at {cut}", data[:cut]) for cut in range(8, len(data), max(1, len(data) // 40))]
        for i in range(120):
            mutated = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                at, roll = rng.randrange(len(mutated)), rng.random()
                if roll < 0.5:
                    mutated[at] = rng.randrange(256)
                elif roll < 0.8:
                    del mutated[at:at + rng.randint(1, 64)]
                else:
                    mutated[at:at] = rng.randbytes(rng.randint(1, 16))
            cases.append((f"{name} mutation {i}", bytes(mutated)))
    return cases


def test_hostile_image_bytes_decode_or_are_one_sentence() -> None:
    """Whatever the bytes, the job gets an image or one sentence naming the field, never a decoder's exception
    (a PNG text chunk inflating to 3 MB once answered `ValueError: Decompressed data too large` with a traceback)."""
    refused = 0
    for name, data in hostile_images():
        for field in ("image", "mask"):
            try:
                decode_image(field, base64.b64encode(data).decode(), 10 * MB, 1536 * 1536).convert("RGB")
            except JobInputError as exc:
                refused += 1
                assert str(exc).startswith(f"Invalid input: {field} ") and len(str(exc)) < 400, (name, exc)
    assert refused > 500
