"""The RunPod Hub listing: every setting, no stale one, defaults the worker reads back as its own, the image's CUDA;
the files the Hub requires, and its test jobs passing on a machine with no volume."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

from dev.cuda_flavours import FLAVOURS
from dev.hub import HUB_DOCKERFILE, HUB_JSON, IMAGE_DOCKERFILE, TESTS_JSON, render, render_tests
from dev.runpod_deploy import DeploySettings
from sdxl_worker.serving.stack_test import STACK_TEST_VARIANT
from sdxl_worker.serving.worker import Worker
from sdxl_worker.settings import Settings, environment_fields
from tests.helpers import ROOT


def listing() -> dict:
    return json.loads(HUB_JSON.read_text())


def test_hub_json_is_generated_from_the_settings() -> None:
    assert HUB_JSON.read_text() == render(), ".runpod/hub.json is stale: run python -m dev.hub"


def test_every_setting_is_an_input_and_none_is_stale() -> None:
    keys = [entry["key"] for entry in listing()["config"]["env"]]
    assert keys == [variable for variable, _ in environment_fields()]
    assert {"MODEL_PATH", "MAX_PIXELS", "CUDA_GRAPHS", "COMPILE", "BUCKET_ENDPOINT_URL", "BUCKET_NAME"} <= set(keys)


def test_a_deploy_with_the_listed_defaults_runs_the_workers_defaults() -> None:
    """What the Hub sets from the listing (booleans as true/false, numbers as digits) parses to Settings()."""
    env = {}
    for entry in listing()["config"]["env"]:
        value = entry["input"]["default"]
        env[entry["key"]] = str(value).lower() if isinstance(value, bool) else str(value)
    assert Settings.from_env(env) == Settings()


def test_the_listing_asks_for_the_images_cuda_and_the_documented_fields() -> None:
    hub = listing()
    assert {"title", "description", "type", "category", "config"} <= set(hub)
    assert hub["type"] == "serverless" and hub["category"] == "image"
    base = re.search(r"^ARG CUDA_FLAVOUR=(\S+)$", IMAGE_DOCKERFILE.read_text(), re.M).group(1)
    allowed = list(FLAVOURS[base].allowed_cuda_versions)
    assert hub["config"]["allowedCudaVersions"] == allowed
    assert json.loads(TESTS_JSON.read_text())["config"]["allowedCudaVersions"] == allowed
    assert DeploySettings("image", "volume").allowed_cuda_versions.split(",") == allowed
    assert hub["config"]["runsOn"] == "GPU" and hub["config"]["gpuCount"] == 1


def test_the_hub_finds_its_required_files() -> None:
    """RunPod's publishing guide: hub.json, tests.json, handler.py, Dockerfile, README.md, in the root or .runpod/."""
    assert TESTS_JSON.read_text() == render_tests(), ".runpod/tests.json is stale: run python -m dev.hub"
    assert HUB_DOCKERFILE.read_text() == IMAGE_DOCKERFILE.read_text(), ".runpod/Dockerfile is stale: python -m dev.hub"
    assert (ROOT / "README.md").is_file()
    shim = subprocess.run([sys.executable, "handler.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "DEVICE": "cpu"})
    assert shim.returncode == 0 and "--test" in shim.stdout and "--rp_serve_api" in shim.stdout


def test_the_hub_tests_pass_on_a_machine_without_a_volume(tmp_path: Path) -> None:
    """What RunPod's test machine does: the image started with tests.json's env and no volume, then each job."""
    hub_tests = json.loads(TESTS_JSON.read_text())
    env = {entry["key"]: entry["value"] for entry in hub_tests["config"]["env"]}
    model_path = str(tmp_path / "runpod-volume" / "photonicfusion-sdxl")
    worker = Worker.start(Settings.from_env({**env, "MODEL_PATH": model_path, "DEVICE": "cpu"}), warmup=False)
    assert [test["name"] for test in hub_tests["tests"]] == ["png_one_image", "jpeg_two_images_sampler"]
    for test in hub_tests["tests"]:
        job = test["input"]
        reply = worker.handle({"id": test["name"], "input": job})
        assert "error" not in reply, reply
        assert reply["model"]["variant"] == STACK_TEST_VARIANT
        assert reply["format"] == job.get("output_format", "png")
        sizes = [Image.open(io.BytesIO(base64.b64decode(image))).size for image in reply["images"]]
        assert sizes == [(job["width"], job["height"])] * job.get("num_images", 1)
