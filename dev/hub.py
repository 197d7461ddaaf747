"""The RunPod Hub listing, `.runpod/hub.json` and `.runpod/tests.json`, generated from the settings object, the
deploy defaults and the CUDA flavours.

Every setting the worker reads becomes an environment input with its default and description, so the listing
cannot miss one or keep a stale one; a test fails when the files differ from what this writes. The Hub's tests
run on a machine with no volume: they set STACK_TEST=1 (sdxl_worker/serving/stack_test.py), and
tests/dev/test_hub.py serves each of their jobs through the real handler the same way.

    python -m dev.hub           # rewrite .runpod/hub.json, .runpod/tests.json and .runpod/Dockerfile
    python -m dev.hub --check   # exit 1 when any differs
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from dev.cuda_flavours import DEFAULT, FLAVOURS
from dev.runpod_deploy import DeploySettings
from sdxl_worker.settings import environment_fields, field_types

HUB_JSON = Path(__file__).resolve().parents[1] / ".runpod" / "hub.json"
TESTS_JSON = HUB_JSON.with_name("tests.json")
# The Hub builds `Dockerfile` from the root or .runpod/: a copy of the image's, which keeps its design name.
IMAGE_DOCKERFILE, HUB_DOCKERFILE = HUB_JSON.parents[1] / "Dockerfile.volume_optimized", HUB_JSON.with_name("Dockerfile")
# One job of each output the Hub's test machine can check without a volume: a PNG, then two JPEGs with a sampler.
HUB_TEST_JOBS = (
    ("png_one_image", {"prompt": "a lighthouse on a cliff at dusk", "width": 512, "height": 512,
                       "num_inference_steps": 4, "seed": 1}),
    ("jpeg_two_images_sampler", {"prompt": "a red fox in snow", "negative_prompt": "blurry", "width": 768,
                                 "height": 512, "num_inference_steps": 4, "num_images": 2, "output_format": "jpeg",
                                 "scheduler": "dpmpp_2m_karras", "seed": 2}),
)
# RTX 4090 (ADA_24, the listing's first GPU pool): the commonest Hub test card.
HUB_TEST_GPU = "NVIDIA GeForce RTX 4090"
HUB_TEST_TIMEOUT_MS = 300_000
# What a Hub user sets when deploying; the rest are under "advanced".
ESSENTIAL = ("MODEL_PATH", "MAX_PIXELS", "RESULT_MAX_MB", "BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID",
             "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME")


def hub_listing() -> dict[str, Any]:
    deploy = {f.name: f.default for f in fields(DeploySettings) if f.name in
              ("gpu_ids", "container_disk_gb", "allowed_cuda_versions")}
    return {
        "title": "PhotonicFusion SDXL (network volume)",
        "description": ("Stable Diffusion XL fine-tunes served from a network volume, offline: fp16 weights, CUDA "
                        "graphs, seeds and samplers, base64 or bucket URLs. Put the model on the volume first "
                        "(prepare_volume.py); the worker never downloads."),
        "type": "serverless",
        "category": "image",
        "config": {
            "runsOn": "GPU",
            "containerDiskInGb": deploy["container_disk_gb"],
            "gpuIds": deploy["gpu_ids"],
            "gpuCount": 1,
            "allowedCudaVersions": deploy["allowed_cuda_versions"].split(","),
            "env": [_input(variable, field) for variable, field in environment_fields()],
        },
    }


def _input(variable: str, field: FieldInfo) -> dict[str, Any]:
    kind = field_types(field.annotation)[0]
    default = field.get_default(call_default_factory=True)
    description = field.description or ""
    if kind is bool and default is not None:
        kind_name, shown = "boolean", default
    elif kind is int and default is not None:
        kind_name, shown = "number", default
    else:  # a string, or a bool or number that may also be `auto`
        kind_name = "string"
        shown = "auto" if kind in (bool, int) else ("" if default is None else str(default))
        if get_origin(kind) is Literal:
            description += f" One of: {', '.join(map(str, get_args(kind)))}."
        elif kind is bool:
            description += " One of: 1, 0, auto."
        elif kind is int:
            description += " A whole number or auto."
    name = variable.replace("_", " ").capitalize()
    return {"key": variable, "input": {"name": name, "type": kind_name, "description": description,
                                       "default": shown, "advanced": variable not in ESSENTIAL}}


def hub_tests() -> dict[str, Any]:
    """`.runpod/tests.json`: the Hub's test jobs, run on a volume-less machine with the stack test on."""
    return {
        "tests": [{"name": name, "input": job, "timeout": HUB_TEST_TIMEOUT_MS} for name, job in HUB_TEST_JOBS],
        "config": {
            "gpuTypeId": HUB_TEST_GPU,
            "gpuCount": 1,
            "env": [{"key": "STACK_TEST", "value": "1"}],
            "allowedCudaVersions": list(FLAVOURS[DEFAULT].allowed_cuda_versions),
        },
    }


def render() -> str:
    return json.dumps(hub_listing(), indent=2) + "\n"


def render_tests() -> str:
    return json.dumps(hub_tests(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when .runpod/hub.json differs; write nothing")
    args = parser.parse_args(argv)
    files = {HUB_JSON: render(), TESTS_JSON: render_tests(), HUB_DOCKERFILE: IMAGE_DOCKERFILE.read_text()}
    if args.check:
        stale = [path.name for path, text in files.items() if not path.is_file() or path.read_text() != text]
        if stale:
            print(f"stale: .runpod/{', .runpod/'.join(stale)}: run python -m dev.hub",
                  file=sys.stderr)
            return 1
        return 0
    for path, text in files.items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
