"""The volume check on every way a volume goes wrong in the field, each named with the path at fault."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from dev.hf_cache import cache_repo
from sdxl_worker.volume.check import check_volume, recheck
from tests.helpers import MODELS, drop_variant


def fails(report) -> str:
    return "\n".join(report.problems)


def test_both_variants_loadable_with_sizes(volume: Path) -> None:
    report = check_volume(volume)
    assert report.exit_code == 0 and report.loadable
    for variant, suffix in (("fp16", ".fp16.safetensors"), ("standard", ".safetensors")):
        files = [p for c in MODELS for p in (volume / c).glob("*.safetensors")]
        files = [p for p in files if (".fp16." in p.name) == (variant == "fp16")]
        assert len(files) == 4 and all(p.name.endswith(suffix) for p in files)
        assert report.plans[variant].possible
        assert report.plans[variant].bytes == sum(p.stat().st_size for p in files)
    assert report.plans["standard"].bytes > 1.9 * report.plans["fp16"].bytes


def test_standard_only(volume: Path) -> None:
    drop_variant(volume, "fp16")
    report = check_volume(volume)
    assert report.exit_code == 0
    assert report.plans["standard"].possible and not report.plans["fp16"].possible
    assert report.plans["fp16"].missing_in == ["text_encoder", "text_encoder_2", "unet", "vae"]
    assert "⚠️ unet: no fp16 variant" in report.render()


def test_fp16_only(volume: Path) -> None:
    drop_variant(volume, "standard")
    report = check_volume(volume)
    assert report.exit_code == 0
    assert report.plans["fp16"].possible and not report.plans["standard"].possible


def test_partial_fp16_is_loadable_but_fp16_plan_is_not(volume: Path) -> None:
    drop_variant(volume, "fp16", ("unet",))
    report = check_volume(volume)
    assert report.exit_code == 0 and report.loadable
    assert not report.plans["fp16"].possible
    assert report.plans["fp16"].missing_in == ["unet"]


def test_vae_folder_missing(volume: Path) -> None:
    import shutil

    shutil.rmtree(volume / "vae")
    report = check_volume(volume)
    assert report.exit_code == 1 and not report.loadable
    assert fails(report) == (
        f"vae: folder {volume / 'vae'} is missing (AutoencoderKL): copy the model's vae/ folder (its config and "
        "files) from where the model came from; an upload that stopped early leaves folders out. A fine-tune that "
        "shipped without one uses SDXL's: madebyollin/sdxl-vae-fp16-fix (fp16-safe)")


def test_tokenizer_2_missing(volume: Path) -> None:
    import shutil

    shutil.rmtree(volume / "tokenizer_2")
    report = check_volume(volume)
    assert report.exit_code == 1
    assert "tokenizer_2: folder" in fails(report)


def test_tokenizer_config_without_max_length(volume: Path) -> None:
    (volume / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    report = check_volume(volume)
    assert report.exit_code == 1
    assert "tokenizer: tokenizer_config.json has no usable model_max_length" in fails(report)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "model_index.json is empty"),
        ("{not json", "model_index.json is not valid JSON"),
        (json.dumps({"unet": ["diffusers", "UNet2DConditionModel"]}), "model_index.json has no _class_name"),
    ],
)
def test_model_index_broken(volume: Path, content: str, expected: str) -> None:
    (volume / "model_index.json").write_text(content)
    report = check_volume(volume)
    assert report.exit_code == 1
    assert expected in fails(report)
    assert str(volume / "model_index.json") in report.render()


def test_model_index_missing(volume: Path) -> None:
    (volume / "model_index.json").unlink()
    report = check_volume(volume)
    assert report.exit_code == 1
    assert "model_index.json is missing" in fails(report)


def test_truncated_safetensors(volume: Path) -> None:
    path = volume / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    size = path.stat().st_size
    os.truncate(path, size - 1000)
    report = check_volume(volume)
    assert report.exit_code == 1
    assert f"{path}: truncated" in fails(report)
    # The standard set still serves, so the volume stays loadable, but the fp16 plan is gone: said without
    # contradiction (not "❌ ... is loadable").
    assert report.loadable and not report.plans["fp16"].possible
    assert report.summary() == (f"model at {volume} is loadable (standard), but a file needs fixing: {fails(report)}")
    assert report.render().splitlines()[-1].startswith(f"⚠️ model at {volume} is loadable (standard), but a file ")


def test_truncated_only_set_makes_volume_unloadable(volume: Path) -> None:
    drop_variant(volume, "standard")
    path = volume / "vae" / "diffusion_pytorch_model.fp16.safetensors"
    os.truncate(path, 100)
    report = check_volume(volume)
    assert report.exit_code == 1 and not report.loadable
    assert str(path) in report.summary()


def test_header_corrupt_safetensors(volume: Path) -> None:
    path = volume / "text_encoder" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:20] = b"not json!!!!"
    path.write_bytes(bytes(data))
    report = check_volume(volume)
    assert report.exit_code == 1
    assert f"{path}: header is not valid JSON" in fails(report)


def test_sharded_complete(sharded_volume: Path) -> None:
    report = check_volume(sharded_volume)
    assert report.exit_code == 0
    unet = report.components["unet"].weight_sets["standard"]
    assert unet.files[0] == "diffusion_pytorch_model.safetensors.index.json" and len(unet.files) >= 3


def test_sharded_missing_shard(sharded_volume: Path) -> None:
    shard = sorted((sharded_volume / "unet").glob("diffusion_pytorch_model-00002-of-*.safetensors"))[0]
    shard.unlink()
    report = check_volume(sharded_volume)
    assert report.exit_code == 1 and not report.loadable
    assert f"shard {shard} listed in diffusion_pytorch_model.safetensors.index.json is missing" in fails(report)


def test_shard_lacking_a_tensor_its_index_names(sharded_volume: Path) -> None:
    index_path = sharded_volume / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["down_blocks.9.ghost.weight"] = first
    index_path.write_text(json.dumps(index))
    report = check_volume(sharded_volume)
    assert report.exit_code == 1
    assert f"{sharded_volume / 'unet' / first}: lacks 1 tensors its shard index places there, " \
        "e.g. down_blocks.9.ghost.weight" in fails(report)


def test_model_folder_missing_lists_volume(volume: Path) -> None:
    (volume.parent / "other-model").mkdir()
    report = check_volume(volume.parent / "photonicfusion-sdx")
    assert report.exit_code == 2
    message = fails(report)
    assert "does not exist; the volume holds: other-model, photonicfusion-sdxl" in message
    assert f"Did you mean {volume}" in message


def test_volume_root_missing(tmp_path: Path) -> None:
    report = check_volume(tmp_path / "runpod-volume" / "photonicfusion-sdxl")
    assert report.exit_code == 2
    assert "is the network volume attached" in fails(report)


def test_decoys_are_listed_not_read(volume: Path) -> None:
    report = check_volume(volume)
    assert report.exit_code == 0
    text = report.render()
    assert "ignoring 3 other file(s), not read: diffusion_flax_model.msgpack, model.onnx, model.onnx_data" in text
    assert "sd_xl_base_1.0.safetensors" in text


def test_only_bin_weights_named(volume: Path) -> None:
    for path in (volume / "vae").glob("*.safetensors"):
        path.unlink()
    (volume / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    report = check_volume(volume)
    assert "vae: only .bin weights (diffusion_pytorch_model.bin)" in fails(report)


# Bytes that are not UTF-8 (a lone surrogate's encoding), as a latin-1 string the test writes back byte for byte.
NOT_UTF8 = "\udcff".encode("utf-8", "surrogatepass").decode("latin-1")


@pytest.mark.parametrize("text", ['{"_class_name": "StableDiffusionXLPipeline", "x": ' + "9" * 5000 + "}",
                                  "[" * 50_000 + "]" * 50_000, NOT_UTF8])
@pytest.mark.parametrize("relative", ["model_index.json", "unet/config.json", "tokenizer/tokenizer_config.json",
                                      "scheduler/scheduler_config.json"])
def test_json_python_cannot_parse_is_a_finding(volume: Path, text: str, relative: str) -> None:
    """A 5000-digit number, nesting deeper than Python recurses, bytes that are not UTF-8: refused, named."""
    (volume / relative).write_text(text, encoding="latin-1")
    report = check_volume(volume)
    assert report.exit_code == 1 and not report.loadable
    assert Path(relative).name in fails(report) and "JSON" in fails(report)


@pytest.mark.parametrize(("entry", "words"), [
    (["diffusers"], "model_index.json: unet must be [library, class], got [\"diffusers\"]"),
    ("UNet2DConditionModel", "model_index.json names no unet"),
    (["diffusers", "StableDiffusionXLPipeline"], "unet: StableDiffusionXLPipeline is not a class this worker loads "
                                                 "as unet (expected UNet2DConditionModel)"),
    (["flax", "UNet2DConditionModel"], "unet: library 'flax' is not one this worker loads"),
])
def test_model_index_entries_the_loader_would_refuse(volume: Path, entry: object, words: str) -> None:
    index = json.loads((volume / "model_index.json").read_text())
    index["unet"] = entry
    (volume / "model_index.json").write_text(json.dumps(index))
    report = check_volume(volume)
    assert report.exit_code == 1 and words in fails(report)


def test_a_component_the_pipeline_does_not_take(volume: Path) -> None:
    index = json.loads((volume / "model_index.json").read_text())
    index["tokenizer"] = ["sentencepiece", "CLIPTokenizer"]
    index["refiner"] = ["diffusers", "UNet2DConditionModel"]
    (volume / "model_index.json").write_text(json.dumps(index))
    assert "tokenizer: library 'sentencepiece' is not one this worker loads" in fails(check_volume(volume))
    del index["tokenizer"]
    (volume / "model_index.json").write_text(json.dumps({**index, "tokenizer": ["transformers", "CLIPTokenizer"]}))
    assert "refiner (diffusers.UNet2DConditionModel) is not a component StableDiffusionXLPipeline takes" in \
        fails(check_volume(volume))


@pytest.mark.parametrize(("lengths", "words"), [
    ((1000, 77), "tokenizer: tokenizer_config.json has no usable model_max_length (got 1000; its text encoder has 77"),
    ((0, 77), "tokenizer: tokenizer_config.json has no usable model_max_length (got 0"),
    ((77, True), "tokenizer_2: tokenizer_config.json has no usable model_max_length (got True"),
    ((64, 77), "tokenizers disagree on model_max_length (tokenizer 64, tokenizer_2 77)"),
])
def test_token_lengths_clip_cannot_have(volume: Path, lengths: tuple, words: str) -> None:
    for tokenizer, length in zip(("tokenizer", "tokenizer_2"), lengths, strict=True):
        path = volume / tokenizer / "tokenizer_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "model_max_length": length}))
    report = check_volume(volume)
    assert report.exit_code == 1 and words in fails(report)


def test_header_offsets_overlapping_are_refused(volume: Path) -> None:
    path = volume / "vae" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    _, second = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])[:2]
    header[second]["data_offsets"] = [o - 1 for o in header[second]["data_offsets"]]  # one byte into `first`
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length:])
    assert f"{path}: tensor {second!r} at data_offsets" in fails(check_volume(volume))
    assert "overlaps the tensor before it" in fails(check_volume(volume))


def test_every_layout_users_bring_is_loadable(layout_volume_source: Path) -> None:
    report = check_volume(layout_volume_source, tensors=True)
    assert report.exit_code == 0 and report.plans["fp16"].possible and report.plans["standard"].possible, \
        report.render()


@pytest.mark.parametrize("damage", ["missing", "misshaped"])
def test_missing_or_misshaped_tensor_in_a_text_encoder_is_named(layout_volume: Path, damage: str) -> None:
    """Valid headers, one tensor short or of another shape: transformers would fill it with random values or
    refuse it; the check refuses it, in every layout, naming it as the model does."""
    from safetensors.torch import load_file, save_file

    volume = layout_volume
    drop_variant(volume, "fp16", ("text_encoder",))
    path = volume / "text_encoder" / "model.safetensors"
    tensors = load_file(path)
    dropped = sorted(n for n in tensors if not n.endswith("position_ids"))[-1]
    name = dropped.removeprefix("text_model.")
    if damage == "missing":
        del tensors[dropped]
        expected = f"1 tensor(s) the config needs are missing, e.g. {name}"
    else:
        shape = list(tensors[dropped].shape)
        tensors[dropped] = tensors[dropped][..., :-1].contiguous()
        expected = (f"1 tensor(s) of another shape, e.g. {name} is {[*shape[:-1], shape[-1] - 1]}, the config "
                    f"makes it {shape}")
    save_file(tensors, path, metadata={"format": "pt"})
    quick = check_volume(volume)  # a tiny model's config is not SDXL's: the quick check says it did not compare
    assert "text_encoder: config differs from SDXL base 1.0's" in quick.render()
    report = check_volume(volume, tensors=True)
    assert report.exit_code == 1 and not report.loadable
    assert f"text_encoder: standard weights broken: {expected}" in fails(report)


def test_model_path_that_is_a_file_or_a_hub_id(volume: Path, tmp_path: Path, monkeypatch) -> None:
    file = volume.parent / "weights.safetensors"
    file.write_bytes(b"x")
    report = check_volume(file)
    assert report.exit_code == 2 and f"model folder {file} is a file, not a folder" in fails(report)
    assert "Did you mean" not in fails(report)
    monkeypatch.chdir(tmp_path)
    report = check_volume("stabilityai/stable-diffusion-xl-base-1.0")
    assert report.exit_code == 2
    assert "is in no model cache here" in fails(report) and "this worker never downloads" in fails(report)
    assert "volume root" not in fails(report)


def test_plans_of_an_unloadable_volume_say_so(volume: Path) -> None:
    import shutil

    shutil.rmtree(volume / "tokenizer_2")
    text = check_volume(volume).render()
    assert "fp16: not possible (volume not loadable)" in text and "incomplete in )" not in text


def _verdict(report) -> dict:
    """What a user reads from a report, without the timing and free space that change between two checks."""
    data = report.to_dict()
    for key in ("seconds", "import_s", "free_bytes"):
        data.pop(key)
    return data


def test_a_recheck_of_the_changed_components_equals_a_full_check(volume: Path) -> None:
    """prepare_volume checks once, then again only where it wrote: the verdict must be the full check's."""
    before = check_volume(volume, tensors=True)
    drop_variant(volume, "fp16", ("unet",))
    (volume / "vae" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"cut")
    after = recheck(before, ["unet", "vae"], tensors=True)
    assert _verdict(after) == _verdict(check_volume(volume, tensors=True))
    assert not after.plans["fp16"].possible and after.plans["fp16"].missing_in == ["unet", "vae"]
    assert before.plans["fp16"].possible, "the report rechecked from is left as it was"


def test_a_recheck_reads_only_the_components_named(volume: Path) -> None:
    before = check_volume(volume, tensors=True)
    drop_variant(volume, "fp16", ("unet",))
    assert _verdict(recheck(before, ["vae"], tensors=True)) == _verdict(before)


def _make_special(path: Path, kind: str) -> None:
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")


SPECIAL_PLACES = ["model_index.json", "unet/config.json", "text_encoder/config.json", "tokenizer/vocab.json",
                  "tokenizer_2/tokenizer_config.json", "scheduler/scheduler_config.json",
                  "vae/diffusion_pytorch_model.safetensors", "text_encoder_2/model.fp16.safetensors"]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
@pytest.mark.parametrize("relative", SPECIAL_PLACES)
def test_a_fifo_or_device_in_a_files_place_is_named_without_blocking(volume: Path, relative: str, kind: str) -> None:
    """A FIFO blocked the HEALTHCHECK for ever and a link to /dev/zero ended it in a MemoryError: each is now a
    finding naming the file, within the check's usual time."""
    import threading

    _make_special(volume / relative, kind)
    reports = []
    # On a thread: a check that blocks fails the test instead of hanging the suite.
    checking = threading.Thread(target=lambda: reports.append(check_volume(volume, tensors=True)), daemon=True)
    checking.start()
    checking.join(60)
    assert reports, f"the check blocked on {relative}"
    (report,) = reports
    assert report.exit_code == 1, report.render()
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert any(Path(relative).name in problem and what in problem for problem in report.problems), report.problems


def test_a_relative_path_with_a_typo_gets_the_did_you_mean(volume: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not "a Hugging Face Hub id": the folder it starts from is here, so the check says what that folder holds."""
    monkeypatch.chdir(volume.parent.parent)
    report = check_volume(f"{volume.parent.name}/photonicfusion")
    assert report.exit_code == 2 and "Hub id" not in report.summary()
    assert f"Did you mean {volume.parent.name}/{volume.name} (set MODEL_PATH)?" in report.summary()


def test_a_cached_repo_is_checked_as_its_snapshot_and_says_where_it_came_from(layout_volume_source: Path,
                                                                            tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    snapshot = cache_repo(layout_volume_source, cache, "Baileyy/photonicfusion-sdxl")
    report = check_volume("Baileyy/photonicfusion-sdxl", model_cache=str(cache))
    assert report.exit_code == 0 and report.loadable, report.render()
    assert report.model_path == str(snapshot.resolve()) and report.source is not None
    assert report.source["label"] == f"Baileyy/photonicfusion-sdxl@{snapshot.name}"
    assert report.summary() == f"model Baileyy/photonicfusion-sdxl@{snapshot.name[:12]} (cached) is loadable (fp16, " \
                               "standard)"
    assert report.render().splitlines()[1] == (
        f"✅ model: Hugging Face repo Baileyy/photonicfusion-sdxl (revision main, commit {snapshot.name[:12]}) from "
        f"RunPod's model cache {cache}, snapshot {snapshot.resolve()}")


def test_a_cached_repo_that_needs_converting_gets_a_command_writing_outside_the_cache(tmp_path: Path,
                                                                                  volume: Path) -> None:
    from dev.single_file import write_checkpoint

    single = tmp_path / "single"
    single.mkdir()
    write_checkpoint(volume, single / "photonicfusion.safetensors")
    cache = tmp_path / "hub"
    snapshot = cache_repo(single, cache, "someone/single-file").resolve()
    report = check_volume("someone/single-file", model_cache=str(cache))
    assert report.exit_code == 1
    assert fails(report).startswith(
        "model_index.json is missing: this is not a diffusers pipeline folder; the repo holds the single-file "
        "checkpoint photonicfusion.safetensors: convert it into a folder (`python prepare_volume.py from-single-file "
        f"{snapshot / 'photonicfusion.safetensors'} /workspace/photonicfusion-sdxl`): the worker never writes into a "
        "model cache; then attach the volume and set MODEL_PATH=/runpod-volume/photonicfusion-sdxl")
    for path in (volume / "vae").glob("*.safetensors"):
        path.unlink()
    (volume / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"x")
    snapshot = cache_repo(volume, cache, "someone/bin-vae").resolve()
    assert f"vae: only .bin weights (diffusion_pytorch_model.bin); this worker loads safetensors only: copy the " \
           f"snapshot to a folder of its own and convert that (`cp -rL {snapshot} /workspace/photonicfusion-sdxl && " \
           "python prepare_volume.py convert-bin /workspace/photonicfusion-sdxl`)" in \
           fails(check_volume("someone/bin-vae", model_cache=str(cache)))


def test_a_missing_model_folder_beside_runpods_model_cache_names_the_repo_to_set(tmp_path: Path,
                                                                                tiny_volume_source: Path) -> None:
    """An endpoint with a cached model and the default MODEL_PATH: /runpod-volume holds only the cache."""
    cache = tmp_path / "runpod-volume" / "huggingface-cache" / "hub"
    cache_repo(tiny_volume_source, cache, "Baileyy/photonicfusion-sdxl")
    report = check_volume(tmp_path / "runpod-volume" / "photonicfusion-sdxl", model_cache=str(cache))
    assert report.exit_code == 2
    folder = tmp_path / "runpod-volume" / "photonicfusion-sdxl"
    assert fails(report).startswith(
        f"model folder {folder} does not exist; the volume holds: huggingface-cache. RunPod's model cache {cache} "
        "holds Baileyy/photonicfusion-sdxl: set MODEL_PATH=Baileyy/photonicfusion-sdxl to serve it")


def test_a_repo_in_hf_homes_cache_reports_that_cache_as_its_volume(tmp_path: Path, tiny_volume_source: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Free space and the volume root are the cache that served the snapshot, not RunPod's when it holds nothing."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    cache_repo(tiny_volume_source, tmp_path / "hf-home" / "hub", "Baileyy/photonicfusion-sdxl")
    report = check_volume("Baileyy/photonicfusion-sdxl", model_cache=str(tmp_path / "no-runpod-cache"))
    assert report.exit_code == 0, report.render()
    assert report.volume_root == str(tmp_path / "hf-home" / "hub")
    assert report.free_bytes["volume"] is not None
