"""The async handler runpod calls: a stopped request ends its job at the next step and leaves the worker as it was
(LoRA and ControlNet weights bit-identical, the next job's image unchanged), and STREAM=1 streams the progress
updates and previews in order, the reply last."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dev.controlnet import write_controlnet
from dev.lora import write_lora
from sdxl_worker.controlnets.files import ControlNetSettings
from sdxl_worker.loras.files import LoraSettings
from sdxl_worker.serving.runpod_handler import STOPPED_BY_RUNPOD, RunpodHandler
from sdxl_worker.serving.worker import Worker
from sdxl_worker.speed.cuda_graphs import graph_unet
from sdxl_worker.watch.settings import WatchSettings
from tests.helpers import RecordingCapture, cpu_settings, decode, every_tensor, png_b64

JOB = {"prompt": "a photonic lighthouse", "width": 256, "height": 256, "num_inference_steps": 50, "seed": 3}


@pytest.fixture(scope="module")
def served(tiny_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Worker:
    """A worker with a LoRA and a ControlNet to serve."""
    folder = tmp_path_factory.mktemp("add-ons")
    write_lora(tiny_volume_source, folder / "loras" / "style.safetensors", seed=1)
    write_controlnet(tiny_volume_source, folder / "controlnets" / "edges", seed=1)
    worker = Worker.start(cpu_settings(tiny_volume_source, loras=LoraSettings(lora_dir=str(folder / "loras")),
                                       controlnets=ControlNetSettings(controlnet_dir=str(folder / "controlnets"))),
                          warmup=False)
    assert worker.pipe is not None, worker.startup_error
    worker.progress = lambda job, update: None
    return worker


def unet_hook(worker: Worker, after_call: Any) -> Any:
    def hook(*_: object) -> None:  # returning None keeps the UNet's output
        after_call()

    return worker.pipe.unet.register_forward_hook(hook)


def stopped_after(worker: Worker, job: dict[str, Any], steps_done: int, stream: bool = False) -> tuple[int, float]:
    """Run `job` through the async handler and cancel its task, as runpod does at a stop signal, once the UNet has
    run `steps_done` steps; the UNet calls it made in all, and the seconds from the cancel to the handler's end."""
    handler = RunpodHandler(worker)
    calls: list[float] = []
    cancelled_at: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def consume() -> Any:
            if not stream:
                return await handler.reply(job)
            return [chunk async for chunk in handler.stream(job)]

        task = asyncio.ensure_future(consume())

        def after_call() -> None:
            calls.append(time.perf_counter())
            if len(calls) == steps_done:
                cancelled_at.append(time.perf_counter())
                loop.call_soon_threadsafe(task.cancel)

        hook = unet_hook(worker, after_call)
        try:
            with pytest.raises(asyncio.CancelledError):
                await task  # raised again once the job's thread is free: how runpod learns the job stopped
        finally:
            hook.remove()

    asyncio.run(main())
    return len(calls), time.perf_counter() - cancelled_at[0]


def run(worker: Worker, **fields: object) -> dict[str, Any]:
    reply = worker.handle({"id": "after", "input": {**JOB, "num_inference_steps": 3, **fields}})
    assert "error" not in reply, reply
    return reply


@pytest.mark.parametrize("stream", [False, True])
def test_a_stopped_job_ends_at_the_next_step_and_the_next_job_is_unchanged(served: Worker, stream: bool,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    before = run(served)["images"]
    with caplog.at_level("INFO"):
        calls, seconds = stopped_after(served, {"id": "stopped", "input": JOB}, 3, stream)
    assert calls <= 4, f"the UNet ran {calls} of 50 steps after a stop at the 3rd"
    assert seconds < 30  # one tiny step, and the thread is free
    assert f"job stopped stopped after step {calls} of 50: {STOPPED_BY_RUNPOD}" in caplog.text
    assert run(served)["images"] == before


def model_weights(worker: Worker) -> dict[str, Any]:
    """The model's own weights by name; a LoRA kept loaded between jobs (LORA_CACHE_MB) adds PEFT's layers around
    them, which are not the model's."""
    return {name.replace(".base_layer.", "."): tensor.clone() for name, tensor in every_tensor(worker.pipe).items()
            if ".lora_" not in name}


def test_a_stopped_lora_or_controlnet_job_leaves_the_model_bit_identical(served: Worker) -> None:
    from PIL import Image

    weights = model_weights(served)
    before = run(served)["images"]
    edges = Image.new("RGB", (256, 256))
    edges.paste((255, 255, 255), (64, 64, 192, 192))
    for extra in ({"loras": [{"name": "style", "scale": 1.0}]},
                  {"controlnets": [{"name": "edges", "image": png_b64(edges)}]}):
        calls, _ = stopped_after(served, {"id": "add-on", "input": {**JOB, **extra}}, 2)
        assert calls <= 3
        after = model_weights(served)
        assert after.keys() == weights.keys()
        assert all(np.array_equal(after[name].numpy(), tensor.numpy()) for name, tensor in weights.items())
        assert run(served)["images"] == before


def test_a_job_past_job_timeout_s_stops_with_one_sentence(served: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(served, "settings", served.settings.model_copy(
        update={"watch": WatchSettings(job_timeout_s=0.3)}))
    calls: list[int] = []
    hook = unet_hook(served, lambda: calls.append(time.sleep(0.1)))
    try:
        reply = asyncio.run(RunpodHandler(served).reply({"id": "slow", "input": JOB}))
    finally:
        hook.remove()
    assert reply["error"] == f"Job stopped after step {len(calls)} of 50: it ran past JOB_TIMEOUT_S (0.3 s)."
    assert len(calls) <= 4  # 0.1 s a step at least: past 0.3 s from the job's start by the 4th
    monkeypatch.undo()
    assert "images" in run(served)


def test_a_stream_sends_progress_and_previews_in_order_then_the_reply(served: Worker) -> None:
    async def chunks() -> list[dict[str, Any]]:
        stream: AsyncIterator[dict[str, Any]] = RunpodHandler(served).stream(
            {"id": "watched", "input": {**JOB, "num_inference_steps": 6, "preview": 2, "num_images": 2}})
        return [chunk async for chunk in stream]

    *updates, reply = asyncio.run(chunks())
    assert [update["step"] for update in updates] == [1, 2, 3, 4, 5, 6]  # every step of 6 is a tenth or more
    assert [update["step"] for update in updates if "preview" in update] == [2, 4]
    for update in updates:
        if "preview" in update:
            preview = decode(update["preview"])
            assert preview.format == "JPEG" and max(preview.size) <= 256
            assert preview.size == (64, 32)  # two 256x256 images' latents side by side, 32 pixels a side each
    assert reply["images"] == run(served, num_inference_steps=6, num_images=2)["images"]  # previews change nothing


def test_under_cuda_graphs_a_stop_falls_between_replays_and_the_graph_serves_on(tiny_volume_source: Path) -> None:
    """Graphs recorded as on a GPU: the stop is seen between two replays, and the graph the stopped job replayed
    serves the next job of its shape without a new capture."""
    worker = Worker.start(cpu_settings(tiny_volume_source), warmup=False)
    worker.progress = lambda job, update: None
    capture = RecordingCapture()
    graphed = graph_unet(worker.pipe.unet, "cpu", capture)
    first = run(worker)
    assert (capture.captures, first["timings"]["graph"]) == (1, "captured")
    calls, _ = stopped_after(worker, {"id": "graphed", "input": JOB}, 3)
    assert calls <= 4 and graphed.eager_calls == 0
    after = run(worker)
    assert after["timings"]["graph"] == "replayed" and capture.captures == 1
    assert after["images"] == first["images"]
