"""LoRA jobs under the speed options: a captured graph replays them and compiled code runs them, with the LoRA
merged in and nothing compiled inside them, and the next plain job is served as before, with the same bits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dev.lora import write_lora
from sdxl_worker.loras.files import LoraSettings
from sdxl_worker.serving.worker import Worker
from sdxl_worker.speed.cuda_graphs import graph_unet
from sdxl_worker.speed.options import SpeedOptions
from tests.helpers import RecordingCapture, cpu_settings, decode, peft_layers

SMALL = {"prompt": "a photonic lighthouse", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 5}
STYLE = [{"name": "style", "scale": 0.9}]


def draw(worker: Worker, **fields: object) -> np.ndarray:
    reply = worker.handle({"id": "t", "input": {**SMALL, **fields}})
    assert "images" in reply, reply
    return np.asarray(decode(reply["images"][0]).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def lora_dir(tiny_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    write_lora(tiny_volume_source, folder / "style.safetensors", seed=3)
    return folder


@pytest.fixture(scope="module")
def reference(tiny_volume_source: Path, lora_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Base and LoRA images from a worker with no fused attention, graph or compiler, the LoRA in PEFT's layers."""
    worker = Worker.start(cpu_settings(tiny_volume_source, speed=SpeedOptions(fuse_qkv=False),
                                       loras=LoraSettings(lora_dir=str(lora_dir))), warmup=False)
    with peft_layers():
        return draw(worker), draw(worker, loras=STYLE)


def test_a_lora_job_replays_the_captured_graph_and_the_next_job_replays_it_bit_for_bit(
        tiny_volume_source: Path, lora_dir: Path, reference: tuple[np.ndarray, np.ndarray]) -> None:
    worker = Worker.start(cpu_settings(tiny_volume_source, loras=LoraSettings(lora_dir=str(lora_dir))), warmup=False)
    capture = RecordingCapture()
    graphed = graph_unet(worker.pipe.unet, "cpu", capture)
    base, styled = reference
    assert np.array_equal(draw(worker), base)
    replays = graphed.replays
    # Merged into the weights the graph reads (speed/lora_merge.py), the fused q/k/v ones included: PEFT's image
    # within float rounding (its layers add the LoRA's product, the merge adds it to the weights).
    assert np.abs(draw(worker, loras=STYLE) - styled).max() <= 2
    assert graphed.replays == replays + 2 and graphed.eager_calls == 0 and capture.captures == 1
    assert np.array_equal(draw(worker), base)
    assert graphed.replays == replays + 4 and not graphed.bypass


def compiled_regions(worker: Worker, **fields: object) -> tuple[np.ndarray, int]:
    """A job's image, and how many times compiled code ran in it (torch.profiler names each entry)."""
    from torch.profiler import profile

    with profile() as prof:
        image = draw(worker, **fields)
    return image, sum(event.count for event in prof.key_averages() if "Torch-Compiled Region" in event.key)


@pytest.mark.slow
def test_a_compiled_worker_runs_lora_jobs_compiled_with_the_lora_merged_and_never_recompiles(
        tiny_volume_source: Path, lora_dir: Path, reference: tuple[np.ndarray, np.ndarray]) -> None:
    import torch

    worker = Worker.start(cpu_settings(tiny_volume_source, speed=SpeedOptions(compile=True),
                                       loras=LoraSettings(lora_dir=str(lora_dir))))
    assert worker.pipe is not None, worker.startup_error
    compiled_unet = worker.pipe.unet
    base, styled = reference
    try:
        draw(worker)  # the job's size, compiled once
        torch.compiler.set_stance("fail_on_recompile")  # any recompile from here on fails the job
        first, plain_regions = compiled_regions(worker)
        np.testing.assert_allclose(first, base, atol=2)  # inductor's kernels: not bit for bit the eager ones
        merged, lora_regions = compiled_regions(worker, loras=STYLE)
        assert lora_regions == plain_regions > 0  # the compiled UNet and VAE drew the LoRA job too
        assert np.abs(merged - styled).max() <= 3  # PEFT's eager image, within inductor's and the merge's rounding
        assert np.abs(merged - first).mean() > 1  # the LoRA drew
        assert np.array_equal(draw(worker), first)  # the weights put back bit for bit
        assert worker.pipe.unet is compiled_unet and worker.pipelines["img2img"].unet is compiled_unet
        assert worker.loras.loaded["style"].tensors is not None  # kept in host memory, out of the model
    finally:
        torch.compiler.set_stance("default")
        torch._dynamo.reset()
