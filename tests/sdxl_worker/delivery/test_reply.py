"""Through the job handler: a reply over RESULT_MAX_MB is never returned; with a bucket its images come as URLs."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sdxl_worker.serving.worker import Worker
from sdxl_worker.settings import Settings
from tests.helpers import decode, s3_user, start_s3_server, stop

pytestmark = pytest.mark.slow

JOB = {"prompt": "a photonic lighthouse", "width": 512, "height": 512, "num_inference_steps": 1, "seed": 3,
       "num_images": 4}


def worker_with(worker: Worker, env: dict[str, str], **progress: Any) -> Worker:
    """The session's loaded pipeline behind other settings (a bucket, a result limit)."""
    settings = Settings.from_env({"MODEL_PATH": worker.settings.model_path, "DEVICE": "cpu", **env})
    return Worker(worker.pipe, worker.record, settings=settings, report=worker.report, **progress)


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read()


def test_over_the_limit_without_a_bucket_the_job_fails_saying_what_to_change(worker: Worker) -> None:
    steps: list[dict] = []
    small = worker_with(worker, {"RESULT_MAX_MB": "1"}, progress=lambda job, update: steps.append(update))
    # Knowable ahead: four 512x512 PNGs are estimated at 2 MB, so the job is refused before it generates.
    ahead = small.handle({"id": "big", "input": JOB})
    assert ahead == {"error": "4 PNG(s) of 512x512 would make a reply of about 2 MB (estimated at 1.5 bytes a pixel), "
                              "over RESULT_MAX_MB=1 (RunPod drops results over 10 MB on /run, 20 MB on /runsync): use "
                              "output_format jpeg or webp, fewer images or a smaller size, configure a bucket "
                              '(BUCKET_*) to get URLs, or send output "base64" to generate it and measure.'}
    assert steps == []
    # Insisting generates and measures; over the limit, still no reply RunPod would drop.
    reply = small.handle({"id": "big", "input": {**JOB, "output": "base64"}})
    assert set(reply) == {"error"} and steps
    assert reply["error"].startswith("The reply would be ") and "MB, over RESULT_MAX_MB=1 (RunPod drops results " \
        "over 10 MB on /run, 20 MB on /runsync): use output_format jpeg or webp, a lower quality, fewer images or a " \
        "smaller size, or configure a bucket (BUCKET_*) to get URLs." in reply["error"]
    assert small.handle({"id": "small", "input": {**JOB, "num_images": 1, "width": 256, "height": 256}})["output"] \
        == "base64"


def test_the_default_limit_fits_runpods_lowest_documented_one() -> None:
    assert Settings.from_env({}).result_max_mb * 1_000_000 < 10 * 2**20 * 0.95


def test_over_the_limit_with_a_bucket_the_images_come_as_urls(worker: Worker, bucket_env: dict[str, str]) -> None:
    reply = worker_with(worker, {**bucket_env, "RESULT_MAX_MB": "1"}).handle({"id": "job-7", "input": JOB})
    assert reply["output"] == "url" and "over RESULT_MAX_MB=1: the images were uploaded" in reply["output_note"]
    assert reply["timings"]["upload_s"] > 0 and reply["seeds"] == [3, 4, 5, 6]
    for url, seed in zip(reply["images"], reply["seeds"], strict=True):
        assert f"/images/job-7/{seed - 3}-{seed}.png?" in url
        assert decode(__import__("base64").b64encode(fetch(url))).size == (512, 512)


def test_url_on_request_and_its_refusals(worker: Worker, bucket_env: dict[str, str]) -> None:
    with_bucket = worker_with(worker, bucket_env)
    one = {**JOB, "num_images": 1, "width": 256, "height": 256, "output": "url", "output_format": "webp"}
    reply = with_bucket.handle({"id": "asked", "input": one})
    assert reply["output"] == "url" and "output_note" not in reply and "/asked/0-3.webp?" in reply["images"][0]
    steps: list[dict] = []
    refused = worker_with(worker, {}, progress=lambda job, update: steps.append(update)).handle(
        {"id": "nobucket", "input": one})
    assert refused == {"error": 'output "url" needs a bucket: set BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, '
                                "BUCKET_SECRET_ACCESS_KEY and BUCKET_NAME on the endpoint."}
    assert steps == [], "refused before it generated"
    explicit = worker_with(worker, {**bucket_env, "RESULT_MAX_MB": "1"}).handle(
        {"id": "b64", "input": {**JOB, "output": "base64"}})
    assert explicit["error"].endswith('or send output "url".')


def test_a_bucket_that_goes_away_mid_job_fails_the_job_and_the_worker_keeps_serving(
        worker: Worker, tmp_path: Path) -> None:
    process, endpoint = start_s3_server(tmp_path / "moto.log", authenticate=True)
    env = s3_user(endpoint, "short-lived")

    def stop_the_server(job: dict[str, Any], update: dict[str, Any]) -> None:
        stop(process)

    doomed = worker_with(worker, env, progress=stop_the_server)
    reply = doomed.handle({"id": "doomed", "input": {**JOB, "output": "url", "num_images": 1}})
    assert set(reply) == {"error"} and "Could not connect to the endpoint URL" in reply["error"]
    assert env["BUCKET_SECRET_ACCESS_KEY"] not in reply["error"]
    assert "images" in worker.handle({"id": "next", "input": {**JOB, "num_images": 1, "width": 256, "height": 256}})


def test_the_measured_size_is_the_json_runpod_sends() -> None:
    import base64
    import json
    import os

    from sdxl_worker.delivery.reply import reply_bytes

    images = [os.urandom(n) for n in (3, 1000, 77_777, 0)]
    reply = {"images": images, "seed": 1, "seeds": [1, 2, 3, 4], "timings": {"inference_s": 0.5}, "format": "png",
             "model": {"dtype": "float16"}}
    sent = {**reply, "images": [base64.b64encode(image).decode() for image in images]}
    assert reply_bytes(reply) == len(json.dumps(sent).encode())
