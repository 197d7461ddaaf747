"""The worker as RunPod calls it: output contract, seeds, formats, progress, image input, its start and its failure
replies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from sdxl_worker.serving import worker as worker_module
from sdxl_worker.serving.models import start_from_env
from sdxl_worker.serving.worker import Worker
from tests.helpers import cpu_settings, decode, png_b64

SMALL = {"prompt": "a photonic lighthouse", "width": 256, "height": 256, "num_inference_steps": 3}


def run(worker: Worker, **fields: object) -> dict:
    """A job of SMALL's fields and `fields` (one given as None is left out)."""
    job = {key: value for key, value in {**SMALL, **fields}.items() if value is not None}
    return worker.handle({"id": "test-job", "input": job})


def pixels(b64: str) -> np.ndarray:
    return np.asarray(decode(b64).convert("RGB")).astype(int)


def test_output_contract(worker: Worker) -> None:
    reply = run(worker, seed=11, width=320, height=256)
    assert set(reply) == {"images", "output", "seed", "seeds", "width", "height", "mode", "loras", "controlnets",
                          "embeddings", "prompt_tokens", "format", "timings", "model"}
    assert reply["output"] == "base64" and reply["mode"] == "txt2img"
    assert reply["prompt_tokens"] == {"prompt": 4, "dropped": 0}  # a, pho, tonic, lighthouse
    assert (reply["seed"], reply["seeds"], reply["width"], reply["height"], reply["format"]) == (11, [11], 320, 256,
                                                                                                 "png")
    assert decode(reply["images"][0]).size == (320, 256)
    assert set(reply["timings"]) == {"inference_s", "encode_s", "total_s"}
    assert reply["timings"]["total_s"] >= reply["timings"]["inference_s"] > 0
    assert reply["model"] == {"name": "default", "variant": "standard", "dtype": "float32", "device": "cpu",
                              "source": worker.settings.model_path}


def test_each_reply_says_how_its_unet_ran_under_cuda_graphs(tiny_volume_source: Path) -> None:
    """With graphs (recorded on the CPU as on CUDA): a shape's first job captures, the next replays, a new size or
    an image to image job of another shape captures its own, and the images are the eager ones."""
    from sdxl_worker.speed.cuda_graphs import graph_unet
    from tests.helpers import RecordingCapture

    eager = Worker.start(cpu_settings(tiny_volume_source), warmup=False)
    expected = run(eager, seed=2)["images"]
    graphed = Worker.start(cpu_settings(tiny_volume_source), warmup=False)
    graph_unet(graphed.pipe.unet, "cpu", RecordingCapture())
    first, second = run(graphed, seed=2), run(graphed, seed=2)
    assert (first["timings"]["graph"], second["timings"]["graph"]) == ("captured", "replayed")
    assert first["images"] == second["images"] == expected
    assert run(graphed, width=320)["timings"]["graph"] == "captured"
    assert run(graphed, num_images=2)["timings"]["graph"] == "captured"
    assert run(graphed, width=320)["timings"]["graph"] == "replayed"
    # A prompt past 77 tokens is two chunks of text: its own shape, graphed like any other.
    long_prompt = ", ".join(["a photonic lighthouse on a cliff at dusk"] * 12)
    assert [run(graphed, prompt=long_prompt)["timings"]["graph"] for _ in range(2)] == ["captured", "replayed"]
    assert "graph" not in run(eager)["timings"]  # no graphs: no status


def test_the_start_captures_the_listed_shapes_so_their_first_jobs_replay(tiny_volume_source: Path) -> None:
    from sdxl_worker.speed.cuda_graphs import graph_unet
    from sdxl_worker.speed.options import SpeedOptions
    from tests.helpers import RecordingCapture

    speed = SpeedOptions(cuda_graph_shapes="256x320, 320x256x2, 256x256")  # the warm-up's own shape listed too
    worker = Worker.start(cpu_settings(tiny_volume_source, speed=speed), warmup=False)
    capture = RecordingCapture()
    graph_unet(worker.pipe.unet, "cpu", capture)
    worker.warm_up()
    assert capture.captures == 3  # the warm-up's shape once, then each listed one
    assert run(worker, width=256, height=320)["timings"]["graph"] == "replayed"
    assert run(worker, width=320, height=256, num_images=2)["timings"]["graph"] == "replayed"
    assert run(worker, width=320, height=256)["timings"]["graph"] == "captured"  # one image: not listed


def test_same_seed_same_bytes_different_seed_differs(worker: Worker) -> None:
    first, again, other = run(worker, seed=3), run(worker, seed=3), run(worker, seed=4)
    assert first["images"] == again["images"]
    assert first["images"] != other["images"]


def test_random_seed_is_returned_and_reproduces(worker: Worker) -> None:
    first = run(worker)
    assert 0 <= first["seed"] < 2**32
    assert run(worker, seed=first["seed"])["images"] == first["images"]


@pytest.mark.parametrize("scheduler", ["default", "euler_ancestral", "dpmpp_sde_karras"])
def test_each_image_of_a_batch_reproducible_from_its_seed(worker: Worker, scheduler: str) -> None:
    batch = run(worker, seed=100, num_images=3, scheduler=scheduler)
    assert batch["seeds"] == [100, 101, 102] and len(batch["images"]) == 3
    for seed, image in zip(batch["seeds"], batch["images"], strict=True):
        alone = run(worker, seed=seed, scheduler=scheduler)
        # Batched and single matmuls round differently in the last bit: at most 1 level of 255.
        assert np.abs(pixels(image) - pixels(alone["images"][0])).max() <= 1
    assert np.abs(pixels(batch["images"][0]) - pixels(batch["images"][1])).mean() > 10


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc"])
def test_every_scheduler_generates_its_own_result(worker: Worker, scheduler: str) -> None:
    reply = run(worker, seed=1, scheduler=scheduler)
    assert "error" not in reply
    assert reply["images"] != run(worker, seed=1, scheduler="default")["images"]


@pytest.mark.parametrize("scheduler", ["euler_trailing", "ddim_trailing", "lcm", "tcd"])
def test_each_fast_sampler_draws_its_own_result(worker: Worker, scheduler: str) -> None:
    reply = run(worker, seed=1, scheduler=scheduler, num_inference_steps=4, guidance_scale=0.0)
    assert "error" not in reply, reply
    assert reply["images"] != run(worker, seed=1, num_inference_steps=4, guidance_scale=0.0)["images"]


def unet_calls(worker: Worker, **fields: object) -> tuple[dict, list[tuple[int, int]]]:
    """A job's reply, and each UNet call's (batch, timestep)."""
    calls: list[tuple[int, int]] = []

    def record(_module: object, args: tuple, kwargs: dict) -> None:
        sample, timestep = args[0], args[1] if len(args) > 1 else kwargs["timestep"]
        calls.append((int(sample.shape[0]), int(timestep)))

    hook = worker.pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        return run(worker, seed=4, **fields), calls
    finally:
        hook.remove()


def test_without_guidance_each_step_is_one_unet_pass_at_the_images_batch(worker: Worker) -> None:
    """A distilled recipe's point: guidance <= 1 runs no negative branch, half the UNet work of a guided step."""
    _, guided = unet_calls(worker, num_images=2, num_inference_steps=4, scheduler="euler_trailing")
    reply, free = unet_calls(worker, num_images=2, num_inference_steps=4, scheduler="euler_trailing",
                             guidance_scale=0.0)
    assert "error" not in reply
    assert [batch for batch, _ in guided] == [4] * 4 and [batch for batch, _ in free] == [2] * 4
    assert [timestep for _, timestep in free] == [999, 749, 499, 249], "SDXL-Lightning's 4 trailing steps"


def test_a_weighted_prompt_without_guidance_is_still_one_pass_a_step(worker: Worker) -> None:
    """compel's embeddings take the same guidance-free path as a plain prompt: no negative branch is encoded."""
    reply, calls = unet_calls(worker, prompt="a (photonic:1.3) [lighthouse]", num_inference_steps=4,
                              guidance_scale=1.0)
    assert "error" not in reply, reply
    assert [batch for batch, _ in calls] == [1] * 4


def test_a_distilled_models_own_scheduler_config_is_the_default_sampler(volume: Path) -> None:
    """A turbo or Lightning model ships its sampler's spacing in scheduler_config.json: `default` honours it."""
    config_file = volume / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "timestep_spacing": "trailing"}))
    distilled = Worker.start(cpu_settings(volume), warmup=False)
    assert distilled.pipe is not None, distilled.startup_error
    reply, calls = unet_calls(distilled, num_inference_steps=4, guidance_scale=0.0)
    assert "error" not in reply, reply
    assert [timestep for _, timestep in calls] == [999, 749, 499, 249]
    assert distilled.schedulers["default"].config.timestep_spacing == "trailing"


def test_a_jobs_timesteps_are_the_ones_the_unet_runs(worker: Worker) -> None:
    """DMD2's recipe: LCM's sampler on the four timesteps its card names."""
    reply, calls = unet_calls(worker, scheduler="lcm", guidance_scale=0.0, timesteps=[999, 749, 499, 249],
                              num_inference_steps=None)
    assert "error" not in reply, reply
    assert calls == [(1, 999), (1, 749), (1, 499), (1, 249)]
    assert run(worker, scheduler="ddim", timesteps=[999, 499], num_inference_steps=None)["error"] == (
        "scheduler 'ddim' takes no timesteps list; these do: default, euler, dpmpp_2m, euler_trailing, lcm, tcd")


def test_eta_moves_the_samplers_that_take_one(worker: Worker) -> None:
    recipe = {"scheduler": "tcd", "num_inference_steps": 4, "guidance_scale": 0.0, "seed": 2}
    assert run(worker, **recipe, eta=0.3)["images"] != run(worker, **recipe, eta=0.0)["images"]
    assert run(worker, **recipe, eta=0.0)["images"] == run(worker, **recipe)["images"], "null is 0"
    assert run(worker, scheduler="euler", eta=0.3)["error"] == (
        "Invalid input: input: eta applies to the tcd, ddim, ddim_trailing samplers only, not 'euler'.")


def test_euler_is_the_volumes_default_sampler(worker: Worker) -> None:
    assert type(worker.schedulers["default"]).__name__ == "EulerDiscreteScheduler"
    assert run(worker, seed=1, scheduler="euler")["images"] == run(worker, seed=1, scheduler="default")["images"]


@pytest.mark.parametrize(("output_format", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_every_format_decodes_at_size(worker: Worker, output_format: str, pil_format: str) -> None:
    quality = {} if output_format == "png" else {"quality": 70}
    reply = run(worker, output_format=output_format, width=384, height=256, **quality)
    image = decode(reply["images"][0])
    assert (image.format, image.size, reply["format"]) == (pil_format, (384, 256), output_format)


def test_quality_changes_lossy_output(worker: Worker) -> None:
    low = run(worker, seed=2, output_format="jpeg", quality=10)["images"][0]
    high = run(worker, seed=2, output_format="jpeg", quality=95)["images"][0]
    assert len(low) < len(high)


def test_progress_updates_throttled(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(worker, "progress", lambda job, update: sent.append((job["id"], update)))
    run(worker, num_inference_steps=20)
    assert [u["step"] for _, u in sent] == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert sent[-1] == ("test-job", {"step": 20, "steps": 20, "percent": 100})


def test_progress_goes_to_runpod_only_when_deployed(monkeypatch: pytest.MonkeyPatch) -> None:
    import runpod.serverless

    calls: list[tuple] = []
    monkeypatch.setattr(runpod.serverless, "progress_update", lambda job, update: calls.append((job, update)))
    monkeypatch.delenv("RUNPOD_WEBHOOK_POST_OUTPUT", raising=False)
    worker_module.runpod_progress({"id": "j"}, {"step": 1})
    assert calls == []
    monkeypatch.setenv("RUNPOD_WEBHOOK_POST_OUTPUT", "https://api.runpod.ai/v2/x/job-done/$ID")
    worker_module.runpod_progress({"id": "j"}, {"step": 1})
    assert calls == [({"id": "j"}, {"step": 1})]


def test_bad_job_gets_a_sentence_and_worker_keeps_serving(worker: Worker) -> None:
    reply = run(worker, width=1001)
    assert reply == {"error": "Invalid input: width: Input should be a multiple of 8 (got 1001)."}
    assert worker.handle({"id": "x", "input": None})["error"].startswith("input must be a JSON object")
    assert "images" in run(worker)


def test_out_of_memory_answers_sizes_and_keeps_serving(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(worker, "largest_fit", None)
    run(worker, width=512, height=256)  # the largest job that has fit so far

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(worker_module, "generate", out_of_memory)
    reply = run(worker, width=2048, height=1024, num_images=4, seed=1, output_format="jpeg")
    assert reply == {"error": "CUDA out of memory generating 4 image(s) of 2048x1024; the largest job that has fit "
                              "on this worker is 1 image(s) of 512x256: retry with fewer images or a smaller size."}
    image_job = run_image(worker, image=png_b64(_source_image()), num_images=2)
    assert image_job["error"].startswith("CUDA out of memory generating 2 image(s) of 296x264;")
    monkeypatch.undo()
    assert "images" in run(worker)


def test_cuda_failure_asks_for_a_fresh_worker(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(worker_module, "generate", broken)
    reply = run(worker)
    assert reply["refresh_worker"] is True
    assert reply["error"] == ("Generation failed: RuntimeError: CUDA error: an illegal memory access was "
                              "encountered. The worker logged the details.")


def test_cuda_health_is_checked_on_the_models_card(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """DEVICE=cuda:1: a failed job synchronizes cuda:1, where its kernels ran; a sticky error there (a message
    without CUDA's own words) asks for a fresh worker, which a check of device 0 would have missed."""
    import dataclasses

    import torch

    synchronized: list[object] = []

    def synchronize(device: object = None) -> None:
        synchronized.append(device)
        if device == "cuda:1":
            raise RuntimeError("unspecified launch failure")

    def failed(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the UNet returned nothing")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(worker_module, "generate", failed)
    monkeypatch.setattr(worker, "record", dataclasses.replace(worker.record, device="cuda:1"))
    assert run(worker)["refresh_worker"] is True
    assert synchronized == ["cuda:1"]
    monkeypatch.setattr(worker, "record", dataclasses.replace(worker.record, device="cpu"))
    assert "refresh_worker" not in run(worker)  # a model on the CPU has no CUDA context to distrust
    assert synchronized == ["cuda:1"]


def test_other_failure_is_a_string_error_without_refresh(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(*args: object, **kwargs: object) -> None:
        raise KeyError("latents")

    monkeypatch.setattr(worker_module, "generate", bug)
    reply = run(worker)
    assert reply == {"error": "Generation failed: KeyError: 'latents'. The worker logged the details."}


def test_unusable_volume_answers_every_job_with_the_problem(volume: Path) -> None:
    import shutil

    shutil.rmtree(volume / "unet")
    broken = Worker.start(cpu_settings(volume))
    assert broken.pipe is None
    for job in ({"id": "a", "input": SMALL}, {"id": "b", "input": {"prompt": ""}}):
        reply = broken.handle(job)
        assert isinstance(reply["error"], str)
        assert f"unet: folder {volume / 'unet'} is missing" in reply["error"]
        assert "refresh_worker" not in reply


def test_bad_operator_setting_is_reported_to_every_job(tiny_volume_source: Path, monkeypatch) -> None:
    monkeypatch.setenv("MODEL_PATH", str(tiny_volume_source))
    monkeypatch.setenv("VAE_DTYPE", "fp8")
    broken = start_from_env()
    assert broken.handle({"id": "a", "input": SMALL})["error"].startswith(
        "This worker cannot serve jobs: bad setting: VAE_DTYPE must be one of auto, bf16, fp32")
    monkeypatch.setenv("VAE_DTYPE", "auto")
    monkeypatch.setenv("MAX_PIXELS", "lots")
    assert "MAX_PIXELS must be a whole number" in start_from_env().first.startup_error


def test_missing_volume_root_named(tmp_path: Path) -> None:
    broken = Worker.start(cpu_settings(tmp_path / "runpod-volume" / "photonicfusion-sdxl"))
    assert "is the network volume attached" in broken.handle({"id": "a", "input": SMALL})["error"]


def test_logs_carry_no_payload_and_only_a_prompt_prefix(worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    prompt = "secret-ish prompt " + "y" * 200
    with caplog.at_level("DEBUG"):
        reply = run(worker, prompt=prompt, seed=5)
    text = caplog.text
    assert "job test-job: txt2img 256x256 x1, 3 steps, default, seed 5" in text
    assert prompt[:40] in text and prompt[:41] not in text
    assert reply["images"][0][:64] not in text


def test_compiled_worker_freezes_shapes_after_its_warm_up(tiny_volume_source: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """With COMPILE=1 the warm-up compiles the usual job shape, then other shapes must not compile in a job."""
    from sdxl_worker.speed.options import SpeedReport

    events: list[str] = []
    real_warm_up = Worker.warm_up
    monkeypatch.setattr(worker_module, "apply_speedups", lambda *args: SpeedReport(compile_mode="default"))
    monkeypatch.setattr(Worker, "warm_up", lambda self: events.append("warm-up") or real_warm_up(self))
    monkeypatch.setattr(worker_module, "freeze_compiled_shapes", lambda: events.append("freeze"))

    assert Worker.start(cpu_settings(tiny_volume_source)).pipe is not None
    assert events == ["warm-up", "freeze"]
    events.clear()
    monkeypatch.setattr(worker_module, "apply_speedups", lambda *args: SpeedReport())
    Worker.start(cpu_settings(tiny_volume_source))
    assert events == ["warm-up"]


@pytest.mark.parametrize("damage", [
    lambda v: (v / "unet" / "config.json").write_text('{"sample_size": ' + "9" * 5000 + "}"),
    lambda v: (v / "model_index.json").write_text("[" * 50_000 + "]" * 50_000),
    lambda v: (v / "tokenizer" / "tokenizer_config.json").write_text('{"model_max_length": 100000}'),
])
def test_a_hostile_file_never_crashes_the_start(volume: Path, damage) -> None:
    """The worker stays up and answers every job with the check's sentence: no crash loop on RunPod."""
    damage(volume)
    broken = Worker.start(cpu_settings(volume))
    reply = broken.handle({"id": "a", "input": SMALL})
    assert broken.pipe is None and reply["error"].startswith("This worker cannot serve jobs: model at")
    assert "\n" not in reply["error"] and len(reply["error"]) < 1000


def test_an_unreadable_file_never_crashes_the_start(volume: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    real = os.open
    target = volume / "vae" / "config.json"

    def io_error(path: object, *args: object, **kwargs: object) -> int:
        if Path(path) == target:
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", io_error)
    broken = Worker.start(cpu_settings(volume))
    assert "vae: config.json cannot be read (Input/output error)" in broken.handle({"input": SMALL})["error"]


def test_refusals_are_bounded_whatever_the_input(worker: Worker, caplog: pytest.LogCaptureFixture) -> None:
    """100,000 unknown keys, a 1 MB key, a 1 MB job id: one sentence of a few hundred characters, in the reply
    and in the log."""
    flood = {**SMALL, **{f"key{n}": n for n in range(100_000)}}
    huge_key = {**SMALL, "k" * 1_000_000: 1}
    with caplog.at_level("INFO"):
        for job in ({"id": "x" * 1_000_000, "input": flood}, {"id": "y", "input": huge_key}):
            reply = worker.handle(job)
            assert len(reply["error"]) < 600, len(reply["error"])
    assert "unknown fields 'key0', 'key1', 'key2' and 99997 more (allowed: prompt" in \
        worker.handle({"input": flood})["error"]
    assert all(len(record.getMessage()) < 800 for record in caplog.records)


def run_image(worker: Worker, **fields: object) -> dict:
    """A job without width and height: the input image decides the size."""
    return worker.handle({"id": "image-job", "input": {"prompt": SMALL["prompt"], "num_inference_steps": 4, **fields}})


def _source_image() -> object:
    from PIL import Image

    gradient = np.linspace(0, 255, 264 * 300, dtype=np.uint8).reshape(264, 300)
    return Image.fromarray(np.stack([gradient, gradient[::-1], np.full_like(gradient, 90)], axis=-1))


def test_image_to_image_follows_its_input_and_its_strength(worker: Worker) -> None:
    """The image sets the size (cut to multiples of 8) and anchors the result: a low strength stays nearer it."""
    source = png_b64(_source_image())
    light = run_image(worker, image=source, strength=0.3, seed=4)
    strong = run_image(worker, image=source, strength=1.0, seed=4)
    assert (light["mode"], light["width"], light["height"]) == ("img2img", 296, 264)
    assert decode(light["images"][0]).size == (296, 264)
    original = np.asarray(_source_image().resize((296, 264))).astype(int)
    assert np.abs(pixels(light["images"][0]) - original).mean() < np.abs(pixels(strong["images"][0]) - original).mean()
    assert run_image(worker, image=source, strength=0.3, seed=4)["images"] == light["images"]


def test_inpainting_repaints_the_masked_part(worker: Worker) -> None:
    from PIL import Image

    source = _source_image()
    mask = Image.new("L", source.size, 0)
    mask.paste(255, (0, 0, 150, 264))
    reply = run_image(worker, image=png_b64(source), mask=png_b64(mask), strength=1.0, seed=6)
    assert reply["mode"] == "inpaint" and decode(reply["images"][0]).size == (296, 264)
    out = pixels(reply["images"][0])
    original = np.asarray(source.resize((296, 264))).astype(int)
    kept, repainted = np.abs(out - original)[:, 160:].mean(), np.abs(out - original)[:, :140].mean()
    assert kept < repainted


def test_image_pipelines_share_the_loaded_weights_in_their_dtypes(volume: Path) -> None:
    """As a CUDA load leaves them (float16 weights, a bf16 VAE), cast here on the CPU: building the image-to-image
    and inpainting twins must neither cast nor copy any of them (diffusers' from_pipe casts all to float32)."""
    import torch

    from sdxl_worker.loading.loader import load_pipeline

    pipe, _ = load_pipeline(volume, "cpu", prefetch=False)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        getattr(pipe, name).to(torch.float16)
    pipe.vae.to(torch.bfloat16)
    storage = {name: next(getattr(pipe, name).parameters()).data_ptr() for name in ("unet", "text_encoder", "vae")}
    pipelines = worker_module.image_pipelines(pipe)
    assert set(pipelines) == {"txt2img", "img2img", "inpaint"}
    for twin in pipelines.values():
        assert twin.unet is pipe.unet and twin.vae is pipe.vae and twin.text_encoder_2 is pipe.text_encoder_2
    assert (pipe.unet.dtype, pipe.text_encoder.dtype, pipe.text_encoder_2.dtype) == (torch.float16,) * 3
    assert pipe.vae.dtype == torch.bfloat16 and pipe.vae.config.force_upcast is False
    assert {name: next(getattr(pipe, name).parameters()).data_ptr() for name in storage} == storage
    assert pipelines["img2img"].config.force_zeros_for_empty_prompt == pipe.config.force_zeros_for_empty_prompt


def test_a_bad_input_image_is_one_sentence_and_the_next_job_runs(worker: Worker) -> None:
    reply = run(worker, image="https://example.com/a.png")
    assert reply == {"error": "Invalid input: image is a URL; the worker fetches nothing: send the image itself, "
                              "base64 or a data: URL."}
    assert "images" in run(worker, seed=1)
