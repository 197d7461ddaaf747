"""Several models behind one endpoint (MODELS): each job drawn by the model it names, exactly as a worker serving
that model alone draws it; LoRAs reach only the job's model; the host-memory budget drops the least recently
used; a model replaced on the volume is read again; a broken or unknown model is one sentence; a fine-tune shares
its base's text encoders and VAE."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dev.embedding import write_embedding
from dev.lora import write_lora
from dev.synthetic_volume import build_volume
from sdxl_worker.embeddings.files import EmbeddingSettings
from sdxl_worker.loras.files import LoraSettings
from sdxl_worker.serving.models import ModelSet, held_bytes, weight_bytes
from sdxl_worker.serving.shared_components import GROUPS
from sdxl_worker.serving.worker import Worker
from tests.helpers import cpu_settings

SMALL = {"prompt": "a photonic lighthouse", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 5}


@pytest.fixture(scope="module")
def second_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model: other weights, the same architecture."""
    return build_volume(tmp_path_factory.mktemp("second") / "photonicfusion-sdxl", "tiny", ["standard"], seed=7)


@pytest.fixture(scope="module")
def lora_dir(tiny_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    write_lora(tiny_volume_source, folder / "style.safetensors", seed=1)
    return folder


@pytest.fixture(scope="module")
def pair(tiny_volume_source: Path, second_source: Path, lora_dir: Path) -> ModelSet:
    return models_of(("photonic", tiny_volume_source), ("base", second_source),
                     loras=LoraSettings(lora_dir=str(lora_dir)))


@pytest.fixture(scope="module")
def second_alone(second_source: Path) -> list[str]:
    return alone(second_source)["images"]


def models_of(*pairs: tuple[str, Path], **fields: object) -> ModelSet:
    settings = cpu_settings(pairs[0][1], models=",".join(f"{name}={path}" for name, path in pairs), **fields)
    models = ModelSet.start(settings, warmup=False)
    for worker in models.loaded.values():
        worker.progress = lambda job, update: None
    return models


def job(**fields: object) -> dict:
    return {"id": "multi", "input": {**SMALL, **fields}}


def alone(source: Path, **fields: object) -> dict:
    worker = Worker.start(cpu_settings(source, **fields), warmup=False)
    worker.progress = lambda job, update: None
    return worker.handle(job())


def test_each_job_is_drawn_by_the_model_it_names_as_that_model_alone_draws_it(
        pair: ModelSet, worker: Worker, second_alone: list[str]) -> None:
    models = pair
    # `worker`: the session's worker serving the tiny model alone, with no MODELS.
    expected = {"photonic": worker.handle(job())["images"], "base": second_alone}
    assert expected["photonic"] != expected["base"]
    styled = models.handle(job(model="photonic", loras=[{"name": "style"}]))["images"]
    for name in ["base", None, "base", "photonic", "base"]:  # None: the first
        reply = models.handle(job() if name is None else job(model=name))
        assert reply["images"] == expected[name or "photonic"], name
        assert reply["model"]["name"] == (name or "photonic") and reply["timings"]["switch_s"] >= 0
    # The LoRA drew on its job's model only, and left it as it was.
    assert styled != expected["photonic"]
    assert models.handle(job(model="base", loras=[{"name": "style"}]))["images"] != expected["base"]
    assert models.handle(job(model="photonic"))["images"] == expected["photonic"]
    assert list(models.loaded) == ["base", "photonic"]  # least recently used first
    photonic, base = models.loaded["photonic"].pipe, models.loaded["base"].pipe
    assert not any(getattr(photonic, name) is getattr(base, name) for names in GROUPS.values() for name in names)


def test_an_unknown_model_is_one_sentence_with_the_names(pair: ModelSet, tiny_volume_source: Path) -> None:
    models = pair
    assert models.handle(job(model="photnic"))["error"] == (
        "Unknown model 'photnic'. Did you mean 'photonic'? Available: photonic, base.")
    assert "model: Input should be a valid string" in models.handle(job(model=3))["error"]
    single = ModelSet.start(cpu_settings(tiny_volume_source), warmup=False)
    assert single.handle(job(model="base"))["error"] == (
        "Unknown model 'base': this endpoint serves one model (MODEL_PATH), 'default'; set MODELS to serve several.")
    assert single.handle(job(model="default"))["model"]["name"] == "default"


def test_a_broken_model_is_refused_by_name_while_the_others_serve(tiny_volume_source: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_volume_source, broken)
    shutil.rmtree(broken / "unet")
    with caplog.at_level("INFO"):
        models = models_of(("photonic", tiny_volume_source), ("broken", broken))
    assert f"model 'broken' ({broken}): " in caplog.text  # said at start
    reply = models.handle(job(model="broken"))
    assert reply["error"].startswith("Model 'broken' cannot serve jobs: ") and "unet" in reply["error"]
    assert "images" in models.handle(job(model="photonic"))


def test_the_host_memory_budget_drops_the_least_recently_used_and_reads_it_again(
        tiny_volume_source: Path, second_source: Path, tmp_path: Path, worker: Worker) -> None:
    third = build_volume(tmp_path / "third", "tiny", ["standard"], seed=11)  # nothing in common with the others
    size = weight_bytes(worker.pipe)  # each tiny model's: the same architecture
    models = models_of(("a", tiny_volume_source), ("b", second_source), ("c", third),
                       model_host_cache_gb=1.5 * size / 1e9)  # room for one model besides the one serving
    for name in ["b", "c"]:
        models.handle(job(model=name))
    assert list(models.loaded) == ["b", "c"]  # a, the oldest, dropped
    first_b = models.loaded["b"]
    models.handle(job(model="a"))  # read again; b is now the oldest beyond the budget
    assert list(models.loaded) == ["c", "a"]
    models.handle(job(model="b"))
    assert models.loaded["b"] is not first_b


def test_a_model_replaced_on_the_volume_is_read_again_at_its_next_switch(
        tiny_volume_source: Path, second_source: Path, tmp_path: Path, second_alone: list[str]) -> None:
    changing = tmp_path / "changing"
    shutil.copytree(tiny_volume_source, changing)
    models = models_of(("a", changing), ("b", second_source))
    before = models.handle(job(model="a"))["images"]
    models.handle(job(model="b"))
    shutil.rmtree(changing)  # the folder replaced by another model, as an operator uploads a new fine-tune
    shutil.copytree(second_source, changing)
    after = models.handle(job(model="a"))
    assert after["images"] != before and after["images"] == second_alone  # now b's files


@pytest.fixture(scope="module")
def fine_tune(tiny_volume_source: Path, second_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with another UNet: its text encoders, tokenizers and VAE the same files, as a fine-tune's."""
    folder = tmp_path_factory.mktemp("fine-tune") / "photonicfusion-sdxl"
    shutil.copytree(tiny_volume_source, folder)
    shutil.rmtree(folder / "unet")
    shutil.copytree(second_source / "unet", folder / "unet")
    return folder


def test_a_fine_tune_shares_its_bases_text_encoders_and_vae_and_draws_as_it_does_alone(
        tiny_volume_source: Path, fine_tune: Path, lora_dir: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    write_embedding(tiny_volume_source, tmp_path / "grainy.safetensors", vectors=3, seed=1)
    addons = {"loras": LoraSettings(lora_dir=str(lora_dir)),
              "embeddings": EmbeddingSettings(embeddings_dir=str(tmp_path))}
    with_both = {"prompt": "a grainy photonic lighthouse", "loras": [{"name": "style"}]}
    expected = {}
    for name, source in (("base", tiny_volume_source), ("tuned", fine_tune)):
        lone = Worker.start(cpu_settings(source, **addons), warmup=False)
        lone.progress = lambda job, update: None
        expected[name] = [lone.handle(job(**fields))["images"] for fields in ({}, with_both)]
    with caplog.at_level("INFO"):
        models = models_of(("base", tiny_volume_source), ("tuned", fine_tune), **addons)
        # Each model's plain job, then its job with a LoRA (text encoders' layers too) and an embedding, then
        # plain again: the LoRA layers and embedding tokens one model's job adds to the shared encoders reach
        # no other job.
        for name in ["tuned", "base", "tuned", "base", "tuned", "base"]:
            for fields, image in zip(({}, with_both, {}), (*expected[name], expected[name][0]), strict=True):
                assert models.handle(job(model=name, **fields))["images"] == image, (name, fields)
    assert "model 'tuned' (" in caplog.text and "text encoders shared with model 'base', VAE shared with " \
        "model 'base'" in caplog.text
    base, tuned = models.loaded["base"].pipe, models.loaded["tuned"].pipe
    assert all(getattr(tuned, name) is getattr(base, name) for names in GROUPS.values() for name in names)
    assert tuned.unet is not base.unet
    # Held in host memory besides the serving model (base, the last job's): the fine-tune's UNet alone.
    assert models.resident == "base" and models.host_bytes() == held_bytes([tuned.unet])
