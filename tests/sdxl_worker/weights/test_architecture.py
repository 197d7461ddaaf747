"""Tensor names and shapes against the config: the shipped SDXL manifest, the meta device, the naming rules each
library applies (published SDXL files' names included), and the comparison."""

from __future__ import annotations

import json
import re

import pytest

from dev.synthetic_volume import LAYOUTS, component_config, stored_tensors
from dev.tensor_manifest import build_manifest
from sdxl_worker.volume.sdxl import MODELS
from sdxl_worker.weights.architecture import (
    MANIFEST,
    compare,
    expected_from_manifest,
    expected_from_meta,
    map_names,
    meta_model,
    rules_of,
)


def test_the_shipped_manifest_is_what_the_pinned_libraries_build() -> None:
    """Shapes and naming rules alike: a library upgrade that renames tensors fails here first."""
    assert json.loads(MANIFEST.read_text()) == json.loads(json.dumps(build_manifest()))


def test_sdxl_configs_use_the_manifest_and_others_do_not() -> None:
    unet = component_config("full", "unet")
    assert len(expected_from_manifest("unet", "UNet2DConditionModel", unet).shapes) == 1680
    # A fine-tune's config often differs only in what shapes nothing: still SDXL's tensors.
    vae = {**component_config("full", "vae"), "force_upcast": False, "_name_or_path": "photonicfusion"}
    assert expected_from_manifest("vae", "AutoencoderKL", vae) is not None
    assert expected_from_manifest("unet", "UNet2DConditionModel", {**unet, "cross_attention_dim": 1024}) is None
    assert expected_from_manifest("unet", "UNet2DModel", unet) is None
    assert expected_from_manifest("unet", "UNet2DConditionModel", component_config("tiny", "unet")) is None


def library_outcome(model, names: list[str], single_file: bool) -> tuple[dict[str, str], set[str]]:
    """What the library's own loading code does with each stored name: the model name of each it loads, and the
    stored names it reports as unexpected (transformers' renamings with its legacy ones, its base-model prefix and
    its filter of dropped buffers; diffusers' deprecated-attention renames and its ignore patterns)."""
    expected = model.state_dict()
    if type(model).__module__.startswith("transformers."):
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key
        from transformers.utils.loading_report import LoadStateDictInfo

        mapping = get_model_conversion_mapping(model)
        renamings = [t for t in mapping if isinstance(t, WeightRenaming)]
        converters = [t for t in mapping if isinstance(t, WeightConverter)]
        loaded, unmatched = {}, []
        for name in names:
            renamed, _ = rename_source_key(name, renamings, converters, model.base_model_prefix, expected)
            if renamed not in expected and name in expected:
                renamed, _ = rename_source_key(name, [], [], model.base_model_prefix, expected)
            if renamed in expected:
                loaded[name] = renamed
            else:
                unmatched.append((renamed, name))
        info = LoadStateDictInfo(missing_keys=set(), unexpected_keys={r for r, _ in unmatched}, mismatched_keys=set(),
                                 conversion_errors={}, error_msgs=[], skipped_pp_keys=set())
        model._adjust_missing_and_unexpected_keys(info)
        return loaded, {name for renamed, name in unmatched if renamed in info.unexpected_keys}
    state = {name: name for name in names}
    if single_file:
        model._fix_state_dict_keys_on_load(state)
    patterns = type(model)._keys_to_ignore_on_load_unexpected or []
    return ({stored: key for key, stored in state.items() if key in expected},
            {stored for key, stored in state.items() if key not in expected
             and not any(re.search(p, key) for p in patterns)})


def name_corpus(component: str, model) -> dict[str, list[str]]:
    """Files' name lists for the component: each layout this project knows, the same with prefixes added, taken
    away or doubled, and names no layout should get past."""
    junk = ["text_model.embeddings.position_ids", "embeddings.position_ids", "clip.embeddings.position_ids",
            "encoder.layers.0.LayerNorm.gamma", "unexpected.weight", "text_model.unexpected.weight"]
    files = {}
    for layout in LAYOUTS:
        names = sorted(stored_tensors(component, model.state_dict(), layout))
        files[layout] = names + junk
        files[f"{layout}, prefixed"] = [f"text_model.{n}" for n in names]
        files[f"{layout}, unprefixed"] = [n.removeprefix("text_model.") for n in names]
        files[f"{layout}, clip"] = [f"clip.{n}" for n in names]
    return files


@pytest.mark.parametrize("single_file", [True, False], ids=["single-file", "sharded"])
@pytest.mark.parametrize("component", list(MODELS))
def test_the_rules_name_tensors_as_the_libraries_load_them(component: str, single_file: bool) -> None:
    """For every stored name, published or not: loaded under the same model name, or dropped, or unexpected,
    exactly as the library's own loading code decides."""
    model = meta_model(*MODELS[component], component_config("tiny", component))
    complete = 0
    for what, names in name_corpus(component, model).items():
        loaded, unexpected = library_outcome(model, names, single_file)
        ours = map_names(rules_of(model), names, model.state_dict(), single_file)
        assert (ours.names, set(ours.unexpected)) == (loaded, unexpected), what
        complete += set(loaded.values()) == set(model.state_dict())
    assert complete >= 3  # at least every layout as written loads whole


@pytest.fixture(scope="module")
def text_encoder():
    return expected_from_manifest("text_encoder", "CLIPTextModel", component_config("full", "text_encoder"))


def test_published_names_match_and_the_manifest_rules_are_the_librarys(text_encoder) -> None:
    """The published SDXL text encoder (transformers 4: `text_model.`, sometimes a stored position_ids)."""
    assert compare(text_encoder, dict(text_encoder.shapes)) is None
    saved_by_transformers_4 = {f"text_model.{name}": shape for name, shape in text_encoder.shapes.items()}
    assert compare(text_encoder, saved_by_transformers_4) is None
    saved_by_transformers_4["text_model.embeddings.position_ids"] = (1, 77)
    assert compare(text_encoder, saved_by_transformers_4) is None
    meta = expected_from_meta("transformers", "CLIPTextModel", component_config("full", "text_encoder"))
    assert meta == text_encoder


def test_deprecated_attention_names_are_renamed_in_single_files_only() -> None:
    """As diffusers: the renames apply to an unsharded file; in a sharded set the old names are unexpected."""
    vae = expected_from_manifest("vae", "AutoencoderKL", component_config("full", "vae"))
    old = {name.replace(".to_q.", ".query."): shape for name, shape in vae.shapes.items()}
    assert compare(vae, old, single_file=True) is None
    assert compare(vae, old, single_file=False) == (
        "4 tensor(s) the config needs are missing, e.g. decoder.mid_block.attentions.0.to_q.bias; "
        "4 tensor(s) the config has no place for, e.g. decoder.mid_block.attentions.0.query.bias")


def test_missing_extra_and_misshaped_tensors_are_counted_and_named(text_encoder) -> None:
    found = dict(text_encoder.shapes)
    missing = sorted(found)[0]
    del found[missing]
    found["text_model.encoder.layers.99.mlp.fc1.weight"] = (3072, 768)
    found["final_layer_norm.weight"] = (1024,)
    assert compare(text_encoder, found) == (
        f"1 tensor(s) the config needs are missing, e.g. {missing}; "
        "1 tensor(s) the config has no place for, e.g. text_model.encoder.layers.99.mlp.fc1.weight; "
        "1 tensor(s) of another shape, e.g. final_layer_norm.weight is [1024], the config makes it [768]")


def test_a_tensor_stored_under_two_names_is_refused(text_encoder) -> None:
    found = {f"text_model.{name}": shape for name, shape in text_encoder.shapes.items()}
    found["final_layer_norm.weight"] = text_encoder.shapes["final_layer_norm.weight"]
    assert compare(text_encoder, found) == "1 tensor(s) stored under two names, e.g. final_layer_norm.weight"
