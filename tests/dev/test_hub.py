"""The RunPod Hub listing: every setting, no stale one, defaults the worker reads back as its own, the image's CUDA."""

from __future__ import annotations

import json
import re

from dev.hub import HUB_JSON, render
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
    base = re.search(r"FROM nvidia/cuda:(\d+\.\d+)", (ROOT / "Dockerfile.volume_optimized").read_text()).group(1)
    assert hub["config"]["allowedCudaVersions"] == [base]
    assert hub["config"]["runsOn"] == "GPU" and hub["config"]["gpuCount"] == 1
