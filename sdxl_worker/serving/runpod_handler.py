"""The handler runpod calls, async so that RunPod's stop signal for a request reaches its job.

runpod 1.12 stops one request (cancelled, expired or past its execution timeout) by cancelling the asyncio task that
awaits the handler: a synchronous handler never sees it and keeps the GPU to the end. Here the job runs in one
thread (one job at a time on the device) while the handler awaits it; a cancellation sets the job's stop flag, the
sampling loop ends at its next step (LoRAs unmerged, caches kept, as after any failed job), and the cancellation is
raised again once the thread is free, which is how the SDK learns the job was stopped. With STREAM=1 the handler is
an async generator: each progress update (and preview) is a chunk of RunPod's stream, the reply the last one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from sdxl_worker.serving.worker import ProgressSink
from sdxl_worker.settings import Settings
from sdxl_worker.watch.control import JobControl

log = logging.getLogger("worker")

STOPPED_BY_RUNPOD = "RunPod stopped the request (cancelled, expired or past its execution timeout)"
_DONE = object()


class Serving(Protocol):
    """What runs jobs: the endpoint's models (serving.models.ModelSet), or one Worker."""

    settings: Settings

    def handle(self, job: dict[str, Any], control: JobControl | None = None,
               progress: ProgressSink | None = None) -> dict[str, Any]: ...


class RunpodHandler:
    """`reply` and `stream` are runpod handlers over the endpoint's models; `for_runpod` picks the one STREAM asks
    for."""

    def __init__(self, models: Serving) -> None:
        self.models = models
        self._device = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job")

    def for_runpod(self) -> Callable[[dict[str, Any]], Any]:
        return self.stream if self.models.settings.watch.stream else self.reply

    async def reply(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job's reply; its progress updates go to the worker's sink (the job's status on RunPod)."""
        control = self._control()
        running = asyncio.get_running_loop().run_in_executor(self._device, self.models.handle, job, control)
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            await self._stopped(job, control, running)
            raise

    async def stream(self, job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Each progress update as it comes, then the reply."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[Any] = asyncio.Queue()

        def send(_job: dict[str, Any], update: dict[str, Any]) -> None:  # called in the job's thread
            loop.call_soon_threadsafe(updates.put_nowait, update)

        control = self._control()
        running = loop.run_in_executor(self._device, self.models.handle, job, control, send)
        running.add_done_callback(lambda _: updates.put_nowait(_DONE))  # after every update already queued
        try:
            while (update := await updates.get()) is not _DONE:
                yield update
        except asyncio.CancelledError:
            await self._stopped(job, control, running)
            raise
        yield running.result()

    def _control(self) -> JobControl:
        return JobControl(self.models.settings.watch.job_timeout_s)

    @staticmethod
    async def _stopped(job: dict[str, Any], control: JobControl, running: asyncio.Future[dict[str, Any]]) -> None:
        """Stop the job at its next step and wait until its thread is free for the next one."""
        control.stop(STOPPED_BY_RUNPOD)
        reply = await asyncio.shield(running)  # the worker logged where it stopped
        if "error" not in reply:
            log.info("job %s finished before RunPod's stop reached it; RunPod drops its reply", str(job.get("id"))[:64])
