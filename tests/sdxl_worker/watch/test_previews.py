"""Previews: the linear colour map with no weights, a tiny decoder (diffusers' AutoencoderTiny layout, as taesdxl
is published) when the folder holds a usable one, and one logged reason, never a failed job, when it does not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dev.tiny_decoder import write_tiny_decoder
from sdxl_worker.watch.previews import PREVIEW_SIDE, SDXL_LATENT_RGB_BIAS, Previewer, tiny_decoder_problem
from sdxl_worker.weights.files import MAX_TEXT_BYTES
from tests.helpers import decode


def tiny_decoder(folder: Path) -> Path:
    return write_tiny_decoder(folder, narrow=True)


def test_the_linear_map_needs_no_weights_and_keeps_the_images_side_by_side() -> None:
    previewer = Previewer.load(Path("/nonexistent/taesdxl"), "cpu", torch.float32)
    assert previewer.kind == "linear"
    image = decode(previewer.jpeg(torch.zeros(3, 4, 128, 96)))  # 3 images of 768x1024
    assert image.format == "JPEG" and image.size == (PREVIEW_SIDE, round(PREVIEW_SIDE * 128 / 288))
    # Zero latents are the fit's bias, as ComfyUI's previews draw them (within JPEG's rounding).
    expected = [(bias + 1) * 127.5 for bias in SDXL_LATENT_RGB_BIAS]
    assert np.abs(np.asarray(image.convert("RGB")).mean(axis=(0, 1)) - expected).max() < 3


def test_only_the_first_four_images_are_previewed() -> None:
    image = decode(Previewer().jpeg(torch.randn(8, 4, 16, 16)))
    assert image.size == (64, 16)


def test_a_tiny_decoder_draws_the_previews(tmp_path: Path) -> None:
    folder = tiny_decoder(tmp_path / "taesdxl")
    assert tiny_decoder_problem(folder) is None
    previewer = Previewer.load(folder, "cpu", torch.float32)
    assert previewer.kind == "taesdxl"
    image = decode(previewer.jpeg(torch.randn(2, 4, 32, 32)))  # decoded at 256x256 each, then fitted
    assert image.size == (PREVIEW_SIDE, PREVIEW_SIDE // 2)
    assert image.size != decode(Previewer().jpeg(torch.randn(2, 4, 32, 32))).size


@pytest.mark.parametrize(("damage", "words"), [
    (lambda f: (f / "config.json").unlink(), "has no config.json"),
    (lambda f: (f / "config.json").write_text("{"), "is not readable JSON"),
    (lambda f: (f / "config.json").write_text(" " * (MAX_TEXT_BYTES + 1)), "larger than any config"),
    (lambda f: (f / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"})), "is no AutoencoderTiny"),
    (lambda f: (f / "config.json").write_text(json.dumps({"_class_name": "AutoencoderTiny", "latent_channels": 16})),
     "decodes 16 latent channels, not SDXL's 4"),
    (lambda f: (f / "diffusion_pytorch_model.safetensors").unlink(), "has no diffusion_pytorch_model.safetensors"),
    (lambda f: (f / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 7), "diffusion_pytorch_model"),
])
def test_an_unusable_tiny_decoder_is_one_logged_reason_and_the_linear_map(
        tmp_path: Path, damage: object, words: str, caplog: pytest.LogCaptureFixture) -> None:
    folder = tiny_decoder(tmp_path / "taesdxl")
    damage(folder)
    assert words in tiny_decoder_problem(folder)
    with caplog.at_level("INFO"):
        assert Previewer.load(folder, "cpu", torch.float32).kind == "linear"
    assert words in caplog.text and "linear colour map" in caplog.text


def test_a_tiny_decoder_whose_tensors_differ_from_its_config_is_the_linear_map(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tiny_decoder(tmp_path / "taesdxl")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "decoder_block_out_channels": [16, 16, 16, 16]}))
    with caplog.at_level("INFO"):
        assert Previewer.load(folder, "cpu", torch.float32).kind == "linear"
    assert "does not load" in caplog.text
