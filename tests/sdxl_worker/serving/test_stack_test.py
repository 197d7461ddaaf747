"""STACK_TEST=1: a volume-less machine serves a tiny in-memory SDXL through the real handler, labelled as such;
a machine with a volume never does."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from sdxl_worker.serving.stack_test import STACK_TEST_VARIANT, no_volume
from sdxl_worker.serving.worker import Worker
from sdxl_worker.settings import Settings


def _worker(model_path: Path, **settings: object) -> Worker:
    return Worker.start(Settings(model_path=str(model_path), device="cpu", **settings), warmup=False)


def test_no_volume_means_neither_the_model_folder_nor_its_mount(tmp_path: Path) -> None:
    assert no_volume(str(tmp_path / "runpod-volume" / "model"))
    assert not no_volume(str(tmp_path / "model"))  # the mount is there, the model is not: the check must say so
    (tmp_path / "model").mkdir()
    assert not no_volume(str(tmp_path / "model"))


def test_without_a_volume_the_stack_test_serves_a_labelled_job(tmp_path: Path) -> None:
    worker = _worker(tmp_path / "runpod-volume" / "model", stack_test=True)
    assert worker.startup_error is None and worker.report is None
    reply = worker.handle({"id": "hub", "input": {"prompt": "a fox", "width": 320, "height": 256,
                                                   "num_inference_steps": 2, "num_images": 2, "seed": 3}})
    assert reply["model"] == {"variant": STACK_TEST_VARIANT, "dtype": "float32", "device": "cpu"}
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
