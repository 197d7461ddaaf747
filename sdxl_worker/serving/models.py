"""Several models behind one endpoint (MODELS): a job's `model` names one, the first by default.

Each model is a Worker of its own (its pipeline, samplers, LoRA, ControlNet and embedding caches), so nothing one
model's jobs load reaches another's. One model serves on the device at a time; the others stay loaded in host
memory up to MODEL_HOST_CACHE_GB, least recently used dropped first and read again when asked for. On a GPU a
switch moves the weights of the model going out to host memory and those of the model coming in to the device
(into the same module objects), and drops the captured CUDA graphs of both, which are bound to the old weights'
addresses: the next job of each shape captures again. On the CPU the device is host memory: a switch moves
nothing. A model whose files changed on the volume since it was read is read again. Components identical to those
of a model already loaded (a fine-tune's text encoders and VAE next to its base) are shared, not held twice
(serving/shared_components.py).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sdxl_worker.logs import configure_logging
from sdxl_worker.loras.files import signature_of
from sdxl_worker.sentences import alternatives
from sdxl_worker.serving.shared_components import Digests, adopt, digests
from sdxl_worker.serving.worker import ProgressSink, Worker
from sdxl_worker.settings import DEFAULT_MODEL_NAME, Settings, SettingsError
from sdxl_worker.speed.cuda_graphs import graphed_forward
from sdxl_worker.volume.check import check_volume
from sdxl_worker.watch.control import JobControl

log = logging.getLogger("worker")

FilesSignature = tuple[tuple[str, tuple[int, int, int, int] | None], ...]  # (file, its signature_of)


class ModelSet:
    """The endpoint's models by name; `handle` is the job handler, routing each job to its model."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sources = settings.model_sources
        self.names = list(self.sources)
        self.loaded: OrderedDict[str, Worker] = OrderedDict()  # least recently used first
        self.signatures: dict[str, FilesSignature] = {}
        self.digests: dict[str, Digests] = {}  # each loaded model's shareable components, as read
        self.resident: str | None = None  # the model on the device

    @classmethod
    def start(cls, settings: Settings, *, warmup: bool = True) -> ModelSet:
        """The first model started as a lone worker starts (warm-up included); the others checked, so that a
        broken one is in the start's log, and read at their first job."""
        models = cls(settings)
        models.activate(models.names[0], warmup=warmup)
        for name in models.names[1:]:
            report = check_volume(models.sources[name], model_cache=settings.model_cache)
            say = log.info if report.loadable else log.error
            say("model %r (%s): %s", name, models.sources[name], report.summary())
        return models

    @classmethod
    def cannot_serve(cls, problem: str) -> ModelSet:
        """A model set answering every job with `problem` (a bad setting: no model can be named yet)."""
        models = cls(Settings())
        models.loaded[DEFAULT_MODEL_NAME] = Worker.cannot_serve(problem)
        models.resident = DEFAULT_MODEL_NAME
        return models

    @property
    def first(self) -> Worker:
        """The first model's worker (the self-test's)."""
        return self.activate(self.names[0])

    def handle(self, job: dict[str, Any], control: JobControl | None = None,
               progress: ProgressSink | None = None) -> dict[str, Any]:
        """The job through the model it names; an unknown name is one sentence."""
        fields = job.get("input") if isinstance(job, dict) else None
        asked = fields.get("model") if isinstance(fields, dict) else None
        if isinstance(asked, str) and asked not in self.sources:
            if self.settings.models is None:
                return {"error": f"Unknown model {asked!r}: this endpoint serves one model (MODEL_PATH), "
                                 f"{DEFAULT_MODEL_NAME!r}; set MODELS to serve several."}
            return {"error": f"Unknown model {asked!r}.{alternatives(asked, self.names)}"}
        name = asked if isinstance(asked, str) else self.names[0]  # another type: the schema's sentence
        started = time.perf_counter()
        worker = self.activate(name)
        switch_s = time.perf_counter() - started
        reply = worker.handle(job, control, progress)
        if "timings" in reply:
            reply["timings"]["switch_s"] = round(switch_s, 3)
        return reply

    def activate(self, name: str, *, warmup: bool = True) -> Worker:
        """`name`'s worker, on the device: loaded (again, when its files changed) and made the resident one."""
        worker = self.loaded.get(name)
        # Checked at a switch only: a stat of every file at every job would cost a network volume's round trips.
        if worker is not None and self.resident != name and self.signatures.get(name) != files_signature(worker):
            log.info("model %r: its files changed on the volume since it was read; reading it again", name)
            self._drop(name)
            worker = None
        if worker is None:
            worker = self._load(name, warmup)
        self.loaded.move_to_end(name)
        if self.resident != name:
            previous = self.loaded.get(self.resident) if self.resident is not None else None
            if previous is not None:
                move(previous, "cpu")
            move(worker, worker.record.device if worker.record is not None else "cpu")
            self.resident = name
        self._trim()
        return worker

    def _load(self, name: str, warmup: bool) -> Worker:
        if self.resident is not None and self.resident in self.loaded:
            move(self.loaded[self.resident], "cpu")  # room on the device for the one being read
            self.resident = None
        source = self.sources[name]
        started = time.perf_counter()
        worker = Worker.start(self.settings.model_copy(update={"model_path": source, "models": None}),
                              warmup=warmup)
        worker.name = name if self.settings.models is not None else None
        self.loaded[name] = worker
        self.signatures[name] = files_signature(worker)
        if worker.pipe is not None:
            shared = self._share(name, worker) if len(self.names) > 1 else []
            log.info("model %r (%s) read in %.2f s: %.2f GB of weights%s; %s", name, source,
                     time.perf_counter() - started, weight_bytes(worker.pipe) / 1e9,
                     "".join(f", {group} shared with model {other!r}" for group, other in shared),
                     memory_in_use(worker.record.device))
        return worker

    def _share(self, name: str, worker: Worker) -> list[tuple[str, str]]:
        """`worker` takes the components it has in common with a loaded model; the groups taken and from whom."""
        started = time.perf_counter()
        self.digests[name] = found = digests(worker.pipe)
        shared = []
        for group, digest in found.items():
            donor = next((other for other, theirs in self.digests.items()
                          if other != name and other in self.loaded and theirs.get(group) == digest), None)
            if donor is not None:
                adopt(worker, self.loaded[donor], group)
                shared.append((group, donor))
        if shared:
            move(worker, worker.record.device)  # what it took from a model in host memory, onto its device
        log.info("model %r: its components compared with the other models' in %.2f s", name,
                 time.perf_counter() - started)
        return shared

    def host_bytes(self) -> int:
        """What the models besides the resident one hold: a tensor several share counted once, one the resident
        model shares not at all (MODEL_HOST_CACHE_GB's measure)."""
        resident = self.loaded.get(self.resident) if self.resident is not None else None
        serving = storage_sizes(pipe_modules(resident.pipe)) if resident is not None and resident.pipe else {}
        held = storage_sizes(module for other in self.loaded.values() if other is not resident and other.pipe
                             for module in pipe_modules(other.pipe))
        return sum(size for storage, size in held.items() if storage not in serving)

    def _trim(self) -> None:
        """Drop the least recently used models past MODEL_HOST_CACHE_GB (the resident one is not counted)."""
        budget = self.settings.model_host_cache_gb * 1e9
        for name in [name for name in self.loaded if name != self.resident]:  # oldest first
            if self.host_bytes() <= budget:
                break
            log.info("model %r dropped from host memory (MODEL_HOST_CACHE_GB=%g); read again when asked for",
                     name, self.settings.model_host_cache_gb)
            self._drop(name)

    def _drop(self, name: str) -> None:
        import gc

        self.loaded.pop(name, None)
        self.signatures.pop(name, None)
        self.digests.pop(name, None)
        if self.resident == name:
            self.resident = None
        gc.collect()


def move(worker: Worker, device: str) -> None:
    """`worker`'s pipeline to `device` (its own modules, moved in place); on a GPU its captured graphs go, bound to
    where the weights were."""
    if worker.pipe is None or worker.record is None or not worker.record.device.startswith("cuda"):
        return  # on the CPU the device is host memory: nothing moves
    worker.pipe.to(device)
    graphed = graphed_forward(worker.pipe)
    if graphed is not None:
        graphed.graphs.clear()


def memory_in_use(device: str) -> str:
    """The process's resident host memory and, on a GPU, the memory torch holds there: the start log's figures."""
    import torch

    status = Path("/proc/self/status")  # Linux's: the image's
    lines = status.read_text().splitlines() if status.is_file() else []
    rss = next((int(line.split()[1]) * 1024 for line in lines if line.startswith("VmRSS:")), 0)
    text = f"host memory in use {rss / 1e9:.2f} GB"
    if device.startswith("cuda"):
        text += (f", {device} {torch.cuda.memory_allocated(device) / 1e9:.2f} GB allocated "
                 f"({torch.cuda.memory_reserved(device) / 1e9:.2f} GB reserved)")
    return text


def pipe_modules(pipe: Any) -> list[Any]:
    """The pipeline's models (its components that hold weights)."""
    import torch

    return [component for component in pipe.components.values() if isinstance(component, torch.nn.Module)]


def weight_bytes(pipe: Any) -> int:
    """What the pipeline's models hold in memory: see held_bytes."""
    return held_bytes(pipe_modules(pipe))


def held_bytes(modules: Iterable[Any]) -> int:
    """Bytes of distinct storage behind the modules' parameters and buffers: see storage_sizes."""
    return sum(storage_sizes(modules).values())


def storage_sizes(modules: Iterable[Any]) -> dict[tuple[str, int], int]:
    """Each distinct storage behind the modules' parameters and buffers, by device and address, with its bytes:
    views of one tensor (fused q/k/v) once, a tensor subclass (an fp8 weight) by the storages of its data and
    scales."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    storages = {}
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            inner = [getattr(tensor, name) for name in tensor.__tensor_flatten__()[0]] \
                if is_traceable_wrapper_subclass(tensor) else [tensor]
            storages.update({(str(t.device), t.untyped_storage().data_ptr()): t.untyped_storage().nbytes()
                             for t in inner})
    return storages


def files_signature(worker: Worker) -> FilesSignature:
    """Each of the model's files with its signature_of (size, times, inode; None if unreadable): a change means the
    model was replaced."""
    if worker.report is None:
        return ()
    folder = Path(worker.report.model_path)
    return tuple((str(path.relative_to(folder)), signature_of(path)) for path in sorted(folder.rglob("*"))
                 if path.is_file())


def start_from_env(*, warmup: bool = True) -> ModelSet:
    """Read the settings (the start's first step), set up logging at their level, then start the models.

    A bad setting leaves the worker up, answering every job with the sentence that names it.
    """
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        configure_logging("INFO")
        log.error("cannot serve: bad setting: %s", exc)
        return ModelSet.cannot_serve(f"bad setting: {exc}")
    configure_logging(settings.log_level, torchao_notices=settings.speed.quantize == "fp8")
    return ModelSet.start(settings, warmup=warmup)
