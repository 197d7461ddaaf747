"""ControlNets from CONTROLNET_DIR: each steers the image, scale 0 is the plain job, two combine, start and end
matter, text to image, image to image and inpainting alike, graphed like any shape, and every bad folder, name or
control image is one sentence while the worker keeps serving."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file

from dev.controlnet import write_controlnet
from sdxl_worker.controlnets.files import ControlNetSettings
from sdxl_worker.serving.worker import Worker
from tests.helpers import RecordingCapture, cpu_settings, decode
from tests.sdxl_worker.contract.test_image_input import png_header_only

JOB = {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 3, "seed": 3}


def encoded(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def rings(size: tuple[int, int] = (256, 256)) -> str:
    image = Image.new("RGB", size, "black")
    ImageDraw.Draw(image).ellipse((size[0] // 4, size[1] // 4, size[0] * 3 // 4, size[1] * 3 // 4), outline="white",
                                  width=8)
    return encoded(image)


def _edited(source: Path, target: Path, **config: object) -> None:
    shutil.copytree(source, target)
    data = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**data, **config}))


@pytest.fixture(scope="module")
def folder(tiny_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("controlnets")
    write_controlnet(tiny_volume_source, folder / "edges", seed=1)
    write_controlnet(tiny_volume_source, folder / "depth", seed=2, fp16=True)  # its fp16 file only
    _edited(folder / "edges", folder / "sd15", cross_attention_dim=768, addition_embed_type=None)
    _edited(folder / "edges", folder / "wider", block_out_channels=[64, 128])
    _edited(folder / "edges", folder / "a-unet", _class_name="UNet2DConditionModel")
    shutil.copytree(folder / "edges", folder / "cut")
    weights = folder / "cut" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    shutil.copytree(folder / "edges", folder / "short")
    tensors = load_file(folder / "short" / "diffusion_pytorch_model.safetensors")
    save_file(dict(list(tensors.items())[1:]), folder / "short" / "diffusion_pytorch_model.safetensors")
    outside = tmp_path_factory.mktemp("outside")
    write_controlnet(tiny_volume_source, outside / "elsewhere", seed=3)
    os.symlink(outside / "elsewhere", folder / "escape")
    _edited(folder / "edges", folder / "deep", transformer_layers_per_block=[1, 3000])
    _edited(folder / "edges", folder / "vast", layers_per_block=10**9)
    _edited(folder / "edges", folder / "typed", layers_per_block="2")
    _edited(folder / "edges", folder / "nested")
    config = (folder / "nested" / "config.json").read_text()
    (folder / "nested" / "config.json").write_text(config[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    shutil.copytree(folder / "edges", folder / "nan")
    tensors = load_file(folder / "nan" / "diffusion_pytorch_model.safetensors")
    last = sorted(tensors)[-1]
    save_file({**tensors, last: torch.full_like(tensors[last], float("nan"))},
              folder / "nan" / "diffusion_pytorch_model.safetensors")
    (folder / "linked-weights").mkdir()  # a folder of its own whose weights file is a link out of CONTROLNET_DIR
    shutil.copy(folder / "edges" / "config.json", folder / "linked-weights" / "config.json")
    os.symlink(outside / "elsewhere" / "diffusion_pytorch_model.safetensors",
               folder / "linked-weights" / "diffusion_pytorch_model.safetensors")
    return folder


@pytest.fixture(scope="module")
def served(tiny_volume_source: Path, folder: Path) -> Worker:
    worker = Worker.start(cpu_settings(tiny_volume_source, controlnets=ControlNetSettings(
        controlnet_dir=str(folder), controlnet_max_per_job=2)), warmup=False)
    assert worker.pipe is not None, worker.startup_error
    return worker


def run(worker: Worker, **fields: object) -> dict:
    return worker.handle({"id": "cn", "input": {**JOB, **fields}})


def pixels(reply: dict) -> np.ndarray:
    assert "images" in reply, reply
    return np.asarray(decode(reply["images"][0]).convert("RGB")).astype(int)


def steer(name: str = "edges", **fields: object) -> dict:
    return {"name": name, "image": rings(), **fields}


def test_a_controlnet_steers_the_image_and_scale_0_is_the_plain_job(served: Worker) -> None:
    plain = run(served)
    steered = run(served, controlnets=[steer()])
    assert steered["controlnets"] == [{"name": "edges", "scale": 1.0, "start": 0.0, "end": 1.0, "preprocess": "none"}]
    assert np.abs(pixels(steered) - pixels(plain)).mean() > 1 and plain["controlnets"] == []
    assert np.abs(pixels(run(served, controlnets=[steer(scale=0.0)])) - pixels(plain)).max() <= 1
    assert run(served)["images"] == plain["images"]  # the next plain job, bit for bit


def test_two_combine_and_start_end_and_canny_change_the_image(served: Worker) -> None:
    one, other = pixels(run(served, controlnets=[steer()])), pixels(run(served, controlnets=[steer("depth")]))
    both = pixels(run(served, controlnets=[steer(), steer("depth", scale=0.7)]))
    assert min(np.abs(both - one).mean(), np.abs(both - other).mean()) > 0.5
    late = pixels(run(served, controlnets=[steer(start=0.5)]))
    assert np.abs(late - one).mean() > 0.5
    edges = pixels(run(served, controlnets=[steer(preprocess="canny")]))
    assert np.abs(edges - one).mean() > 0.5  # the ring's two outlines steer otherwise than the ring


def test_each_controlnets_scale_and_end_reach_the_pipeline(served: Worker) -> None:
    """Not only scale 0: each scale draws its own image (none clamped), `end` below 1 stops steering early, and a
    second ControlNet's scale counts too."""
    plain, one = pixels(run(served)), pixels(run(served, controlnets=[steer()]))
    by_scale = {scale: pixels(run(served, controlnets=[steer(scale=scale)])) for scale in (0.5, 2.0)}
    images = [plain, by_scale[0.5], one, by_scale[2.0]]
    assert all(np.abs(a - b).mean() > 0.5 for i, a in enumerate(images) for b in images[i + 1:])
    assert np.abs(pixels(run(served, controlnets=[steer(end=0.5)])) - one).mean() > 0.5
    second = [pixels(run(served, controlnets=[steer(), steer("depth", scale=scale)])) for scale in (0.7, 1.4)]
    assert np.abs(second[0] - second[1]).mean() > 0.5


def test_canny_draws_the_edges_white_on_black() -> None:
    from sdxl_worker.controlnets.runtime import canny

    picture = Image.new("RGB", (64, 64), "black")
    ImageDraw.Draw(picture).rectangle((16, 16, 47, 47), fill=(200, 180, 40))
    edges = np.asarray(canny(picture))
    assert edges.shape == (64, 64, 3) and set(np.unique(edges)) == {0, 255}
    rows, cols = np.nonzero(edges[..., 0])
    near_border = (np.minimum(np.abs(rows - 16), np.abs(rows - 47)) <= 1) | (
        np.minimum(np.abs(cols - 16), np.abs(cols - 47)) <= 1)
    assert len(rows) > 100 and near_border.all()  # the square's outline, nothing inside or outside it


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_image_to_image_and_inpainting_take_controlnets_too(served: Worker, mode: str) -> None:
    picture = encoded(Image.new("RGB", (320, 256), (40, 120, 200)))
    fields: dict = {"image": picture, "strength": 0.8, "width": 320, "height": 256}
    if mode == "inpaint":
        mask = Image.new("L", (320, 256), 0)
        mask.paste(255, (0, 0, 160, 256))
        fields["mask"] = encoded(mask)
    plain = run(served, **fields)
    steered = run(served, **fields, controlnets=[steer(image=rings((200, 100)))])  # resized to the job's 320x256
    assert steered["mode"] == plain["mode"] == mode and (steered["width"], steered["height"]) == (320, 256)
    assert np.abs(pixels(steered) - pixels(plain)).mean() > 0.5


@pytest.mark.parametrize(("fields", "sentence"), [
    ({"controlnets": [steer("sd15")]}, "ControlNet 'sd15' is an SD 1.5 ControlNet; this model is SDXL (an SDXL "
                                       "ControlNet reads 48-wide text)."),
    ({"controlnets": [steer("wider")]}, "ControlNet 'wider' is for another model: its block_out_channels is [64, "
                                        "128], this model's UNet's [32, 64]."),
    ({"controlnets": [steer("a-unet")]}, "ControlNet 'a-unet' is a UNet2DConditionModel, not a ControlNet"),
    ({"controlnets": [steer("cut")]}, "ControlNet 'cut': diffusion_pytorch_model.safetensors is not a readable "
                                      "safetensors file: truncated"),
    ({"controlnets": [steer("short")]}, "ControlNet 'short': diffusion_pytorch_model.safetensors: 1 tensor(s) the "
                                        "config needs are missing"),
    ({"controlnets": [steer("escape")]}, "ControlNet 'escape' links outside the ControlNet folder"),
    ({"controlnets": [steer("deep")]}, "ControlNet 'deep': config.json has transformer_layers_per_block [1, 3000]: a "
                                       "whole number from 0 to 1, or 2 of them, at most the UNet's."),
    ({"controlnets": [steer("vast")]}, "ControlNet 'vast': config.json has layers_per_block 1000000000: a whole "
                                       "number from 0 to 1, or 2 of them, at most the UNet's."),
    ({"controlnets": [steer("typed")]}, "ControlNet 'typed': config.json has layers_per_block '2': a whole number"),
    ({"controlnets": [steer("nested")]}, "ControlNet 'nested' has no readable config.json (maximum recursion depth"),
    ({"controlnets": [steer("nan")]}, "ControlNet 'nan': diffusion_pytorch_model.safetensors holds weights that are "
                                      "not finite (NaN or Inf), e.g. '"),
    ({"controlnets": [steer("linked-weights")]}, "ControlNet 'linked-weights': diffusion_pytorch_model.safetensors "
                                                 "links outside the ControlNet folder; only files inside "),
    ({"controlnets": [steer("edgse")]}, "ControlNet 'edgse' not found. Did you mean 'edges'? Available:"),
    ({"controlnets": [steer("../edges")]}, "Invalid input: controlnets.0.name: a ControlNet name is its folder's "
                                           "name"),
    ({"controlnets": [steer(image=png_header_only(40000, 40000))]}, "Invalid input: controlnets.0.image declares "
                                                                    "more pixels than Pillow decodes safely"),
    ({"controlnets": [steer(image="not base64!")]}, "Invalid input: controlnets.0.image is not base64"),
    ({"controlnets": [steer(), steer()]}, "Invalid input: input: ControlNet 'edges' is named twice"),
    ({"controlnets": [steer(), steer("depth"), steer("sd15")]}, "Invalid input: input: 3 ControlNets, over this "
                                                                "endpoint's limit of 2 per job"),
    ({"controlnets": [steer(start=0.6, end=0.4)]}, "Invalid input: controlnets.0: start 0.6 must be below end 0.4"),
    ({"controlnets": [{**steer(), "strength": 1}]}, "Invalid input: unknown field 'strength' in a ControlNet "
                                                    "(allowed: name, image, scale, start, end, preprocess)."),
])
def test_a_bad_controlnet_is_one_sentence_and_the_worker_keeps_serving(served: Worker, fields: dict,
                                                                       sentence: str) -> None:
    reply = run(served, **fields)
    assert set(reply) == {"error"} and reply["error"].startswith(sentence), reply
    assert len(reply["error"]) < 400
    assert "images" in run(served, controlnets=[steer()])


def test_a_controlnet_changed_on_the_volume_is_loaded_again(served: Worker, tiny_volume_source: Path,
                                                           folder: Path) -> None:
    write_controlnet(tiny_volume_source, folder / "changing", seed=4)
    first = run(served, controlnets=[steer("changing")])
    write_controlnet(tiny_volume_source, folder / "changing", seed=5)
    assert run(served, controlnets=[steer("changing")])["images"] != first["images"]


def test_the_cache_keeps_what_fits_and_drops_the_rest(tiny_volume_source: Path, folder: Path) -> None:
    worker = Worker.start(cpu_settings(tiny_volume_source, controlnets=ControlNetSettings(
        controlnet_dir=str(folder), controlnet_cache_mb=0)), warmup=False)
    assert "images" in run(worker, controlnets=[steer()]) and worker.controlnets.loaded == {}


def test_a_controlnet_job_is_graphed_as_its_own_shape(tiny_volume_source: Path, folder: Path) -> None:
    from sdxl_worker.speed.cuda_graphs import graph_unet

    eager = Worker.start(cpu_settings(tiny_volume_source, controlnets=ControlNetSettings(controlnet_dir=str(folder))),
                         warmup=False)
    expected = run(eager, controlnets=[steer()])["images"]
    graphed = Worker.start(cpu_settings(tiny_volume_source, controlnets=ControlNetSettings(
        controlnet_dir=str(folder))), warmup=False)
    graph_unet(graphed.pipe.unet, "cpu", RecordingCapture())
    assert run(graphed)["timings"]["graph"] == "captured"
    first, second = run(graphed, controlnets=[steer()]), run(graphed, controlnets=[steer(scale=0.5)])
    assert (first["timings"]["graph"], second["timings"]["graph"]) == ("captured", "replayed")
    assert first["images"] == expected
    assert run(graphed)["timings"]["graph"] == "replayed"
