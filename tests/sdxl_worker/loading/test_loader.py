"""The load plan for CUDA and CPU (pure, no GPU needed), and real offline loads on CPU, every layout and loader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dev.hf_cache import cache_repo
from sdxl_worker.loading.loader import load_pipeline
from sdxl_worker.loading.plan import VolumeNotLoadable, plan_load, plan_of
from sdxl_worker.loading.streamed import DEFAULT_STREAMS
from sdxl_worker.volume.check import check_volume
from sdxl_worker.volume.report import format_bytes
from tests.helpers import MODELS, assert_images_match, drop_variant, every_tensor


def generate(pipe, seed: int) -> np.ndarray:
    import torch

    image = pipe("a lighthouse at dusk", width=64, height=64, num_inference_steps=2,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return np.asarray(image)


def test_plan_cuda_prefers_complete_fp16(volume: Path) -> None:
    report = check_volume(volume)
    plan = plan_load(report, "cuda")
    assert (plan.label, plan.dtype, plan.reasons) == ("fp16", "float16", ())
    assert plan.variants == dict.fromkeys(MODELS, "fp16")
    assert plan.bytes_to_read == report.plans["fp16"].bytes


def test_plan_cuda_falls_back_to_standard_when_fp16_missing(volume: Path) -> None:
    drop_variant(volume, "fp16")
    plan = plan_load(check_volume(volume), "cuda:0")
    assert (plan.label, plan.dtype) == ("standard", "float16")
    standard_bytes = plan.bytes_to_read
    half = sum(w.parameters for w in (c.weights for c in plan.components) if w is not None) * 2
    assert plan.reasons == ("fp16 variant incomplete in text_encoder, text_encoder_2, unet, vae: loading the "
                            f"standard files cast to float16, reading {format_bytes(standard_bytes)} where an fp16 "
                            f"set would read {format_bytes(half)}",)
    assert 1.9 < standard_bytes / half < 2.1, "the tiny model's standard files are float32"


def test_plan_cuda_partial_fp16_is_not_mixed_silently(volume: Path) -> None:
    drop_variant(volume, "fp16", ("unet",))
    plan = plan_load(check_volume(volume), "cuda")
    assert plan.label == "standard" and set(plan.variants.values()) == {"standard"}
    assert "fp16 variant incomplete in unet" in plan.reasons[0]


def test_plan_cuda_mixes_only_when_no_set_is_complete(volume: Path) -> None:
    drop_variant(volume, "fp16", ("unet",))
    drop_variant(volume, "standard", ("vae",))
    plan = plan_load(check_volume(volume), "cuda")
    assert plan.label == "mixed"
    assert plan.variants == {"text_encoder": "fp16", "text_encoder_2": "fp16", "unet": "standard", "vae": "fp16"}
    assert "mixing deliberately" in plan.reasons[0]


def test_plan_cpu_is_float32_from_whichever_set_exists(volume: Path) -> None:
    assert plan_load(check_volume(volume), "cpu").label == "standard"
    drop_variant(volume, "standard")
    plan = plan_load(check_volume(volume), "cpu")
    assert (plan.label, plan.dtype) == ("fp16", "float32")


def test_plan_refuses_unloadable_volume_with_report_words(volume: Path) -> None:
    (volume / "tokenizer_2" / "vocab.json").unlink()
    with pytest.raises(VolumeNotLoadable, match=r"tokenizer_2: neither tokenizer\.json nor vocab\.json"):
        plan_load(check_volume(volume), "cuda")


@pytest.mark.parametrize("keep", ["standard", "fp16"])
def test_load_on_cpu_and_generate_offline(volume: Path, keep: str, no_network: list[str]) -> None:
    drop_variant(volume, "fp16" if keep == "standard" else "standard")
    pipe, record = load_pipeline(volume, "cpu")
    assert (record.device, record.dtype, record.variant) == ("cpu", "float32", keep)
    assert record.bytes_read == check_volume(volume).plans[keep].bytes
    assert str(pipe.unet.dtype) == "torch.float32" and str(pipe.text_encoder_2.dtype) == "torch.float32"
    report = check_volume(volume)
    assert list(record.components_s) == list(report.components)  # every component timed, in load order
    assert sum(record.components_s.values()) <= record.seconds
    assert set(record.prefetch_lead_gb) == {n for n, c in report.components.items() if c.kind == "model"}
    first, again, other = generate(pipe, 7), generate(pipe, 7), generate(pipe, 8)
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert no_network == []
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_a_hub_id_in_no_cache_is_refused_without_a_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            no_network: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(VolumeNotLoadable, match=r"is in no model cache here .* never downloads"):
        load_pipeline("stabilityai/stable-diffusion-xl-base-1.0", "cpu", model_cache=str(tmp_path / "cache"))
    assert no_network == []


def test_refuses_unloadable_volume(volume: Path) -> None:
    with pytest.raises(VolumeNotLoadable, match=r"model folder .* does not exist"):
        load_pipeline(volume.parent / "missing", "cpu")


def test_file_corrupted_after_check_propagates(volume: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A corrupt file is an error to surface, never a reason to quietly try another weight set."""
    from sdxl_worker.loading import loader as model_loader

    report = check_volume(volume)
    monkeypatch.setattr(model_loader, "check_volume", lambda path, **_: report)
    os.truncate(volume / "unet" / "diffusion_pytorch_model.safetensors", 1000)
    with pytest.raises(Exception) as caught:
        load_pipeline(volume, "cpu")
    assert not isinstance(caught.value, VolumeNotLoadable)
    assert "diffusion_pytorch_model.safetensors" in str(caught.value) or "Safetensor" in type(caught.value).__name__


@pytest.fixture(scope="module")
def reference(tiny_volume_source: Path) -> tuple[dict, np.ndarray]:
    """Every tensor and an image of the tiny model as this project's own tools write it."""
    pipe, _ = load_pipeline(tiny_volume_source, "cpu", prefetch=False)
    return every_tensor(pipe), generate(pipe, 7)


def assert_same_model(pipe: object, reference: tuple[dict, np.ndarray]) -> None:
    """Every tensor of `pipe` equal to the reference's, dtype included, and the image it draws the same."""
    tensors, image = reference
    ours = every_tensor(pipe)
    assert ours.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name], tensor), name
    assert_images_match(generate(pipe, 7), image)


@pytest.mark.parametrize("streams", [0, 3, None], ids=["libraries-loader", "3-streams", "auto"])
def test_every_loader_path_serves_every_layout_with_the_same_weights(layout_volume_source: Path, streams: int | None,
                                                                     reference: tuple, no_network: list) -> None:
    """Published names (transformers 4 text encoders, a sharded UNet), older ones (stored position_ids, deprecated
    VAE attention names) and today's: the same weights under each, so every tensor and the image are the same."""
    pipe, record = load_pipeline(layout_volume_source, "cpu", streams=streams)
    assert record.streams == (DEFAULT_STREAMS if streams is None else streams)
    assert_same_model(pipe, reference)


@pytest.mark.parametrize("streams", [0, 3], ids=["libraries-loader", "3-streams"])
def test_a_hub_id_in_a_model_cache_serves_every_layout_with_the_same_weights(
        layout_volume_source: Path, streams: int, reference: tuple, tmp_path: Path, no_network: list) -> None:
    """RunPod's cached model: a snapshot of links into blobs/, read by both loaders as the folder would be."""
    cache = tmp_path / "huggingface-cache" / "hub"
    snapshot = cache_repo(layout_volume_source, cache, "Baileyy/photonicfusion-sdxl")
    pipe, record = load_pipeline("Baileyy/photonicfusion-sdxl", "cpu", streams=streams, model_cache=str(cache))
    assert record.model_path == str(snapshot.resolve())
    assert_same_model(pipe, reference)
    assert no_network == []


@pytest.mark.parametrize("streams", [0, 3], ids=["libraries-loader", "3-streams"])
def test_weights_that_do_not_fill_the_model_are_refused_naming_the_component(layout_volume: Path, streams: int,
                                                                             monkeypatch) -> None:
    """Past the check (a file changed since, or a case it cannot see): the library's load report is a refusal, in
    every layout, naming the tensor as the model names it."""
    from safetensors.torch import load_file, save_file

    from sdxl_worker.loading import loader as model_loader

    volume = layout_volume
    drop_variant(volume, "fp16")
    path = volume / "text_encoder" / "model.safetensors"
    tensors = load_file(path)
    dropped = sorted(n for n in tensors if not n.endswith("position_ids"))[-1]
    del tensors[dropped]
    save_file(tensors, path, metadata={"format": "pt"})
    report = check_volume(volume)  # headers only: a tiny config is not SDXL's, so its tensors go uncompared here
    monkeypatch.setattr(model_loader, "check_volume", lambda path, **_: report)
    missing = dropped.removeprefix("text_model.")
    with pytest.raises(model_loader.ComponentLoadError,
                       match=rf"^text_encoder: 1 tensor\(s\) missing from its weights, e.g. {missing}$"):
        load_pipeline(volume, "cpu", streams=streams)


def test_other_load_errors_name_the_component(volume: Path, monkeypatch) -> None:
    from sdxl_worker.loading import loader as model_loader

    report = check_volume(volume)
    monkeypatch.setattr(model_loader, "check_volume", lambda path, **_: report)
    config = volume / "vae" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "latent_channels": 8}))
    with pytest.raises(model_loader.ComponentLoadError, match=r"^vae: "):
        load_pipeline(volume, "cpu")


def test_load_streams_auto_chooses_by_filesystem_and_device(volume: Path) -> None:
    from sdxl_worker.loading.plan import choose_streams

    streams, reason = choose_streams(volume, None, "cuda")  # a GPU host's local disk: the libraries' loader
    assert streams == 0 and reason.startswith("LOAD_STREAMS=auto: ") and reason.endswith(" is a local filesystem")
    assert choose_streams(volume, None, "cpu") == (
        DEFAULT_STREAMS, "LOAD_STREAMS=auto: on the CPU the weights are copied into memory, not mapped")
    assert choose_streams(volume, 3, "cuda") == (3, "LOAD_STREAMS=3")
    _, record = load_pipeline(volume, "cpu", streams=None)
    assert record.streams == DEFAULT_STREAMS


def test_the_plan_carries_what_the_loader_needs(layout_volume_source: Path) -> None:
    """Each component's class and, for the models, the checked weight set with its parsed headers: the loader
    loads from the plan alone, reading no header again."""
    from sdxl_worker.loading.loader import weight_files

    report = check_volume(layout_volume_source, tensors=True)
    plan = plan_load(report, "cuda")
    assert [c.name for c in plan.components] == list(report.components)
    for component in plan.components:
        checked = report.components[component.name]
        assert (component.library, component.class_name) == (checked.library, checked.class_name)
        assert component.weights is (checked.weight_sets["fp16"] if checked.kind == "model" else None)
    assert plan.weight_files() == weight_files(layout_volume_source, report, plan.variants)
    assert all(c.weights.headers for c in plan.components if c.weights is not None)
    assert plan.pipeline_class == "StableDiffusionXLPipeline" and plan.model_path == str(layout_volume_source)


@pytest.mark.parametrize("streams", [0, 3], ids=["libraries-loader", "3-streams"])
def test_a_tensor_the_model_has_no_place_for_is_refused(volume: Path, streams: int, monkeypatch) -> None:
    """Past the check, an extra tensor in a file is a refusal naming it (the read-once loader refuses it from the
    headers, before reading the data)."""
    from safetensors.torch import load_file, save_file

    from sdxl_worker.loading import loader as model_loader

    drop_variant(volume, "fp16")
    path = volume / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    tensors["decoder.extra.weight"] = torch.zeros(2)
    save_file(tensors, path, metadata={"format": "pt"})
    report = check_volume(volume)  # headers only: a tiny config is not SDXL's, so its tensors go uncompared here
    monkeypatch.setattr(model_loader, "check_volume", lambda path, **_: report)
    with pytest.raises(model_loader.ComponentLoadError, match=r"^vae: 1 tensor\(s\) in its weights that it has no "
                       r"place for, e.g. decoder.extra.weight$"):
        load_pipeline(volume, "cpu", streams=streams)


@pytest.mark.parametrize(("fs_type", "streams"), [("fuse", DEFAULT_STREAMS), ("fuse.mfs", DEFAULT_STREAMS),
                                                  ("nfs4", DEFAULT_STREAMS), ("cifs", DEFAULT_STREAMS),
                                                  ("ext4", 0), ("overlay", 0), ("fuseblk", 0)])
def test_a_gpu_worker_reads_a_network_volume_once_without_fuse_here(tmp_path: Path, monkeypatch, fs_type: str,
                                                                    streams: int) -> None:
    """RunPod's network volume is FUSE: the default there is the read-once loader (with the libraries' loader each
    byte crosses the network twice). Decided from the mount table, so it is tested on any machine."""
    from sdxl_worker.loading import plan as planning
    from sdxl_worker.loading.filesystem import mount_of

    table = tmp_path / "mountinfo"
    table.write_text(f"36 25 0:32 / / rw - overlay overlay rw\n"
                     f"37 36 0:45 / /runpod-volume rw,relatime - {fs_type} mfs#volume rw\n")
    monkeypatch.setattr(planning, "mount_of", lambda path: mount_of(path, table))
    chosen, reason = planning.choose_streams("/runpod-volume/photonicfusion-sdxl", None, "cuda")
    assert chosen == streams, reason
    assert reason.endswith("is a network filesystem" if streams else "is a local filesystem")


@pytest.mark.parametrize("streams", [0, 4])
def test_a_float16_plan_loads_every_model_in_float16(volume: Path, streams: int) -> None:
    """What a CUDA load asks for, kept by both loaders: a float32 copy would double the GPU memory of the load."""
    from sdxl_worker.loading.loader import load_planned

    report = check_volume(volume, tensors=True)
    for variant in ("fp16", "standard"):
        plan = plan_of(report, "cpu", "float16", dict.fromkeys(MODELS, variant))
        pipe, record = load_planned(plan, prefetch=False, streams=streams)
        assert record.dtype == "float16"
        for name in MODELS:
            dtypes = {p.dtype for p in getattr(pipe, name).parameters()}
            assert dtypes == {torch.float16}, (variant, name, dtypes)
