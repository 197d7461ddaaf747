"""The worker under runpod's own job runner, as on RunPod: jobs taken from and results posted to RunPod's job API
(here a loopback fake of it), a request stopped through RunPod's stop channel, and SIGTERM while a job runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sdxl_worker.serving.worker import Worker
from tests.fake_runpod import FakeRunpod, Post
from tests.helpers import ROOT, decode, stop

pytestmark = pytest.mark.slow

LONG = {"prompt": "a photonic lighthouse", "width": 512, "height": 512, "num_inference_steps": 50, "seed": 3}
SHORT = {"prompt": "a photonic lighthouse", "width": 256, "height": 256, "num_inference_steps": 3, "seed": 3}


def progress_steps(posts: list[Post], job_id: str) -> list[int]:
    return [p.body["output"]["step"] for p in posts
            if p.job_id == job_id and p.body.get("status") == "IN_PROGRESS"]


def result(posts: list[Post], job_id: str) -> dict | None:
    return next((p.body for p in posts if p.job_id == job_id and p.body.get("status") != "IN_PROGRESS"), None)


def test_a_stopped_request_ends_at_its_next_steps_and_sigterm_lets_the_running_job_finish(
        tiny_volume_source: Path, tmp_path: Path, worker: Worker) -> None:
    fake = FakeRunpod()
    log_path = tmp_path / "worker.log"
    with fake.serving(), log_path.open("w") as log:
        env = {**os.environ, **fake.env(), "MODEL_PATH": str(tiny_volume_source), "DEVICE": "cpu"}
        process = subprocess.Popen([sys.executable, "handler_volume_optimized.py"], cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # A stop sent once the job has reported its 3rd step (a preview every step makes every step report).
            fake.jobs.put({"id": "long-1", "input": {**LONG, "preview": 1}})
            fake.wait_for(lambda posts: 3 in progress_steps(posts, "long-1"), 180, "3rd step of long-1")
            sent_at_step = max(progress_steps(fake.posts, "long-1"))
            fake.stops.put("long-1")
            stop_sent = time.monotonic()
            fake.jobs.put({"id": "short-2", "input": SHORT})
            short = fake.wait_for(lambda posts: result(posts, "short-2"), 60, "result of short-2")
            stop_to_next_result = time.monotonic() - stop_sent
            # The next job after the stop draws what a worker that never saw the stopped one draws.
            alone = worker.handle({"id": "alone", "input": SHORT})
            assert np.abs(np.asarray(decode(short["output"]["images"][0]), dtype=int)
                          - np.asarray(decode(alone["images"][0]), dtype=int)).max() <= 1
            text = log_path.read_text()
            stopped = [line for line in text.splitlines() if "job long-1 stopped after step" in line]
            assert len(stopped) == 1, text[-3000:]
            stopped_step = int(stopped[0].split("stopped after step ")[1].split()[0])
            assert stopped_step <= sent_at_step + 2, (sent_at_step, stopped[0])
            assert result(fake.posts, "long-1") is None  # runpod reports a stopped request itself
            assert max(progress_steps(fake.posts, "long-1")) <= stopped_step
            print(f"\nstop sent after step {sent_at_step} of 50, the job stopped after step {stopped_step}; the next "
                  f"job's result {stop_to_next_result:.2f} s after the stop was sent")

            # RunPod scaling the worker down: SIGTERM while a job samples; the job finishes and is posted.
            fake.jobs.put({"id": "long-3", "input": {**LONG, "num_inference_steps": 20}})
            fake.wait_for(lambda posts: progress_steps(posts, "long-3"), 120, "progress of long-3")
            os.killpg(process.pid, signal.SIGTERM)
            code = process.wait(timeout=120)
            done = result(fake.posts, "long-3")
            assert code == 0, log_path.read_text()[-3000:]
            assert done is not None and decode(done["output"]["images"][0]).size == (512, 512)
        finally:
            if process.poll() is None:
                stop(process)
    assert "Traceback" not in log_path.read_text()
