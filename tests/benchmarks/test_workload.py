"""The workload mix at tiny scale on the CPU, with CUDA graphs recorded as on a GPU: every kind of job it holds runs
on both sides, each new shape is captured once in its first job and every warm job of every kind replays a graph
(LoRA, long prompt, image to image and guidance-free distilled-LoRA jobs included); the report shows the kinds and
the mix's throughput."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.report import render
from benchmarks.results import Run
from benchmarks.stages.generation import worker_settings
from benchmarks.stages.workload import FAST_LORA, LORA, MIX, SAMPLERS, measure_workload, mix_order, scaled
from sdxl_worker.speed.cuda_graphs import graph_unet
from tests.helpers import RecordingCapture


def test_the_mix_is_the_realistic_one_the_issue_names() -> None:
    order = mix_order()
    assert len(order) == 24 and order == mix_order()  # fixed
    assert sum(kind.lora == LORA for kind, _ in order) == 6 and sum(kind.long_prompt for kind, _ in order) == 3
    assert {kind.images for kind, _ in order} >= {1, 2, 4}
    assert {sampler for kind, sampler in order if kind.guidance > 0} == set(SAMPLERS)
    # Fast sampling: the distilled LoRAs' recipes, guidance off, their own steps and samplers.
    fast = {(kind.steps, sampler) for kind, sampler in order if kind.lora == FAST_LORA}
    assert fast == {(4, "euler_trailing"), (8, "lcm")}
    assert all(kind.guidance == 0 for kind, _ in order if kind.lora == FAST_LORA)
    assert len({(kind.width, kind.height) for kind, _ in order}) >= 4
    # Scaled down, the shapes stay distinct and every side is one a job may ask for.
    shapes = {(kind.width, kind.height): (scaled(kind.width, 256), scaled(kind.height, 256)) for kind, _ in MIX}
    assert len(set(shapes.values())) == len(shapes)
    assert all(side >= 256 and side % 32 == 0 for pair in shapes.values() for side in pair)
    assert all(scaled(side, 1024) == side for pair in shapes for side in pair)


@pytest.mark.slow
def test_every_kind_of_job_replays_a_graph_once_its_shape_is_captured(tiny_volume_source: Path,
                                                                      tmp_path: Path) -> None:
    capture = RecordingCapture()
    settings = worker_settings(tiny_volume_source, "cpu", 256, {})
    result = measure_workload(settings, 256, 2, 1, tmp_path / "loras",
                              on_start=lambda worker: graph_unet(worker.pipe.unet, "cpu", capture))
    kinds = {kind.kind: kind for kind in result.kinds}
    assert list(kinds) == [kind.name for kind, _ in MIX]
    assert all(kind.graph == "replayed" for kind in kinds.values()), {k.kind: k.graph for k in kinds.values()}
    # One graph per UNet input shape: six sizes and image counts, the long prompt's three chunks of text, and
    # guidance off (a batch of one image, not two).
    assert result.graphs_kept == capture.captures == 8
    assert sum(kind.first_graph == "captured" for kind in kinds.values()) <= 8
    assert kinds["4 images 1024x1024"].first_graph == "captured"
    fast = [kind for kind in kinds.values() if kind.kind.startswith(("4 steps", "8 steps"))]
    assert len(fast) == 2 and "captured" in {kind.first_graph for kind in fast}
    assert all(len(kind.stock.runs) == len(kind.ours.runs) == count for (_, count), kind in
               zip(MIX, result.kinds, strict=True))
    assert result.images_per_pass == 29 and result.images_per_hour(result.ours_pass) > 0
    table = render(Run({"size": 256, "steps": 2, "suite": ["workload"], "device": "cpu"}, entries=[("ours", result)]))
    assert "| LoRA rank 32 1024x1024 | 352x352x1 | 4 |" in table and "replayed |" in table
    assert "images/hour" in table and "stock truncates it to 77 tokens" in table
    assert "| 4 steps, guidance 0, LoRA rank 64 1024x1024 | 352x352x1 | 2 |" in table
    assert "SDXL-Lightning's recipe: euler_trailing" in table
