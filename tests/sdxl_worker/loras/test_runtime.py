"""LoRA jobs through the worker: applied with their scales, gone after the job, every bad name one sentence."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dev.lora import lora_tensors, write_lora
from sdxl_worker.loras.files import LoraSettings
from sdxl_worker.serving.worker import Worker
from tests.helpers import assert_images_match, cpu_settings, decode

SMALL = {"prompt": "a photonic lighthouse", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 5}


@pytest.fixture(scope="module")
def lora_dir(tiny_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    write_lora(tiny_volume_source, folder / "photonic-style.safetensors", seed=1)
    write_lora(tiny_volume_source, folder / "photonic-style-kohya.safetensors", fmt="kohya", seed=1)
    write_lora(tiny_volume_source, folder / "grain.safetensors", seed=2, parts=("unet",))
    # The same LoRA with CLIPTextModel's names as transformers 5 gives them (no `text_model.`).
    save_file({k.replace("text_encoder.text_model.", "text_encoder."): v
               for k, v in lora_tensors(tiny_volume_source, seed=1).items()}, folder / "photonic-style-now.safetensors")
    return folder


@pytest.fixture(scope="module")
def lora_worker(tiny_volume_source: Path, lora_dir: Path) -> Worker:
    worker = Worker.start(cpu_settings(tiny_volume_source, loras=LoraSettings(lora_dir=str(lora_dir))))
    assert worker.pipe is not None, worker.startup_error
    return worker


def draw(worker: Worker, **fields: object) -> np.ndarray:
    reply = worker.handle({"id": "lora-test", "input": {**SMALL, **fields}})
    assert "images" in reply, reply
    return np.asarray(decode(reply["images"][0]).convert("RGB")).astype(int)


def test_a_lora_changes_the_image_and_the_base_model_returns_bit_identical(lora_worker: Worker) -> None:
    base = draw(lora_worker)
    reply = lora_worker.handle({"id": "t", "input": {**SMALL, "loras": [{"name": "photonic-style", "scale": 0.8}]}})
    assert reply["loras"] == [{"name": "photonic-style", "scale": 0.8}]
    styled = np.asarray(decode(reply["images"][0]).convert("RGB")).astype(int)
    assert np.abs(styled - base).mean() > 1
    assert np.array_equal(draw(lora_worker), base)
    assert lora_worker.handle({"id": "t", "input": SMALL})["loras"] == []


def test_scale_zero_is_the_base_model_and_scales_are_the_jobs_own(lora_worker: Worker) -> None:
    base = draw(lora_worker)
    assert np.array_equal(draw(lora_worker, loras=[{"name": "photonic-style", "scale": 0.0}]), base)
    weak, strong = (draw(lora_worker, loras=[{"name": "photonic-style", "scale": s}]) for s in (0.3, 1.5))
    assert np.abs(weak - base).mean() < np.abs(strong - base).mean()
    assert np.array_equal(draw(lora_worker, loras=[{"name": "photonic-style", "scale": 0.3}]), weak)


def test_two_loras_combine(lora_worker: Worker) -> None:
    style = draw(lora_worker, loras=[{"name": "photonic-style"}])
    grain = draw(lora_worker, loras=[{"name": "grain"}])
    both = draw(lora_worker, loras=[{"name": "photonic-style"}, {"name": "grain"}])
    assert not np.array_equal(both, style) and not np.array_equal(both, grain)


def test_a_kohya_file_draws_what_the_same_weights_in_diffusers_format_draw(lora_worker: Worker) -> None:
    assert np.array_equal(draw(lora_worker, loras=[{"name": "photonic-style-kohya"}]),
                          draw(lora_worker, loras=[{"name": "photonic-style"}]))


@pytest.mark.parametrize(("lora", "sentence"), [
    ({"name": ".."}, "Invalid input: loras.0.name: a LoRA name is its file's name without .safetensors"),
    ({"name": "../photonicfusion-sdxl/unet/diffusion_pytorch_model"}, "Invalid input: loras.0.name: a LoRA name"),
    ({"name": "/etc/passwd"}, "Invalid input: loras.0.name: a LoRA name"),
    ({"name": "photonic-stlye"}, "LoRA 'photonic-stlye' not found. Did you mean 'photonic-style'? Available: "),
    ({"name": "photonic-style", "scale": 2.5}, "Invalid input: loras.0.scale: Input should be less than or equal to 2"),
])
def test_each_bad_lora_is_one_sentence_and_the_worker_keeps_serving(lora_worker: Worker, lora: dict,
                                                                    sentence: str) -> None:
    base = draw(lora_worker)
    reply = lora_worker.handle({"id": "t", "input": {**SMALL, "loras": [lora]}})
    assert set(reply) == {"error"} and reply["error"].startswith(sentence) and "\n" not in reply["error"]
    assert np.array_equal(draw(lora_worker), base)


def test_broken_files_in_the_folder_are_refused_by_name(tiny_volume_source: Path, lora_dir: Path,
                                                        lora_worker: Worker) -> None:
    good = (lora_dir / "photonic-style.safetensors").read_bytes()
    (lora_dir / "cut.safetensors").write_bytes(good[: len(good) // 2])
    (lora_dir / "weights.safetensors").symlink_to(tiny_volume_source / "unet" / "diffusion_pytorch_model.safetensors")
    try:
        base = draw(lora_worker)
        for name, start in (("cut", "LoRA 'cut' is not a readable safetensors file: truncated"),
                            ("weights", "LoRA 'weights' links outside the LoRA folder")):
            reply = lora_worker.handle({"id": "t", "input": {**SMALL, "loras": [{"name": name}]}})
            assert reply["error"].startswith(start), reply
        assert np.array_equal(draw(lora_worker), base)
    finally:
        (lora_dir / "cut.safetensors").unlink()
        (lora_dir / "weights.safetensors").unlink()


def test_limits_per_job_and_file_size(tiny_volume_source: Path, lora_dir: Path) -> None:
    worker = Worker.start(cpu_settings(tiny_volume_source, loras=LoraSettings(
        lora_dir=str(lora_dir), lora_max_per_job=1, lora_max_mb=1)), warmup=False)
    reply = worker.handle({"id": "t", "input": {**SMALL, "loras": [{"name": "grain"}, {"name": "photonic-style"}]}})
    assert reply == {"error": "Invalid input: input: 2 LoRAs, over this endpoint's limit of 1 per job "
                              "(LORA_MAX_PER_JOB)."}
    write_lora(tiny_volume_source, lora_dir / "huge.safetensors", rank=160)
    try:
        reply = worker.handle({"id": "t", "input": {**SMALL, "loras": [{"name": "huge"}]}})
        assert reply["error"].startswith("LoRA 'huge' is ") and reply["error"].endswith(
            "MB, over this endpoint's limit of 1 MB (LORA_MAX_MB).")
    finally:
        (lora_dir / "huge.safetensors").unlink()


def test_the_cache_drops_the_least_recently_used_by_bytes(tiny_volume_source: Path, tmp_path: Path) -> None:
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        write_lora(tiny_volume_source, tmp_path / f"{name}.safetensors", rank=64, seed=seed)
    worker = Worker.start(cpu_settings(tiny_volume_source, loras=LoraSettings(lora_dir=str(tmp_path))), warmup=False)
    draw(worker, loras=[{"name": "a"}])
    one = worker.loras.held_bytes
    # Room for two: a and b stay, a is used again, so c's arrival drops b.
    worker.loras.settings = LoraSettings(lora_dir=str(tmp_path), lora_cache_mb=(2 * one) // 1_000_000 + 1)
    for name in ("b", "a", "c"):
        draw(worker, loras=[{"name": name}])
    assert list(worker.loras.loaded) == ["a", "c"] and worker.loras.held_bytes == 2 * one
    assert set(worker.pipe.get_list_adapters()["unet"]) == {worker.loras.loaded[n].adapter for n in ("a", "c")}


def test_a_lora_changed_on_the_volume_is_read_again(tiny_volume_source: Path, tmp_path: Path) -> None:
    write_lora(tiny_volume_source, tmp_path / "v.safetensors", seed=1)
    worker = Worker.start(cpu_settings(tiny_volume_source, loras=LoraSettings(lora_dir=str(tmp_path))), warmup=False)
    first = draw(worker, loras=[{"name": "v"}])
    write_lora(tiny_volume_source, tmp_path / "v.safetensors", seed=9)
    second = draw(worker, loras=[{"name": "v"}])
    assert not np.array_equal(first, second) and len(worker.pipe.get_list_adapters()["unet"]) == 1


def test_a_lora_rewritten_in_place_with_its_size_and_time_is_read_again(tiny_volume_source: Path,
                                                                         tmp_path: Path) -> None:
    """Same size, modification time set back (as `touch -r` or a sync tool does), even the same inode: new weights."""
    path = write_lora(tiny_volume_source, tmp_path / "v.safetensors", seed=1)
    worker = Worker.start(cpu_settings(tiny_volume_source, loras=LoraSettings(lora_dir=str(tmp_path))), warmup=False)
    first = draw(worker, loras=[{"name": "v"}])
    before = path.stat()
    other = write_lora(tiny_volume_source, tmp_path / "other.bin", seed=9).read_bytes()
    with path.open("r+b") as handle:  # in place: the same inode
        handle.write(other)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    assert not np.array_equal(draw(worker, loras=[{"name": "v"}]), first)


def _rewrite(source: Path, out: Path, change) -> None:
    save_file({name: change(tensor) for name, tensor in load_file(source).items()}, out)


def test_weights_that_cannot_draw_are_refused_in_one_short_sentence(tiny_volume_source: Path, lora_dir: Path,
                                                                    tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Integer, bool, conv-shaped, NaN or Inf weights where linear ones belong: one sentence each, the log a line
    each (the libraries' report once added 42,000-65,000 characters per job), the worker still serving."""
    source = lora_dir / "photonic-style.safetensors"
    folder = tmp_path / "hostile"
    folder.mkdir()
    for name, change in {
        "ints": lambda x: x.to(torch.int64), "bools": lambda x: x > 0,
        "conv": lambda x: x[..., None, None] if x.dim() == 2 else x,
        "nan": lambda x: torch.full_like(x, float("nan")), "inf": lambda x: torch.full_like(x, float("inf")),
    }.items():
        _rewrite(source, folder / f"{name}.safetensors", change)
    worker = Worker.start(cpu_settings(tiny_volume_source, loras=LoraSettings(lora_dir=str(folder))), warmup=False)
    base = draw(worker)
    sentences = {"ints": "holds I64 tensors", "bools": "holds BOOL tensors",
                 "conv": "does not fit this model: size mismatch for ", "nan": "holds weights that are not finite",
                 "inf": "holds weights that are not finite"}
    for name, words in sentences.items():
        caplog.clear()
        with caplog.at_level("INFO"):
            reply = worker.handle({"id": name, "input": {**SMALL, "loras": [{"name": name}]}})
        assert reply["error"].startswith(f"LoRA {name!r} {words}") and len(reply["error"]) < 400, reply
        assert sum(len(record.getMessage()) for record in caplog.records) < 1000, name
    assert np.array_equal(draw(worker), base)


def test_latents_that_go_non_finite_return_no_image_and_say_why(tiny_volume_source: Path, lora_dir: Path,
                                                                 tmp_path: Path) -> None:
    """Finite weights far too large overflow while sampling: no flat image is served, the sentence names the LoRA."""
    _rewrite(lora_dir / "photonic-style.safetensors", tmp_path / "loud.safetensors", lambda x: x * 1e30)
    worker = Worker.start(cpu_settings(tiny_volume_source, loras=LoraSettings(lora_dir=str(tmp_path))), warmup=False)
    reply = worker.handle({"id": "loud", "input": {**SMALL, "loras": [{"name": "loud", "scale": 2.0}]}})
    assert reply == {"error": "Generation failed: the latents went non-finite (NaN or Inf) by step 1 of 2, so no image "
                              "is returned (it would be flat); it ran with LoRA 'loud' at 2: try a lower scale or the "
                              "job without it."}
    assert "images" in worker.handle({"id": "after", "input": SMALL})


def test_with_no_cache_nothing_stays_loaded(tiny_volume_source: Path, lora_dir: Path) -> None:
    worker = Worker.start(cpu_settings(tiny_volume_source, loras=LoraSettings(
        lora_dir=str(lora_dir), lora_cache_mb=0)), warmup=False)
    base = draw(worker)
    styled = draw(worker, loras=[{"name": "photonic-style"}])
    assert worker.loras.loaded == {} and not np.array_equal(styled, base)
    assert np.array_equal(draw(worker), base)


def test_loras_draw_the_same_on_every_layout(layout_volume_source: Path, lora_dir: Path, lora_worker: Worker) -> None:
    """A published volume (transformers 4 text encoders, sharded UNet) loaded by default takes the same LoRAs, in
    both formats and on both text encoders, as the volume this project writes: the same images."""
    worker = Worker.start(cpu_settings(layout_volume_source, loras=LoraSettings(lora_dir=str(lora_dir))))
    assert worker.pipe is not None, worker.startup_error
    for loras in ([], [{"name": "photonic-style"}], [{"name": "photonic-style-kohya", "scale": 0.7}]):
        assert_images_match(draw(worker, loras=loras), draw(lora_worker, loras=loras))
    assert np.array_equal(draw(worker, loras=[{"name": "photonic-style-now"}]),
                          draw(worker, loras=[{"name": "photonic-style"}]))
    assert not np.array_equal(draw(worker), draw(worker, loras=[{"name": "photonic-style"}]))
