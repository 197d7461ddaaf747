"""Create or update the RunPod serverless template and endpoint for the worker, with the runpod SDK.

The Python half of deploy_volume_optimized.sh, which owns its flags and their defaults: the script calls it
once to check them before anything runs, builds and pushes the image, then calls it to deploy. Re-running updates, never
duplicates: the template's name is derived from the image and the settings, so the same inputs find
the same template, and an endpoint with the same name gets the new template instead of a twin.
The API key comes from RUNPOD_API_KEY only (never argv) and is never printed.

The worker's settings (docs/settings.md) come from an env file (`--env-file endpoint.env`: NAME=value lines,
checked against the settings model before anything runs). A redeploy makes a new template for a new image, so
it carries over every variable of the endpoint's current template that this deploy does not set (one set by hand
in RunPod's console included; `NAME=` in the env file drops one), and prints what changes; secrets' values are
never printed. A dry run with RUNPOD_API_KEY set reads the endpoint to show that difference and changes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import requests

from dev.cuda_flavours import DEFAULT, FLAVOURS
from sdxl_worker.sentences import describe
from sdxl_worker.settings import DEFAULT_MODEL_PATH

VOLUME_MOUNT_PATH = str(Path(DEFAULT_MODEL_PATH).parent)
TEMPLATES_QUERY = "query { myself { podTemplates { id name imageName isServerless } } }"
# A variable whose name holds one of these is a secret: its value is never printed.
SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "API_KEY")
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass(frozen=True)
class DeploySettings:
    image: str
    network_volume_id: str
    endpoint_name: str = "photonicfusion-sdxl"
    gpu_ids: str = "ADA_24,AMPERE_48,ADA_48_PRO"
    workers_min: int = 0
    workers_max: int = 3
    idle_timeout: int = 5
    flashboot: bool = True
    container_disk_gb: int = 20
    model_path: str | None = None
    max_pixels: int | None = None
    allowed_cuda_versions: str = ",".join(FLAVOURS[DEFAULT].allowed_cuda_versions)
    env_file: tuple[tuple[str, str], ...] = ()  # the worker's settings from --env-file, in its order
    carried: tuple[tuple[str, str], ...] = ()  # the endpoint's current variables this deploy does not set

    def env(self) -> dict[str, str]:
        """The worker's environment on RunPod (see docs/settings.md): what was carried over, then the env file, then
        the flags."""
        env = {**dict(self.carried), **dict(self.env_file), **OFFLINE_ENV}
        env["MODEL_PATH"] = self.model_path or env.get("MODEL_PATH") or DEFAULT_MODEL_PATH
        if self.max_pixels is not None:
            env["MAX_PIXELS"] = str(self.max_pixels)
        return env

    def set_here(self) -> set[str]:
        """The variables this deploy sets itself (the rest of an endpoint's are carried over)."""
        return {*dict(self.env_file), *OFFLINE_ENV, "MODEL_PATH", *(("MAX_PIXELS",) if self.max_pixels else ())}

    def template_name(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        tag = re.sub(r"[^A-Za-z0-9_.-]", "-", self.image.rsplit("/", 1)[-1])
        return f"{self.endpoint_name}-{tag}-{digest}"


def template_fields(settings: DeploySettings) -> dict[str, Any]:
    """Arguments of runpod.create_template, and of the SDK's mutation generator behind it."""
    return {
        "name": settings.template_name(),
        "image_name": settings.image,
        "container_disk_in_gb": settings.container_disk_gb,
        "volume_mount_path": VOLUME_MOUNT_PATH,
        "env": settings.env(),
        "is_serverless": True,
    }


def endpoint_fields(settings: DeploySettings, template_id: str) -> dict[str, Any]:
    """Arguments of runpod.create_endpoint, and of the SDK's mutation generator behind it."""
    return {
        "name": settings.endpoint_name,
        "template_id": template_id,
        "gpu_ids": settings.gpu_ids,
        "network_volume_id": settings.network_volume_id,
        "idle_timeout": settings.idle_timeout,
        "workers_min": settings.workers_min,
        "workers_max": settings.workers_max,
        "flashboot": settings.flashboot,
        "allowed_cuda_versions": settings.allowed_cuda_versions,
        "gpu_count": 1,
    }


def deploy(settings: DeploySettings, api_key: str, dry_run: bool = False) -> str:
    """Make the endpoint serve `settings.image`; return its id (a placeholder in a dry run)."""
    import runpod

    endpoint = None
    if api_key:
        runpod.api_key = api_key
        try:
            endpoint = next((e for e in runpod.get_endpoints() or [] if e["name"] == settings.endpoint_name), None)
        except (requests.RequestException, runpod.error.RunPodError) as exc:
            # A dry run still shows the requests; a real run cannot go on without knowing the endpoint.
            reason = f"RunPod's API could not be read ({describe(exc, 200)})"
            if not dry_run:
                raise DeployError(f"{reason}: check RUNPOD_API_KEY and the network") from None
            say(f"{reason}: the requests are shown without what a redeploy would change")
    if endpoint is not None:
        current = {item["key"]: item["value"] for item in endpoint.get("env") or []}
        settings = replace(settings, carried=tuple((k, v) for k, v in current.items() if k not in settings.set_here()))
        say_changes(endpoint, current, settings.env())
    if dry_run:
        from runpod.api.mutations.endpoints import generate_endpoint_mutation
        from runpod.api.mutations.templates import generate_pod_template

        say("dry run: nothing is changed" + (", the endpoint was only read" if api_key else "") +
            ". These are the requests a real run makes (Authorization: Bearer ***):")
        say(f"query templates:\n{TEMPLATES_QUERY}")
        masked = {**template_fields(settings), "env": masked_env(settings.env())}
        say(f"if no template is named {settings.template_name()!r}, create it:\n{generate_pod_template(**masked)}")
        say("query endpoints: runpod.get_endpoints()")
        say(f"if no endpoint is named {settings.endpoint_name!r}, create it:\n"
            f"{generate_endpoint_mutation(**endpoint_fields(settings, '<template id>'))}")
        say("else: runpod.update_endpoint_template(<endpoint id>, <template id>)")
        return "<endpoint id>"

    from runpod.api.graphql import run_graphql_query

    templates = run_graphql_query(TEMPLATES_QUERY)["data"]["myself"]["podTemplates"] or []
    template = next((t for t in templates if t["name"] == settings.template_name()), None)
    if template is None:
        template = runpod.create_template(**template_fields(settings))
        say(f"created template {template['id']} ({settings.template_name()})")
    else:
        say(f"template {template['id']} ({settings.template_name()}) already exists; reusing it")

    if endpoint is None:
        endpoint = runpod.create_endpoint(**endpoint_fields(settings, template["id"]))
        say(f"created endpoint {endpoint['id']} ({settings.endpoint_name})")
        return endpoint["id"]
    runpod.update_endpoint_template(endpoint["id"], template["id"])
    say(f"endpoint {endpoint['id']} ({settings.endpoint_name}) now uses template {template['id']}")
    _warn_differences(endpoint, settings)
    return endpoint["id"]


def _warn_differences(endpoint: dict[str, Any], settings: DeploySettings) -> None:
    """The SDK updates an endpoint's template only; say which other settings differ from those asked for."""
    wanted = {"workersMin": settings.workers_min, "workersMax": settings.workers_max,
              "idleTimeout": settings.idle_timeout, "gpuIds": settings.gpu_ids,
              "networkVolumeId": settings.network_volume_id}
    for key, value in wanted.items():
        if key in endpoint and endpoint[key] != value:
            say(f"warning: endpoint {key} is {endpoint[key]!r}, asked {value!r}: change it in the RunPod console")


class DeployError(RuntimeError):
    """The deploy cannot go on; str() is the one line to print."""


def is_secret(name: str) -> bool:
    return any(word in name.upper() for word in SECRET_WORDS)


def masked_env(env: dict[str, str]) -> dict[str, str]:
    """`env` as it may be printed: every secret's value replaced."""
    return {name: "***" if is_secret(name) and value else value for name, value in env.items()}


def say_changes(endpoint: dict[str, Any], current: dict[str, str], new: dict[str, str]) -> None:
    """What the redeploy changes in the endpoint's variables, and what it keeps that it did not set."""
    shown_now, shown_new = masked_env(current), masked_env(new)
    lines = [f"  + {k}={shown_new[k]}" for k in new if k not in current]
    lines += [f"  ~ {k}: {shown_now[k]} -> {shown_new[k]}" for k in new if k in current and new[k] != current[k]]
    say(f"endpoint {endpoint['id']} ({endpoint['name']}): its variables "
        + ("change:\n" + "\n".join(lines) if lines else "stay as they are"))
    kept = sorted(k for k in current if k in new and k not in OFFLINE_ENV and new[k] == current[k])
    if kept:
        say(f"  kept: {', '.join(kept)}")


def read_env_file(path: Path) -> tuple[tuple[str, str], ...]:
    """The worker's settings in `path` (NAME=value lines; blank lines and # comments skipped; `export ` and quotes
    around a value allowed), each a setting of docs/settings.md, checked together by the settings model; ValueError
    with one line naming the file, the line and the rule."""
    from sdxl_worker.sentences import alternatives
    from sdxl_worker.settings import Settings, SettingsError, environment_fields

    known = [name for name, _ in environment_fields()]
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, equals, value = text.removeprefix("export ").partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name:
            raise ValueError(f"{path} line {number}: not NAME=value")
        if name not in known:
            raise ValueError(f"{path} line {number}: {name} is not a worker setting (docs/settings.md)."
                             + alternatives(name, known).split(" Available:")[0])
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    try:
        Settings.from_env(values)
    except SettingsError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return tuple(values.items())


def say(message: str) -> None:
    print(message, flush=True)


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line under the shell script's name, exit 2: the script's own error format."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments: "):
            message = f"unknown flag {message.removeprefix('unrecognized arguments: ')} (see --help)"
        self.exit(2, f"deploy_volume_optimized.sh: {message}\n")


class DefaultsShown(argparse.HelpFormatter):
    """Each flag's help with the default it takes now (its variable's value when set), where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        shown = not unset and action.help != argparse.SUPPRESS
        return f"{action.help} (default: %(default)s)" if shown else str(action.help)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags and their defaults, each flag also an environment variable (the flag wins)."""
    env = os.environ
    d = DeploySettings
    parser = OneLineParser(prog="deploy_volume_optimized.sh", formatter_class=DefaultsShown, description=(
        "Build and push the worker image, then create or update the RunPod serverless template and endpoint "
        "with the network volume attached. Re-running updates, never duplicates. RUNPOD_API_KEY comes from the "
        "environment only and is never printed."))
    parser.add_argument("--image", default=env.get("IMAGE"), help="IMAGE: name:tag to build, push and deploy")
    parser.add_argument("--volume-id", default=env.get("NETWORK_VOLUME_ID"), help="NETWORK_VOLUME_ID")
    parser.add_argument("--endpoint-name", default=env.get("ENDPOINT_NAME", d.endpoint_name), help="ENDPOINT_NAME")
    parser.add_argument("--gpu-types", default=env.get("GPU_TYPES", d.gpu_ids), help="GPU_TYPES: RunPod GPU ids")
    parser.add_argument("--workers-min", type=int, default=env.get("WORKERS_MIN", d.workers_min), help="WORKERS_MIN")
    parser.add_argument("--workers-max", type=int, default=env.get("WORKERS_MAX", d.workers_max), help="WORKERS_MAX")
    parser.add_argument("--idle-timeout", type=int, default=env.get("IDLE_TIMEOUT", d.idle_timeout),
                        help="IDLE_TIMEOUT, seconds")
    parser.add_argument("--flashboot", choices=("on", "off"), default=env.get("FLASHBOOT", "on"), help="FLASHBOOT")
    parser.add_argument("--container-disk-gb", type=int, default=env.get("CONTAINER_DISK_GB", d.container_disk_gb),
                        help="CONTAINER_DISK_GB")
    parser.add_argument("--model-path", help=f"the worker's MODEL_PATH, else the env file's (default: "
                        f"{DEFAULT_MODEL_PATH})")
    parser.add_argument("--env-file", type=Path, default=env.get("ENV_FILE"), help=(
        "ENV_FILE: the worker's settings, NAME=value lines (docs/settings.md), checked before anything runs"))
    parser.add_argument("--max-pixels", type=int, default=env.get("MAX_PIXELS"), help="MAX_PIXELS for the worker")
    parser.add_argument("--skip-build", action="store_true", help="push nothing; deploy an image already pushed")
    parser.add_argument("--dry-run", action="store_true", help="print every command and API request, change nothing")
    parser.add_argument("--check", action="store_true", help=argparse.SUPPRESS)  # the shell's preflight
    args = parser.parse_args(argv)
    if not args.image:
        parser.error("IMAGE (or --image name:tag) is required")
    if ":" not in args.image:
        parser.error(f"IMAGE must carry a tag (name:tag), got '{args.image}'")
    if not args.volume_id:
        parser.error("NETWORK_VOLUME_ID (or --volume-id) is required")
    if not args.dry_run and not env.get("RUNPOD_API_KEY"):
        parser.error("RUNPOD_API_KEY is not set")
    for name in ("workers_min", "workers_max", "idle_timeout", "container_disk_gb"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.workers_min > args.workers_max:
        parser.error(f"--workers-min ({args.workers_min}) is above --workers-max ({args.workers_max})")
    args.env_values = ()
    if args.env_file is not None:
        try:
            args.env_values = read_env_file(args.env_file)
        except OSError as exc:
            parser.error(f"--env-file {args.env_file}: {exc.strerror}")
        except ValueError as exc:
            parser.error(str(exc))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return 0
    settings = DeploySettings(
        image=args.image,
        network_volume_id=args.volume_id,
        endpoint_name=args.endpoint_name,
        gpu_ids=args.gpu_types,
        workers_min=args.workers_min,
        workers_max=args.workers_max,
        idle_timeout=args.idle_timeout,
        flashboot=args.flashboot == "on",
        container_disk_gb=args.container_disk_gb,
        model_path=args.model_path,
        max_pixels=args.max_pixels,
        env_file=args.env_values,
    )
    try:
        endpoint_id = deploy(settings, os.environ.get("RUNPOD_API_KEY", ""), dry_run=args.dry_run)
    except DeployError as exc:
        print(f"deploy_volume_optimized.sh: {exc}", file=sys.stderr)
        return 1
    say(f"ENDPOINT_ID={endpoint_id}")
    say(f"smoke test: ENDPOINT_ID={endpoint_id} RUNPOD_API_KEY=\"$RUNPOD_API_KEY\" bash smoke_test.sh")
    return 0


if __name__ == "__main__":
    sys.exit(main())
