"""The RunPod Hub listing, `.runpod/hub.json`, generated from the settings object and the deploy defaults.

Every setting the worker reads becomes an environment input with its default and description, so the listing
cannot miss one or keep a stale one; a test fails when the file differs from what this writes.

    python -m dev.hub           # rewrite .runpod/hub.json
    python -m dev.hub --check   # exit 1 when it differs
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from dev.runpod_deploy import DeploySettings
from sdxl_worker.settings import environment_fields, field_types

HUB_JSON = Path(__file__).resolve().parents[1] / ".runpod" / "hub.json"
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


def render() -> str:
    return json.dumps(hub_listing(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when .runpod/hub.json differs; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        if not HUB_JSON.is_file() or HUB_JSON.read_text() != render():
            print(".runpod/hub.json differs from the settings: run python -m dev.hub", file=sys.stderr)
            return 1
        return 0
    HUB_JSON.write_text(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
