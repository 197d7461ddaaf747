"""DEVICE as a torch device: `auto` picks, and a CUDA device torch cannot see is one sentence at start, not a
library's failure deep in the load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sdxl_worker.loading.plan import DeviceError, resolve_device
from sdxl_worker.serving.worker import Worker
from tests.helpers import cpu_settings


def test_auto_and_cpu_on_a_machine_without_a_gpu() -> None:
    assert not torch.cuda.is_available()  # this machine: the image's CUDA build of torch, no driver
    assert resolve_device("auto") == resolve_device("cpu") == "cpu"
    with pytest.raises(DeviceError, match=r"^DEVICE=cuda, but torch sees no CUDA GPU here: set DEVICE=auto \(or "
                                          r"cpu\), or run the worker where that GPU is$"):
        resolve_device("cuda")


def test_a_card_index_past_the_machines_cards(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == resolve_device("cuda") == "cuda" and resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(DeviceError, match=r"^DEVICE=cuda:1, but torch sees 1 CUDA GPU\(s\), cuda:0 to cuda:0 here"):
        resolve_device("cuda:1")


def test_the_worker_answers_every_job_with_the_sentence(tiny_volume_source: Path) -> None:
    worker = Worker.start(cpu_settings(tiny_volume_source).model_copy(update={"device": "cuda"}), warmup=False)
    reply = worker.handle({"id": "d", "input": {"prompt": "a fox"}})
    assert worker.pipe is None and "DEVICE=cuda, but torch sees no CUDA GPU here" in reply["error"]
    assert "NVIDIA driver" not in reply["error"] and "Traceback" not in reply["error"]
