"""The worker: its start in numbered steps (settings -> volume check -> load plan -> load -> speed options -> warm-up
-> freeze shapes), the job handler (validate -> generate -> encode -> deliver) and its error replies. A bad setting
or a volume that cannot be served does not crash-loop the worker: it stays up and answers every job with the
sentence naming the problem, so the operator sees it in the endpoint's results."""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sdxl_worker.contract.generation import NonFiniteLatents, generate, pipeline_on, progress_interval
from sdxl_worker.contract.image_encoding import encode_image
from sdxl_worker.contract.image_input import InputImages, decode_image, load_inputs
from sdxl_worker.contract.job_schema import JobInput, JobInputError, parse_job_input
from sdxl_worker.contract.prompts import PromptEncoder
from sdxl_worker.contract.schedulers import build_schedulers, takes_timesteps
from sdxl_worker.controlnets.files import ControlNetFileError
from sdxl_worker.controlnets.runtime import ControlNets, control_images
from sdxl_worker.delivery.bucket import Bucket, BucketError
from sdxl_worker.delivery.reply import DeliveryError, deliver, refusal_ahead
from sdxl_worker.embeddings.files import EmbeddingFileError
from sdxl_worker.embeddings.runtime import PromptEmbeddings
from sdxl_worker.ip_adapters.files import IpAdapterFileError
from sdxl_worker.ip_adapters.runtime import IpAdapters
from sdxl_worker.loading.loader import LoadRecord, load_planned
from sdxl_worker.loading.plan import plan_load, resolve_device
from sdxl_worker.logs import PROMPT_LOG_CHARS, job_text, route_library_logs
from sdxl_worker.loras.files import LoraFileError
from sdxl_worker.loras.runtime import LoraAdapters
from sdxl_worker.sentences import describe
from sdxl_worker.serving.stack_test import RUNPOD_VOLUME, stack_test_pipeline, volume_evidence
from sdxl_worker.settings import DEFAULT_MODEL_NAME, Settings
from sdxl_worker.speed.cuda_graphs import graphed_forward
from sdxl_worker.speed.options import SpeedReport, apply_speedups, freeze_compiled_shapes
from sdxl_worker.volume.check import check_volume
from sdxl_worker.volume.report import VolumeReport
from sdxl_worker.watch.control import JobControl, JobStopped
from sdxl_worker.watch.previews import Previewer

log = logging.getLogger("worker")


ProgressSink = Callable[[dict[str, Any], dict[str, Any]], None]


def runpod_progress(job: dict[str, Any], update: dict[str, Any]) -> None:
    """Send a progress update when running on RunPod; locally there is no one to send it to."""
    if os.environ.get("RUNPOD_WEBHOOK_POST_OUTPUT"):
        from runpod.serverless import progress_update

        progress_update(job, update)


class Worker:
    """The loaded pipeline and everything a job needs; `handle` is the RunPod handler."""

    def __init__(
        self,
        pipe: Any | None,
        record: LoadRecord | None,
        *,
        settings: Settings,
        report: VolumeReport | None = None,
        speed: SpeedReport | None = None,
        startup_error: str | None = None,
        refresh_on_error: bool = False,
        progress: ProgressSink = runpod_progress,
    ) -> None:
        self.pipe = pipe
        self.record = record
        self.settings = settings
        self.report = report
        self.speed = speed or SpeedReport()
        self.startup_error = startup_error
        self.refresh_on_error = refresh_on_error
        self.progress = progress
        self.schedulers = build_schedulers(pipe.scheduler) if pipe is not None else {}
        self.bucket = Bucket(settings.bucket) if settings.bucket.configured else None
        # Image to image and inpainting share the loaded pipeline's components (no second copy of any weight).
        self.pipelines = image_pipelines(pipe) if pipe is not None else {}
        self.prompt_encoder = PromptEncoder(pipe) if pipe is not None else None
        self.loras = LoraAdapters(settings.loras, settings.speed.compile) if pipe is not None else None
        self.embeddings = PromptEmbeddings(settings.embeddings)
        self.controlnets = ControlNets(settings.controlnets)
        self.ip_adapters = IpAdapters(settings.ip_adapter)
        self.previewer: Previewer | None = None  # made at the first job that asks for previews
        self.name: str | None = None  # its name among the endpoint's MODELS
        self.largest_fit: tuple[int, int, int] | None = None  # (images, width, height) of the largest job done
        self.start_timings: dict[str, float] = {}

    @classmethod
    def start(cls, settings: Settings, *, warmup: bool = True) -> Worker:
        """settings -> volume check -> load plan -> load -> speed options -> warm-up -> freeze shapes.

        `settings` is step 1, parsed by the caller (models.start_from_env). Any failure returns a worker that
        explains it to every job instead of crash-looping.
        """
        # 1. Settings: `settings`, already parsed and cross-checked, before the volume is touched.
        # The one place a start's error is caught: the worker must stay up to report it to callers instead of
        # crash-looping; the traceback goes to the log in full.
        report = None
        device: str | None = None  # known once the plan is made; a failure before it has no CUDA work to check
        attached = volume_evidence(settings.model_path, settings.model_cache)
        stack_test = settings.stack_test and attached is None
        try:
            if stack_test:
                # 2-4 for a machine with no volume (RunPod's Hub tests): a tiny random-weight model instead.
                log.warning("STACK_TEST=1 and no volume for %s (%s neither mounted nor holding anything, or nothing "
                            "at the model folder nor above it): serving a tiny random-weight SDXL built in memory, "
                            "a test of the image's stack, not the model", settings.model_path, RUNPOD_VOLUME)
                device = resolve_device(settings.device)
                route_library_logs()
                started = time.perf_counter()
                pipe, record = stack_test_pipeline(device)
            else:
                if settings.stack_test:
                    log.info("STACK_TEST=1 ignored: a volume is attached (%s), so %s is served or its problem "
                             "reported", attached, settings.model_path)
                # 2. Volume check, once, every tensor name and shape included: the load plan is made from its report.
                report = check_volume(settings.model_path, tensors=True, model_cache=settings.model_cache)
                for line in report.render().splitlines():
                    log.info("%s", line)
                if not report.loadable:
                    log.error("cannot serve: %s", report.summary())
                    return cls.cannot_serve(report.summary(), settings, report)
                # 3. Load plan: which weight set, which dtype, which device.
                plan = plan_load(report, resolve_device(settings.device))
                device = plan.device
                # 4. Load (the libraries' logs through the worker's, which keeps job text out).
                route_library_logs()
                started = time.perf_counter()
                pipe, record = load_planned(plan, streams=settings.load_streams)
            loaded = time.perf_counter()
            # 5. Speed options.
            speed = apply_speedups(pipe, settings.speed, device, Path(report.model_path) if report else None)
            log.info("speed options applied: %s", ", ".join(speed.labels()) or "none")
            worker = cls(pipe, record, settings=settings, report=report, speed=speed)
            worker.start_timings = {"load_s": loaded - started, "speedups_s": time.perf_counter() - loaded}
            if warmup:
                # 6. Warm-up: the first job is not the slow one, and compiled or captured code gets its shape.
                worker.start_timings["warm_up_s"] = worker.warm_up()
                # 7. Freeze compiled shapes: no compiling inside a user's job (a CUDA graph per shape is cheap).
                if speed.shapes_frozen_after_warm_up:
                    freeze_compiled_shapes()
                    log.info("compiled for the warm-up's shape; jobs of other shapes run uncompiled")
        except Exception as exc:
            log.exception("starting the worker failed")
            stage = ("building the stack test's model failed" if stack_test else
                     "loading failed" if report is not None and report.loadable else "checking the volume failed")
            return cls.cannot_serve(f"{stage}: {describe(exc)}", settings, report, _cuda_unusable(exc, device))
        return worker

    @classmethod
    def cannot_serve(cls, problem: str, settings: Settings | None = None, report: VolumeReport | None = None,
                     refresh: bool = False) -> Worker:
        """A worker that answers every job with `problem` (and, with `refresh`, asks RunPod for a fresh worker)."""
        return cls(None, None, settings=settings or Settings(), report=report, startup_error=problem,
                   refresh_on_error=refresh)

    def warm_up(self) -> float:
        """One short generation at the size jobs use, so the first real job is not the slow one; then, under CUDA
        graphs, a one-step job for each of CUDA_GRAPH_SHAPES, so that no job of those shapes pays a capture."""
        on_cuda = self.record.device.startswith("cuda")
        size, steps = (min(1024, math.isqrt(self.settings.max_pixels) // 8 * 8), 2) if on_cuda else (256, 1)
        started = time.perf_counter()
        self._warm_up_job(size, size, 1, steps)
        seconds = time.perf_counter() - started
        log.info("warm-up %dx%d, %d steps: %.2f s", size, size, steps, seconds)
        graphed = graphed_forward(self.pipe)
        shapes = [shape for shape in self.settings.speed.graph_shapes if shape != (size, size, 1)]
        if graphed is not None and shapes:
            captured = time.perf_counter()
            for width, height, images in shapes:
                self._warm_up_job(width, height, images, 1)
            log.info("CUDA graphs for %d more shape(s) (CUDA_GRAPH_SHAPES) captured in %.2f s: %s", len(shapes),
                     time.perf_counter() - captured, ", ".join(f"{w}x{h}x{n}" for w, h, n in shapes))
            seconds = time.perf_counter() - started
        return seconds

    def _warm_up_job(self, width: int, height: int, images: int, steps: int) -> None:
        job = {"prompt": "warm-up", "width": width, "height": height, "num_images": images,
               "num_inference_steps": steps, "seed": 0}
        result = self.handle({"id": "warm-up", "input": job})
        if "error" in result:
            raise RuntimeError(f"warm-up generation at {width}x{height}x{images} failed: {result['error']}")

    def handle(self, job: dict[str, Any], control: JobControl | None = None,
               progress: ProgressSink | None = None) -> dict[str, Any]:
        """validate -> generate -> encode; every failure becomes {"error": "<one sentence>"}. `control` stops the
        job between two steps (JOB_TIMEOUT_S when none is given); progress updates go to `progress`, else the
        worker's sink."""
        started = time.perf_counter()
        control = control if control is not None else JobControl(self.settings.watch.job_timeout_s)
        job_id = str(job.get("id", "local"))[:64] if isinstance(job, dict) else "local"
        if self.pipe is None:
            who = f"Model {self.name!r}" if self.name is not None else "This worker"
            reply: dict[str, Any] = {"error": f"{who} cannot serve jobs: {self.startup_error}"}
            if self.refresh_on_error:
                reply["refresh_worker"] = True
            return reply
        try:
            params = parse_job_input(job.get("input") if isinstance(job, dict) else job, self.settings.max_pixels,
                                     self.settings.loras.lora_max_per_job, self.prompt_encoder.max_clip_skip,
                                     self.settings.controlnets.controlnet_max_per_job)
            limits = (self.settings.max_input_image_mb * 1_000_000, self.settings.max_pixels)
            inputs = load_inputs(params, *limits)
            width, height = job_size(params, inputs)
            controls = control_images(params.controlnets, width, height, *limits)
            image_prompt = (decode_image("ip_adapter.image", params.ip_adapter.image, *limits).convert("RGB")
                            if params.ip_adapter is not None else None)
        except JobInputError as exc:
            log.info("job %s refused: %s", job_id, exc)
            return {"error": str(exc)}
        refusal = refusal_ahead(params.output, params.output_format, params.num_images, width, height,
                                self.settings.result_max_mb, self.bucket)
        if params.timesteps is not None and not takes_timesteps(self.schedulers[params.scheduler]):
            takers = ", ".join(name for name, scheduler in self.schedulers.items() if takes_timesteps(scheduler))
            refusal = f"scheduler {params.scheduler!r} takes no timesteps list; these do: {takers}"
        if refusal is not None:
            log.info("job %s refused: %s", job_id, refusal)
            return {"error": refusal}

        import torch

        try:
            with job_text(params.prompt, params.negative_prompt):
                return self._run(job, job_id, params, inputs, controls, image_prompt, started, control,
                                 progress or self.progress)
        except JobStopped as exc:
            log.info("job %s %s", job_id, exc)
            return {"error": f"Job {exc}."}
        except (LoraFileError, EmbeddingFileError, ControlNetFileError, IpAdapterFileError) as exc:
            log.info("job %s refused: %s", job_id, exc)
            return {"error": str(exc)}
        except NonFiniteLatents as exc:
            names = ", ".join(f"{lora.name!r} at {lora.scale:g}" for lora in params.loras)
            hint = (f"it ran with LoRA {names}: try a lower scale or the job without it" if names else
                    "try a lower guidance_scale or another scheduler")
            log.warning("job %s: %s; %s", job_id, exc, hint)
            return {"error": f"Generation failed: {exc}; {hint}."}
        except (DeliveryError, BucketError) as exc:
            log.warning("job %s: images not delivered: %s", job_id, exc)
            return {"error": str(exc)}
        except torch.cuda.OutOfMemoryError:
            pass  # answered below, once the exception no longer pins the job's tensors
        # The job boundary: nothing may escape to runpod, which would answer a traceback.
        except Exception as exc:
            log.exception("job %s failed", job_id)
            reply = {"error": f"Generation failed: {describe(exc)}. The worker logged the details."}
            if _cuda_unusable(exc, self.record.device):
                reply["refresh_worker"] = True
            return reply
        return self._out_of_memory(job_id, params, inputs)

    def _run(self, job: dict[str, Any], job_id: str, params: JobInput, inputs: InputImages | None,
             controls: list[Any], image_prompt: Any, started: float, control: JobControl,
             progress: ProgressSink) -> dict[str, Any]:
        control.check(0, params.steps)  # stopped while it waited for the device
        previewer = self._previewer() if params.preview else None

        def on_step(step: int, steps: int, latents: Any) -> None:
            control.check(step, steps)
            # No preview of the last step: the job's images follow at once.
            preview_due = previewer is not None and step % params.preview == 0 and step < steps
            if preview_due or step % progress_interval(steps) == 0 or step == steps:
                update = {"step": step, "steps": steps, "percent": round(100 * step / steps)}
                progress(job, {**update, "preview": previewer.jpeg(latents)} if preview_due else update)

        pipe, conditioning = self.pipelines.get(params.mode, self.pipe), None
        if params.controlnets:
            pipe, conditioning = self.controlnets.pipeline(self.pipe, params.mode, params.controlnets, controls)
        graphed = graphed_forward(pipe)
        graph_counts = dataclasses.replace(graphed.counts) if graphed is not None else None
        texts = self.embeddings.substitute(pipe, params.prompt, params.negative_prompt, params.embeddings)
        try:
            # The prompts are encoded inside too: a LoRA's text-encoder layers change the embeddings.
            with self.loras.applied(pipe, params.loras) as loras, \
                    self.ip_adapters.applied(self.pipe, pipe, params.ip_adapter, image_prompt) as image_prompting:
                prompts = self.prompt_encoder.encode(texts.prompt, texts.negative_prompt, params.prompt_weighting,
                                                     params.clip_skip, text_encoders_changed=bool(params.loras),
                                                     tokens_added=bool(texts.used))
                generated = generate(pipe, params, self.schedulers[params.scheduler], on_step, inputs, prompts,
                                     {**(conditioning or {}), **image_prompting})
        finally:
            self.controlnets.trim()
        width, height = job_size(params, inputs)
        encode_started = time.perf_counter()
        images = [encode_image(image, params.output_format, params.encode_quality) for image in generated.images]
        encode_s = time.perf_counter() - encode_started
        total_s = time.perf_counter() - started
        pixels = params.num_images * width * height
        if self.largest_fit is None or pixels > self.largest_fit[0] * self.largest_fit[1] * self.largest_fit[2]:
            self.largest_fit = (params.num_images, width, height)
        timings = {"inference_s": round(generated.inference_s, 3), "encode_s": round(encode_s, 3),
                   "total_s": round(total_s, 3)}
        if graphed is not None and graph_counts is not None:
            timings["graph"] = graphed.counts.since(graph_counts)
        log.info(
            "job %s: %s %dx%d x%d, %d steps, %s, seed %d%s, inference %.2f s%s, encode %.2f s, total %.2f s, "
            "prompt %r", job_id, params.mode, width, height, params.num_images, params.steps,
            params.scheduler, generated.seeds[0], "".join(f", LoRA {lora['name']} x{lora['scale']}" for lora in loras),
            generated.inference_s, f" (graph {timings['graph']})" if "graph" in timings else "", encode_s, total_s,
            params.prompt[:PROMPT_LOG_CHARS],
        )
        reply = {
            "images": images,  # encoded bytes: base64 or uploaded by deliver
            "seed": generated.seeds[0],
            "seeds": generated.seeds,
            "width": width,
            "height": height,
            "mode": params.mode,
            "loras": loras,
            "controlnets": [controlnet.model_dump(exclude={"image"}) for controlnet in params.controlnets],
            "embeddings": list(texts.used),
            "ip_adapter": params.ip_adapter.model_dump(exclude={"image"}) if params.ip_adapter is not None else None,
            # Every token is encoded (compel's 75-token chunks), up to the prompts' character caps: none dropped.
            "prompt_tokens": {**prompts.tokens, "dropped": 0},
            "format": params.output_format,
            "timings": timings,
            "model": {"name": self.name or DEFAULT_MODEL_NAME, "variant": self.record.variant,
                      "dtype": self.record.dtype, "device": self.record.device,
                      "source": self.report.source["label"] if self.report and self.report.source else None},
        }
        return deliver(reply, job_id, params.output, self.settings.result_max_mb, self.bucket)

    def _previewer(self) -> Previewer:
        if self.previewer is None:
            self.previewer = Previewer.load(Path(self.settings.watch.preview_vae_dir), self.record.device,
                                            self.pipe.unet.dtype)
        return self.previewer

    def _out_of_memory(self, job_id: str, params: JobInput, inputs: InputImages | None) -> dict[str, Any]:
        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the caching allocator's free blocks on every card, the model's included
        width, height = job_size(params, inputs)
        asked = f"{params.num_images} image(s) of {width}x{height}"
        if self.largest_fit:
            n, w, h = self.largest_fit
            fits = f"the largest job that has fit on this worker is {n} image(s) of {w}x{h}"
        else:
            fits = "no job has completed on this worker yet"
        log.warning("job %s: CUDA out of memory for %s; memory freed, still serving", job_id, asked)
        return {"error": f"CUDA out of memory generating {asked}; {fits}: retry with fewer images or a smaller size."}


def job_size(params: JobInput, inputs: InputImages | None) -> tuple[int, int]:
    """The size a job generates: its input image's when it has one, else its width and height."""
    return (inputs.width, inputs.height) if inputs is not None else (params.width, params.height)


def image_pipelines(pipe: Any) -> dict[str, Any]:
    """The loaded text-to-image pipeline and its image-to-image and inpainting twins, built on its components."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

    if pipe.vae.dtype != torch.float16:
        # force_upcast protects a float16 VAE from overflow. Image to image would honour it by casting the VAE to
        # float32 and back to the job's dtype at every job, undoing VAE_DTYPE; bfloat16 and float32 need no upcast.
        pipe.vae.register_to_config(force_upcast=False)
    return {"txt2img": pipe, "img2img": pipeline_on(StableDiffusionXLImg2ImgPipeline, pipe),
            "inpaint": pipeline_on(StableDiffusionXLInpaintPipeline, pipe)}


def _cuda_unusable(exc: BaseException, device: str | None) -> bool:
    """True for errors after which this process's CUDA context cannot be trusted: ask for a new worker.

    `device` is the model's: a sticky error shows at a synchronize of the card that ran the kernels (with
    DEVICE=cuda:1, synchronizing the current device, 0 by default, would miss it).
    """
    text = str(exc)
    if any(mark in text for mark in ("CUDA error", "CUBLAS_STATUS", "cuDNN error", "device-side assert")):
        return True
    torch = sys.modules.get("torch")  # not imported (or not installed): no CUDA context to distrust
    if torch is None or device is None or not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    try:
        torch.cuda.synchronize(device)
    except RuntimeError:
        return True
    return False
