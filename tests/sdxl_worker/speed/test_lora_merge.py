"""LoRA jobs merged into the UNet's weights, with and without CUDA graphs (recorded on the CPU as on CUDA): the graph
replayed, the image PEFT's eager one, and every weight bit for bit the original after."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dev.lora import write_lora
from sdxl_worker.loras.files import LoraSettings
from sdxl_worker.serving.worker import Worker
from sdxl_worker.speed.cuda_graphs import graph_unet
from tests.helpers import RecordingCapture, cpu_settings, decode, peft_layers

JOB = {"prompt": "a photonic lighthouse", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 5}


@pytest.fixture(scope="module")
def lora_dir(tiny_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    write_lora(tiny_volume_source, folder / "style.safetensors", seed=1)
    write_lora(tiny_volume_source, folder / "grain.safetensors", seed=2, parts=("unet",))
    write_lora(tiny_volume_source, folder / "words.safetensors", seed=3, parts=("text_encoder", "text_encoder_2"))
    return folder


def _worker(tiny_volume_source: Path, lora_dir: Path, graphed: bool) -> Worker:
    worker = Worker.start(cpu_settings(tiny_volume_source, loras=LoraSettings(lora_dir=str(lora_dir))), warmup=False)
    assert worker.pipe is not None, worker.startup_error
    if graphed:
        graph_unet(worker.pipe.unet, "cpu", RecordingCapture())
    return worker


@pytest.fixture(scope="module")
def graphed(tiny_volume_source: Path, lora_dir: Path) -> Worker:
    return _worker(tiny_volume_source, lora_dir, graphed=True)


@pytest.fixture(scope="module")
def eager(tiny_volume_source: Path, lora_dir: Path) -> Worker:
    return _worker(tiny_volume_source, lora_dir, graphed=False)


def run(worker: Worker, **fields: object) -> dict:
    reply = worker.handle({"id": "merge-test", "input": {**JOB, **fields}})
    assert "images" in reply, reply
    return reply


def pixels(reply: dict) -> np.ndarray:
    return np.asarray(decode(reply["images"][0]).convert("RGB")).astype(int)


def weights(worker: Worker) -> dict[str, torch.Tensor]:
    """Every UNet parameter and buffer by its base model name, PEFT's own layers aside, copied."""
    return {name.replace(".base_layer", ""): tensor.detach().clone()
            for name, tensor in worker.pipe.unet.state_dict().items() if "lora_" not in name}


@pytest.mark.parametrize("loras", [
    [{"name": "style", "scale": 0.8}],
    [{"name": "style", "scale": 1.0}, {"name": "grain", "scale": -0.7}],
    [{"name": "words", "scale": 1.2}],  # text encoders only: the UNet as it is
], ids=["one", "two-with-a-negative-scale", "text-encoders-only"])
def test_a_lora_job_replays_the_graph_and_draws_peft_s_image(graphed: Worker, eager: Worker, loras: list) -> None:
    plain = run(graphed)  # the shape's graph, captured by a plain job
    before = weights(graphed)
    merged = run(graphed, loras=loras)
    assert merged["timings"]["graph"] == "replayed"
    with peft_layers():
        peft = pixels(run(eager, loras=loras))
    for image in (pixels(merged), pixels(run(eager, loras=loras))):  # merged under the graph, and eagerly
        difference = np.abs(image - peft)
        assert difference.max() <= 2 and difference.mean() < 0.05  # merged weights round differently from PEFT's sum
    assert np.abs(pixels(merged) - pixels(plain)).mean() > 1  # the LoRA drew
    after = weights(graphed)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())  # bit for bit, fused q/k/v too
    again = run(graphed)
    assert again["images"] == plain["images"] and again["timings"]["graph"] == "replayed"


def test_a_merge_that_fails_part_way_leaves_every_weight_as_it_was(graphed: Worker,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.tuners.lora import Linear

    run(graphed, loras=[{"name": "style"}])  # loaded, so the failure is in the merge, not the load
    before = weights(graphed)
    plain = run(graphed)
    real, calls = Linear.get_delta_weight, []

    def fails_on_the_fifth(self, adapter: str) -> torch.Tensor:
        calls.append(adapter)
        if len(calls) == 5:
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real(self, adapter)

    monkeypatch.setattr(Linear, "get_delta_weight", fails_on_the_fifth)
    reply = graphed.handle({"id": "t", "input": {**JOB, "loras": [{"name": "style"}]}})
    assert "error" in reply and len(calls) == 5
    monkeypatch.undo()
    after = weights(graphed)
    assert all(torch.equal(after[name], tensor) for name, tensor in before.items())
    assert run(graphed)["images"] == plain["images"]


def test_the_originals_wait_on_the_device_up_to_the_budget_then_in_host_memory(graphed: Worker) -> None:
    """LORA_MERGE_DEVICE_MB: wherever the saved copies wait, the merged weights and those put back are the same."""
    from sdxl_worker.speed.lora_merge import mergeable_layers, merged_unet

    run(graphed, loras=[{"name": "style"}])  # loaded; off after the job
    pipe, before = graphed.pipe, weights(graphed)
    pipe.enable_lora()
    pipe.set_adapters([graphed.loras.loaded["style"].adapter], adapter_weights=[0.8])
    try:
        layers = mergeable_layers(pipe.unet)
        sizes = [layer.get_base_layer().weight.numel() * layer.get_base_layer().weight.element_size()
                 for layer in layers]
        total, merged = sum(sizes), []
        for budget in (0, total // 2, total):
            with merged_unet(pipe.unet, layers, budget) as saved:
                assert saved.device_bytes + saved.host_bytes == total and saved.device_bytes <= budget
                if budget in (0, total):
                    assert saved.host_bytes == total - budget
                else:
                    assert saved.device_bytes > 0 and saved.host_bytes > 0
                merged.append(weights(graphed))
            after = weights(graphed)
            assert all(torch.equal(after[name], tensor) for name, tensor in before.items())
    finally:
        pipe.disable_lora()
    assert all(torch.equal(merged[0][name], tensor) for name, tensor in merged[2].items())
    assert any(not torch.equal(merged[0][name], tensor) for name, tensor in before.items())


def test_a_lora_the_merge_cannot_take_runs_peft_s_layers_eagerly_and_says_so(graphed: Worker, eager: Worker) -> None:
    """Where mergeable_layers refuses (DoRA), the job bypasses the graph: PEFT's image, `graph: eager`, and the
    next plain job replays the graph bit for bit."""
    plain = run(graphed)
    with peft_layers():
        unmerged = run(graphed, loras=[{"name": "style", "scale": 0.8}])
        reference = run(eager, loras=[{"name": "style", "scale": 0.8}])
    assert unmerged["timings"]["graph"] == "eager"
    assert np.abs(pixels(unmerged) - pixels(reference)).max() <= 1
    again = run(graphed)
    assert again["images"] == plain["images"] and again["timings"]["graph"] == "replayed"
