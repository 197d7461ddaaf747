"""The worker behind runpod's own local API, as a client sees it over HTTP on loopback."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT, decode, png_b64, request, start_api, stop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("api") / "api.log"


@pytest.fixture(scope="module")
def api(tiny_volume_source: Path, bucket_env: dict[str, str], api_log: Path) -> Iterator[str]:
    """The worker behind runpod's local API for the module, with a bucket configured as an endpoint may have it:
    replies under RESULT_MAX_MB still come inline, larger ones as URLs."""
    process, base = start_api(tiny_volume_source, api_log, bucket_env)
    yield base
    stop(process)


JOB = {"prompt": "a photonic lighthouse", "width": 256, "height": 320, "num_inference_steps": 2, "seed": 9}


def test_runsync_completes_with_an_image(api: str) -> None:
    status, reply = request(api, "/runsync", {"input": JOB})
    assert status == 200 and reply["status"] == "COMPLETED"
    output = reply["output"]
    assert decode(output["images"][0]).size == (256, 320)
    assert output["seeds"] == [9] and output["model"]["device"] == "cpu"


@pytest.mark.parametrize(
    ("job", "words"),
    [
        ({**JOB, "width": 255}, "width: Input should be a multiple of 8"),
        ({**JOB, "steps": 5}, "unknown field 'steps'"),
        ({"prompt": ""}, "prompt:"),
        ({**JOB, "guidance_scale": "high"}, "guidance_scale: Input should be a valid number"),
    ],
)
def test_runsync_bad_jobs_fail_readably(api: str, job: dict, words: str) -> None:
    status, reply = request(api, "/runsync", {"input": job})
    assert status == 200 and reply["status"] == "FAILED"
    assert isinstance(reply["error"], str) and words in reply["error"]


def test_malformed_bodies_are_refused_without_500(api: str) -> None:
    for body in ({"input": "junk"}, [1, 2], {}):
        status, _ = request(api, "/runsync", body)
        assert status == 422


def test_run_then_status(api: str) -> None:
    status, queued = request(api, "/run", {"input": {**JOB, "num_images": 2}})
    assert status == 200 and queued["status"] in {"IN_QUEUE", "IN_PROGRESS", "COMPLETED"}
    deadline = time.monotonic() + 60
    while True:
        status, reply = request(api, f"/status/{queued['id']}")
        assert status == 200
        if reply["status"] in {"COMPLETED", "FAILED"} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert reply["status"] == "COMPLETED"
    assert [decode(b).size for b in reply["output"]["images"]] == [(256, 320)] * 2


def test_run_bad_job_reports_failed_status(api: str) -> None:
    _, queued = request(api, "/run", {"input": {**JOB, "num_images": 9}})
    _, reply = request(api, f"/status/{queued['id']}")
    assert reply["status"] == "FAILED" and "num_images" in reply["error"]


def test_unusable_volume_fails_every_job_readably(tmp_path: Path) -> None:
    process, base = start_api(tmp_path / "runpod-volume" / "photonicfusion-sdxl", tmp_path / "api.log")
    try:
        status, reply = request(base, "/runsync", {"input": JOB})
    finally:
        stop(process)
    assert status == 200 and reply["status"] == "FAILED"
    assert "This worker cannot serve jobs" in reply["error"] and "network volume attached" in reply["error"]


def test_smoke_test_script_against_local_api(api: str) -> None:
    run = subprocess.run(["bash", "smoke_test.sh", f"{api}/runsync"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "WIDTH": "264", "HEIGHT": "256", "STEPS": "2"}, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "✅ 264x256 PNG" in run.stdout
    bad = subprocess.run(["bash", "smoke_test.sh", f"{api}/runsync"], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "WIDTH": "260"}, timeout=120)
    assert bad.returncode == 1 and "❌ status FAILED: Invalid input: width" in bad.stderr


def test_image_to_image_and_inpainting_over_runsync(api: str) -> None:

    from PIL import Image

    image, mask = png_b64(Image.new("RGB", (320, 256), (30, 140, 200))), png_b64(Image.new("L", (320, 256), 255))
    for fields, mode in (({"image": image, "strength": 0.6}, "img2img"), ({"image": image, "mask": mask}, "inpaint")):
        status, reply = request(api, "/runsync", {"input": {"prompt": "a lighthouse", "num_inference_steps": 2,
                                                            "num_images": 2, **fields}})
        assert status == 200 and reply["status"] == "COMPLETED", reply
        output = reply["output"]
        assert output["mode"] == mode and [decode(i).size for i in output["images"]] == [(320, 256)] * 2
    status, reply = request(api, "/runsync", {"input": {"prompt": "x", "image": "data:image/png;base64,AAAA"}})
    assert reply["status"] == "FAILED" and reply["error"].startswith("Invalid input: image ")


def test_a_reply_over_runpods_limit_arrives_as_bucket_urls(api: str, api_log: Path,
                                                          bucket_env: dict[str, str]) -> None:
    """Three 1536x1536 PNGs over /runsync (24 MB as base64: over RunPod's 20 MB and RESULT_MAX_MB's 9 MB), so the
    worker uploads them to the S3 server and the reply, COMPLETED, gives URLs that serve the same images. Guidance
    off (1.0) halves the UNet's work; the reply is the same size."""
    import base64
    import urllib.request

    job = {"prompt": "a photonic lighthouse", "width": 1536, "height": 1536, "num_inference_steps": 1,
           "num_images": 3, "guidance_scale": 1.0, "seed": 11}
    status, reply = request(api, "/runsync", {"input": job}, timeout=300)
    assert status == 200 and reply["status"] == "COMPLETED", reply
    output = reply["output"]
    assert output["output"] == "url" and "over RESULT_MAX_MB=9" in output["output_note"]
    sizes = []
    for url in output["images"]:
        with urllib.request.urlopen(url, timeout=30) as fetched:
            data = fetched.read()
        sizes.append(len(data))
        assert decode(base64.b64encode(data)).size == (1536, 1536)
    assert sum(sizes) * 4 / 3 > 19e6
    assert bucket_env["BUCKET_SECRET_ACCESS_KEY"] not in api_log.read_text()


def test_with_stream_on_the_local_api_streams_progress_and_previews_then_the_reply(
        tiny_volume_source: Path, tmp_path: Path) -> None:
    process, base = start_api(tiny_volume_source, tmp_path / "api.log", {"STREAM": "1"})
    try:
        _, queued = request(base, "/run", {"input": {**JOB, "num_inference_steps": 6, "preview": 2}})
        status, streamed = request(base, f"/stream/{queued['id']}")
        assert status == 200 and streamed["status"] == "COMPLETED"
        *updates, reply = [chunk["output"] for chunk in streamed["stream"]]
        assert [update["step"] for update in updates] == [1, 2, 3, 4, 5, 6]
        previews = [decode(update["preview"]) for update in updates if "preview" in update]
        assert len(previews) == 2 and all(p.format == "JPEG" and p.size == (32, 40) for p in previews)
        assert decode(reply["images"][0]).size == (256, 320) and reply["seeds"] == [9]
        # /runsync answers the same chunks as a list, the reply last.
        status, synced = request(base, "/runsync", {"input": {**JOB, "num_inference_steps": 6}})
        assert status == 200 and synced["output"][-1]["images"] == reply["images"]
        assert [chunk["step"] for chunk in synced["output"][:-1]] == [1, 2, 3, 4, 5, 6]
    finally:
        stop(process)


def test_two_models_behind_the_local_api_never_mix_under_concurrent_jobs(
        tiny_volume_source: Path, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from dev.synthetic_volume import build_volume

    other = build_volume(tmp_path / "other" / "photonicfusion-sdxl", "tiny", ["standard"], seed=7)
    process, base = start_api(tiny_volume_source, tmp_path / "api.log",
                              {"MODELS": f"photonic={tiny_volume_source},other={other}"})
    try:
        names = ["photonic", "other"] * 3
        with ThreadPoolExecutor(len(names)) as pool:
            replies = list(pool.map(lambda name: request(base, "/runsync", {"input": {**JOB, "model": name}},
                                                         timeout=300), names))
        outputs = [reply["output"] for status, reply in replies if status == 200 and reply["status"] == "COMPLETED"]
        assert len(outputs) == len(names), replies
        by_model: dict[str, set[str]] = {}
        for name, output in zip(names, outputs, strict=True):
            assert output["model"]["name"] == name and output["timings"]["switch_s"] >= 0
            by_model.setdefault(name, set()).add(output["images"][0])
        # The same job on the same model draws one image; the two models draw two.
        assert [len(images) for images in by_model.values()] == [1, 1]
        assert by_model["photonic"] != by_model["other"]
    finally:
        stop(process)
