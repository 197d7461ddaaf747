"""IP-Adapter image prompts from IP_ADAPTER_DIR: the image prompts the picture, scale 0 is the plain job, the
adapter is switched out after each job (the next plain job bit for bit the one before, graphed as before), it
combines with image to image, LoRAs and ControlNets, and every bad file or image is one sentence while the
worker keeps serving."""

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
from PIL import Image
from safetensors.torch import load_file, save_file

from dev.controlnet import write_controlnet
from dev.ip_adapter import adapter_tensors, write_ip_adapter
from dev.lora import write_lora
from sdxl_worker.controlnets.files import ControlNetSettings
from sdxl_worker.ip_adapters.files import IpAdapterSettings
from sdxl_worker.loras.files import LoraSettings
from sdxl_worker.serving.worker import Worker
from tests.helpers import RecordingCapture, cpu_settings, decode

JOB = {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 3, "seed": 9}


def encoded(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


RED, BLUE = encoded(Image.new("RGB", (300, 200), (220, 40, 30))), encoded(Image.new("RGB", (64, 64), (20, 40, 230)))


@pytest.fixture(scope="module")
def folders(tiny_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ip")
    folder = root / "ip-adapter"
    write_ip_adapter(tiny_volume_source, folder, "ip-adapter_sdxl", seed=1)
    tensors = adapter_tensors(tiny_volume_source, seed=2)
    save_file({**tensors, "image_proj.proj.weight": torch.zeros(4 * 64, 24)}, folder / "other-model.safetensors")
    save_file({**tensors, "image_proj.proj.weight": torch.zeros(4 * 48, 16)}, folder / "other-encoder.safetensors")
    save_file({"unet.something.weight": torch.zeros(2, 2)}, folder / "not-one.safetensors")
    (folder / "cut.safetensors").write_bytes((folder / "ip-adapter_sdxl.safetensors").read_bytes()[:200])
    outside = root / "outside.safetensors"
    shutil.copy(folder / "ip-adapter_sdxl.safetensors", outside)
    os.symlink(outside, folder / "escape.safetensors")
    save_file({**tensors, "image_proj.proj.weight": torch.full_like(tensors["image_proj.proj.weight"], float("nan"))},
              folder / "nan.safetensors")
    write_ip_adapter(tiny_volume_source, root / "no-encoder", seed=3)
    shutil.rmtree(root / "no-encoder" / "image_encoder")
    write_ip_adapter(tiny_volume_source, root / "nan-encoder", seed=6)
    encoder_file = root / "nan-encoder" / "image_encoder" / "model.safetensors"
    encoder = load_file(encoder_file)
    first = sorted(encoder)[0]
    save_file({**encoder, first: torch.full_like(encoder[first], float("inf"))}, encoder_file)
    write_lora(tiny_volume_source, root / "loras" / "style.safetensors", seed=4)
    write_controlnet(tiny_volume_source, root / "controlnets" / "edges", seed=5)
    for broken in ("short-encoder", "deeper-encoder", "vast-encoder"):
        write_ip_adapter(tiny_volume_source, root / broken, seed=7)
    short = root / "short-encoder" / "image_encoder" / "model.safetensors"
    save_file(dict(sorted(load_file(short).items())[1:]), short)
    for broken, layers in (("deeper-encoder", None), ("vast-encoder", 10**9)):
        config_path = root / broken / "image_encoder" / "config.json"
        config = json.loads(config_path.read_text())
        config["num_hidden_layers"] = layers or config["num_hidden_layers"] + 1
        config_path.write_text(json.dumps(config))
    return {"ip": folder, "no-encoder": root / "no-encoder", "nan-encoder": root / "nan-encoder",
            "short-encoder": root / "short-encoder", "deeper-encoder": root / "deeper-encoder",
            "vast-encoder": root / "vast-encoder", "loras": root / "loras", "controlnets": root / "controlnets"}


def _worker(source: Path, folders: dict[str, Path], ip: str = "ip") -> Worker:
    worker = Worker.start(cpu_settings(
        source, ip_adapter=IpAdapterSettings(ip_adapter_dir=str(folders[ip])),
        loras=LoraSettings(lora_dir=str(folders["loras"])),
        controlnets=ControlNetSettings(controlnet_dir=str(folders["controlnets"]))), warmup=False)
    assert worker.pipe is not None, worker.startup_error
    return worker


@pytest.fixture(scope="module")
def served(tiny_volume_source: Path, folders: dict[str, Path]) -> Worker:
    return _worker(tiny_volume_source, folders)


def run(worker: Worker, **fields: object) -> dict:
    return worker.handle({"id": "ip", "input": {**JOB, **fields}})


def pixels(reply: dict) -> np.ndarray:
    assert "images" in reply, reply
    return np.asarray(decode(reply["images"][0]).convert("RGB")).astype(int)


def prompt(image: str = RED, **fields: object) -> dict:
    return {"name": "ip-adapter_sdxl", "image": image, **fields}


def test_an_image_prompt_steers_the_picture_and_is_switched_out_after(served: Worker) -> None:
    plain = run(served)
    red, blue = run(served, ip_adapter=prompt(scale=1.0)), run(served, ip_adapter=prompt(BLUE, scale=1.0))
    assert red["ip_adapter"] == {"name": "ip-adapter_sdxl", "scale": 1.0} and "ip_adapter" not in plain
    assert np.abs(pixels(red) - pixels(plain)).mean() > 1 and np.abs(pixels(red) - pixels(blue)).mean() > 0.5
    assert np.abs(pixels(run(served, ip_adapter=prompt(scale=0.0))) - pixels(plain)).max() <= 1
    assert run(served)["images"] == plain["images"]  # the next plain job, bit for bit
    unet = served.pipe.unet
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert served.pipe.image_encoder is None and served.pipelines["img2img"].image_encoder is None
    assert not any("IPAdapter" in type(p).__name__ for p in unet.attn_processors.values())


def test_it_combines_with_image_to_image_a_lora_and_a_controlnet(served: Worker) -> None:
    picture = encoded(Image.new("RGB", (256, 256), (40, 120, 200)))
    for fields in ({"image": picture, "strength": 0.7}, {"loras": [{"name": "style"}]},
                   {"controlnets": [{"name": "edges", "image": RED}]}):
        without, with_prompt = run(served, **fields), run(served, **fields, ip_adapter=prompt())
        assert np.abs(pixels(with_prompt) - pixels(without)).mean() > 0.5, fields
    assert run(served)["images"] == run(served)["images"]


def test_an_image_prompt_job_runs_eagerly_and_the_graph_replays_after(tiny_volume_source: Path,
                                                                      folders: dict[str, Path]) -> None:
    from sdxl_worker.speed.cuda_graphs import graph_unet

    worker = _worker(tiny_volume_source, folders)
    graph_unet(worker.pipe.unet, "cpu", RecordingCapture())
    plain = run(worker)
    prompted = run(worker, ip_adapter=prompt())
    assert (plain["timings"]["graph"], prompted["timings"]["graph"]) == ("captured", "eager")
    again = run(worker)
    assert again["images"] == plain["images"] and again["timings"]["graph"] == "replayed"


@pytest.mark.parametrize(("fields", "sentence"), [
    ({"ip_adapter": prompt(name="other-model")}, "IP-Adapter 'other-model' is for another model: it writes 64-wide "
                                                 "image tokens, this model's UNet reads 48-wide ones."),
    ({"ip_adapter": prompt(name="other-encoder")}, "IP-Adapter 'other-encoder' needs another image encoder: it reads "
                                                   "16-wide projected embedding"),
    ({"ip_adapter": prompt(name="not-one")}, "IP-Adapter 'not-one' is not an IP-Adapter"),
    ({"ip_adapter": prompt(name="cut")}, "IP-Adapter 'cut' is not a readable safetensors file"),
    ({"ip_adapter": prompt(name="escape")}, "IP-Adapter 'escape' links outside the IP-Adapter folder"),
    ({"ip_adapter": prompt(name="nan")}, "IP-Adapter 'nan': nan.safetensors holds weights that are not finite (NaN "
                                         "or Inf), e.g. 'image_projection_layers.0.image_embeds.weight': it would "
                                         "draw a flat image."),
    ({"ip_adapter": prompt(name="nope")}, "IP-Adapter 'nope' not found in"),
    ({"ip_adapter": prompt(name="../x")}, "Invalid input: ip_adapter.name: an IP-Adapter name is its file's name"),
    ({"ip_adapter": prompt(image="http://example.com/a.png")}, "Invalid input: ip_adapter.image is a URL"),
    ({"ip_adapter": {**prompt(), "weight": 1}}, "Invalid input: unknown field 'weight' in the IP-Adapter request"),
])
def test_a_bad_image_prompt_is_one_sentence_and_the_worker_keeps_serving(served: Worker, fields: dict,
                                                                         sentence: str) -> None:
    reply = run(served, **fields)
    assert set(reply) == {"error"} and reply["error"].startswith(sentence), reply
    assert "images" in run(served, ip_adapter=prompt())


def test_with_unfused_attention_the_processors_go_back_after_an_image_prompt(tiny_volume_source: Path,
                                                                            folders: dict[str, Path]) -> None:
    """FUSE_QKV=0: no fused-projection restore to hide a processor left in the UNet after the job."""
    from sdxl_worker.speed.options import SpeedOptions

    worker = Worker.start(cpu_settings(tiny_volume_source, speed=SpeedOptions(fuse_qkv=False),
                                       ip_adapter=IpAdapterSettings(ip_adapter_dir=str(folders["ip"]))), warmup=False)
    assert worker.pipe is not None, worker.startup_error
    before = {name: type(processor) for name, processor in worker.pipe.unet.attn_processors.items()}
    plain = run(worker)["images"]
    assert "images" in run(worker, ip_adapter=prompt())
    assert {name: type(processor) for name, processor in worker.pipe.unet.attn_processors.items()} == before
    assert run(worker)["images"] == plain


@pytest.mark.parametrize(("broken", "sentence"), [
    ("short-encoder", "The IP-Adapter image encoder (image_encoder/model.safetensors) is not the model its config.json "
                      "describes: 1 tensor(s) the config needs are missing, e.g. "),
    ("deeper-encoder", "The IP-Adapter image encoder (image_encoder/model.safetensors) is not the model its "
                       "config.json describes: "),
    ("vast-encoder", "The IP-Adapter image encoder's config.json has num_hidden_layers 1000000000, not a whole "
                     "number from 1 to 96."),
])
def test_an_image_encoder_unlike_its_config_is_refused_before_loading(tiny_volume_source: Path,
                                                                      folders: dict[str, Path], broken: str,
                                                                      sentence: str) -> None:
    """The libraries would fill what the weights lack with random values and serve the job."""
    worker = _worker(tiny_volume_source, folders, ip=broken)
    reply = run(worker, ip_adapter=prompt())
    assert set(reply) == {"error"} and reply["error"].startswith(sentence), reply
    assert "images" in run(worker)


def test_a_non_finite_image_encoder_is_named_and_not_kept(tiny_volume_source: Path, folders: dict[str, Path]) -> None:
    worker = _worker(tiny_volume_source, folders, ip="nan-encoder")
    for _ in range(2):  # refused again, not kept for the next job
        error = run(worker, ip_adapter=prompt())["error"]
        assert error.startswith("IP-Adapter 'ip-adapter_sdxl': the image encoder (image_encoder/model.safetensors) "
                                "holds weights that are not finite (NaN or Inf), e.g. "), error
    assert "images" in run(worker)


def test_without_its_image_encoder_an_adapter_is_refused(tiny_volume_source: Path, folders: dict[str, Path]) -> None:
    worker = _worker(tiny_volume_source, folders, ip="no-encoder")
    assert run(worker, ip_adapter=prompt())["error"].startswith("IP-Adapters need their CLIP image encoder")
    assert "images" in run(worker)
