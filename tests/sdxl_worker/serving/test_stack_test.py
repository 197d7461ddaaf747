"""STACK_TEST=1: a volume-less machine serves a tiny in-memory SDXL through the real handler, labelled as such;
a machine with a volume never does."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from dev.hf_cache import cache_repo
from sdxl_worker.serving import stack_test
from sdxl_worker.serving.stack_test import STACK_TEST_VARIANT, volume_evidence
from sdxl_worker.serving.worker import Worker
from sdxl_worker.settings import Settings
from tests.helpers import tmpfs


def _worker(model_path: Path, **settings: object) -> Worker:
    return Worker.start(Settings(model_path=str(model_path), device="cpu", **settings), warmup=False)


def test_no_volume_means_neither_the_model_folder_nor_its_mount(tmp_path: Path) -> None:
    assert volume_evidence(str(tmp_path / "runpod-volume" / "model")) is None
    # the mount is there, the model is not: the check must say so
    assert volume_evidence(str(tmp_path / "model")) == f"{tmp_path} exists"
    (tmp_path / "model").mkdir()
    assert volume_evidence(str(tmp_path / "model")) == f"{tmp_path / 'model'} exists"
    assert volume_evidence("./missing/model") == "MODEL_PATH ./missing/model is a relative path"


def test_for_a_hub_id_a_cache_holding_it_or_the_model_caches_volume_decides(tmp_path: Path,
                                                                            tiny_volume_source: Path) -> None:
    cache = tmp_path / "runpod-volume" / "huggingface-cache" / "hub"
    assert volume_evidence("Baileyy/photonicfusion-sdxl", str(cache)) is None
    cache_repo(tiny_volume_source, cache, "Baileyy/photonicfusion-sdxl")
    assert volume_evidence("Baileyy/photonicfusion-sdxl", str(cache)) == \
        f"RunPod's model cache {cache} holds Baileyy/photonicfusion-sdxl"
    assert volume_evidence("Baileyy/other", str(cache)) == f"{cache} exists", "a cache without it: reported"


def test_the_stack_test_never_serves_noise_while_a_cache_holds_the_model(tmp_path: Path,
                                                                         tiny_volume_source: Path) -> None:
    cache = tmp_path / "hub"
    snapshot = cache_repo(tiny_volume_source, cache, "Baileyy/photonicfusion-sdxl")
    worker = _worker(Path("Baileyy/photonicfusion-sdxl"), stack_test=True, model_cache=str(cache))
    reply = worker.handle({"id": "j", "input": {"prompt": "a fox", "width": 256, "height": 256,
                                                 "num_inference_steps": 1}})
    assert reply["model"]["variant"] != STACK_TEST_VARIANT
    assert reply["model"]["source"] == f"Baileyy/photonicfusion-sdxl@{snapshot.name}"


@pytest.fixture
def runpod_volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """RunPod's mount point, in a temp folder."""
    root = tmp_path / "runpod-volume"
    monkeypatch.setattr(stack_test, "RUNPOD_VOLUME", root)
    return root


def test_under_runpods_mount_point_the_mount_decides(runpod_volume: Path) -> None:
    typo = str(runpod_volume / "modles" / "photonicfusion-sdxl")  # two levels below the volume
    assert volume_evidence(typo) is None  # no volume at all: the Hub's test machine
    runpod_volume.mkdir()
    assert volume_evidence(typo) is None  # an empty folder where a volume would be mounted
    (runpod_volume / "photonicfusion-sdxl").mkdir()
    assert volume_evidence(typo) == f"{runpod_volume} holds files"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_an_empty_mounted_volume_counts_as_attached(runpod_volume: Path) -> None:
    with tmpfs(runpod_volume, "1m"):
        assert volume_evidence(str(runpod_volume / "photonicfusion-sdxl")) == f"{runpod_volume} is a mount point"


@pytest.mark.parametrize("where", ["typo below the volume", "relative"])
def test_a_model_path_with_a_typo_is_reported_not_replaced_by_noise(runpod_volume: Path, where: str) -> None:
    (runpod_volume / "photonicfusion-sdxl").mkdir(parents=True)
    model_path = runpod_volume / "modles" / "photonicfusion-sdxl" if where != "relative" else Path("missing-model")
    worker = _worker(model_path, stack_test=True)
    reply = worker.handle({"id": "j", "input": {"prompt": "a fox"}})
    assert worker.pipe is None and worker.record is None
    assert f"model at {model_path} is not loadable" in reply["error"] and STACK_TEST_VARIANT not in str(reply)


def test_without_a_volume_the_stack_test_serves_a_labelled_job(tmp_path: Path) -> None:
    worker = _worker(tmp_path / "runpod-volume" / "model", stack_test=True)
    assert worker.startup_error is None and worker.report is None
    reply = worker.handle({"id": "hub", "input": {"prompt": "a fox", "width": 320, "height": 256,
                                                   "num_inference_steps": 2, "num_images": 2, "seed": 3}})
    assert reply["model"] == {"name": "default", "variant": STACK_TEST_VARIANT, "dtype": "float32", "device": "cpu"}
    images = [Image.open(io.BytesIO(base64.b64decode(image))) for image in reply["images"]]
    assert [image.size for image in images] == [(320, 256)] * 2
    assert reply["seeds"] == [3, 4]
    assert list(tmp_path.iterdir()) == []  # nothing written: no volume made, no file left


def test_a_volume_is_served_even_with_the_stack_test_on(volume: Path) -> None:
    worker = _worker(volume, stack_test=True)
    assert worker.record.variant != STACK_TEST_VARIANT and worker.report is not None
    assert worker.record.model_path == str(volume)


def test_a_mounted_volume_without_the_model_is_reported_not_replaced(tmp_path: Path) -> None:
    worker = _worker(tmp_path / "photonicfusion-sdxl", stack_test=True)
    reply = worker.handle({"id": "j", "input": {"prompt": "a fox"}})
    assert worker.pipe is None and "photonicfusion-sdxl" in reply["error"]


def test_without_the_setting_no_volume_is_an_error(tmp_path: Path) -> None:
    worker = _worker(tmp_path / "runpod-volume" / "model")
    assert worker.pipe is None and worker.startup_error
