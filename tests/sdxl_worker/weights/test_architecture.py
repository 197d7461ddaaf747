"""Tensor names and shapes against the config: the shipped SDXL manifest, the meta device, and the comparison."""

from __future__ import annotations

import json

import pytest

from dev.synthetic_volume import component_config
from dev.tensor_manifest import build_manifest
from sdxl_worker.weights.architecture import MANIFEST, compare, expected_from_manifest


def test_the_shipped_manifest_is_what_the_pinned_libraries_build() -> None:
    assert json.loads(MANIFEST.read_text()) == json.loads(json.dumps(build_manifest()))


def test_sdxl_configs_use_the_manifest_and_others_do_not() -> None:
    unet = component_config("full", "unet")
    assert len(expected_from_manifest("unet", "UNet2DConditionModel", unet)) == 1680
    # A fine-tune's config often differs only in what shapes nothing: still SDXL's tensors.
    vae = {**component_config("full", "vae"), "force_upcast": False, "_name_or_path": "photonicfusion"}
    assert expected_from_manifest("vae", "AutoencoderKL", vae) is not None
    assert expected_from_manifest("unet", "UNet2DConditionModel", {**unet, "cross_attention_dim": 1024}) is None
    assert expected_from_manifest("unet", "UNet2DModel", unet) is None
    assert expected_from_manifest("unet", "UNet2DConditionModel", component_config("tiny", "unet")) is None


@pytest.fixture(scope="module")
def text_encoder() -> dict:
    return expected_from_manifest("text_encoder", "CLIPTextModel", component_config("full", "text_encoder"))


def test_names_as_the_libraries_load_them(text_encoder: dict) -> None:
    """transformers 5 drops CLIPTextModel's old `text_model.` prefix and its stored position_ids."""
    assert compare(text_encoder, dict(text_encoder)) is None
    saved_by_transformers_4 = {f"text_model.{name}": shape for name, shape in text_encoder.items()}
    saved_by_transformers_4["text_model.embeddings.position_ids"] = (1, 77)
    assert compare(text_encoder, saved_by_transformers_4) is None


def test_missing_extra_and_misshaped_tensors_are_counted_and_named(text_encoder: dict) -> None:
    found = dict(text_encoder)
    missing = sorted(found)[0]
    del found[missing]
    found["text_model.encoder.layers.99.mlp.fc1.weight"] = (3072, 768)
    found["final_layer_norm.weight"] = (1024,)
    assert compare(text_encoder, found) == (
        f"1 tensor(s) the config needs are missing, e.g. {missing}; "
        "1 tensor(s) the config has no place for, e.g. text_model.encoder.layers.99.mlp.fc1.weight; "
        "1 tensor(s) of another shape, e.g. final_layer_norm.weight is [1024], the config makes it [768]")
