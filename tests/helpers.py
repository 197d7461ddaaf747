"""Helpers shared by the tests: the repository root, volume damage, image decoding, the local API."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdxl_worker.volume.sdxl import MODEL_COMPONENTS as MODELS

ROOT = Path(__file__).resolve().parents[1]


def drop_variant(volume: Path, variant: str, components: tuple[str, ...] = MODELS) -> None:
    """Delete one weight set from some components, as an operator's partial upload would leave it."""
    for component in components:
        for path in (volume / component).glob("*.safetensors"):
            is_fp16 = ".fp16." in path.name
            if is_fp16 == (variant == "fp16"):
                path.unlink()


def png_b64(image: Any) -> str:
    """A PIL image as a job sends it: base64 of its PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(b64: str) -> Any:
    """A reply's base64 image as a Pillow image (and proof that it is one)."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def draw_latents(pipe: Any, size: int = 256, steps: int = 2, seed: int = 5) -> Any:
    """A job's latents, as float32, from a fixed seed. No negative prompt, as in most jobs: SDXL then makes its
    negative text embedding all zeros."""
    import torch

    return pipe("a lighthouse", width=size, height=size, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator("cpu").manual_seed(seed)).images.float()


def every_tensor(pipe: Any) -> dict[str, Any]:
    """Every parameter and buffer of the pipeline's models, by component and the name the model gives it."""
    return {f"{component}.{name}": tensor for component in MODELS
            for name, tensor in [*getattr(pipe, component).named_parameters(),
                                 *getattr(pipe, component).named_buffers()]}


def weight_bytes(model: Any) -> int:
    """Bytes of distinct storage behind a model's parameters and buffers: what it holds in memory."""
    from sdxl_worker.serving.models import held_bytes

    return held_bytes([model])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(base: str, path: str, body: object | None = None, timeout: float = 60) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def start_api(model_path: Path, log_path: Path, extra_env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """The worker behind runpod's local API on a free loopback port, on the CPU; returns it and its base URL."""
    port = free_port()
    env = {**os.environ, "MODEL_PATH": str(model_path), "DEVICE": "cpu", **(extra_env or {})}
    command = [sys.executable, "handler_volume_optimized.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1",
               "--rp_api_port", str(port)]
    return start_listening(command, port, env, log_path, "API", 120)


def start_listening(command: list[str], port: int, env: dict[str, str], log_path: Path, what: str,
                    timeout_s: float) -> tuple[subprocess.Popen, str]:
    """Start `command` (a server for `port` on loopback) and return it with its base URL once it accepts a
    connection; a server that exits or stays silent fails the test with its log."""
    log = log_path.open("w")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}:\n{log_path.read_text()}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, f"http://127.0.0.1:{port}"
        time.sleep(0.2)
    stop(process)
    raise AssertionError(f"{what} did not listen within {timeout_s:g} s:\n{log_path.read_text()}")


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mount` for the block (root only); the test is skipped where the mount is
    refused (in CI, where root mounts, a skip fails)."""
    import pytest

    mount.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("tmpfs mount refused here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def cpu_settings(model_path: Path | str, **fields: Any) -> Any:
    """The worker's settings for a model folder on the CPU, defaults for the rest (`fields` override them)."""
    from sdxl_worker.settings import Settings

    return Settings(model_path=str(model_path), device="cpu", **fields)


def tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under `root` with its size, modification time and inode: equal states mean nothing was
    written, replaced or removed."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino)
            for p in sorted(root.rglob("*")) if p.is_file()}


def start_s3_server(log_path: Path, *, authenticate: bool = False) -> tuple[subprocess.Popen, str]:
    """moto's S3-compatible server on a free loopback port; with `authenticate`, it checks credentials after the
    first four requests (those create an IAM user with S3 rights, its key and a bucket: `s3_user`)."""
    port = free_port()
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "4"} if authenticate else {})}
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return start_listening(command, port, env, log_path, "moto server", 60)


def s3_user(endpoint: str, bucket: str) -> dict[str, str]:
    """A bucket and the credentials of a user allowed to use it (four requests: see start_s3_server)."""
    import boto3

    anyone = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "setup",
              "aws_secret_access_key": "setup"}
    iam = boto3.client("iam", **anyone)
    iam.create_user(UserName="worker")
    iam.put_user_policy(UserName="worker", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="worker")["AccessKey"]
    boto3.client("s3", **anyone).create_bucket(Bucket=bucket)
    return {"BUCKET_ENDPOINT_URL": endpoint, "BUCKET_ACCESS_KEY_ID": key["AccessKeyId"],
            "BUCKET_SECRET_ACCESS_KEY": key["SecretAccessKey"], "BUCKET_NAME": bucket, "BUCKET_REGION": "us-east-1"}


def in_ci() -> bool:
    """Running under .ci/run, where every real component a test needs must be present."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class RecordingCapture:
    """Stands in for cuda_graph_capture on the CPU, counting captures and replays."""

    def __init__(self) -> None:
        self.captures = 0
        self.replays = 0
        self.devices: list[Any] = []
        self.pools: list[object] = []

    def __call__(self, run: Any, warmup_calls: int, device: Any, pool: object) -> tuple[Any, Any]:
        import torch
        import torch.utils._pytree as pytree

        self.captures += 1
        self.devices.append(device)
        self.pools.append(pool)
        outputs = run()

        def replay() -> None:
            self.replays += 1
            # A real replay writes its outputs below autograd, whatever the grad mode: so may this one.
            with torch.inference_mode():
                for static, fresh in zip(pytree.tree_leaves(outputs), pytree.tree_leaves(run()), strict=True):
                    static.copy_(fresh)

        return outputs, replay


@contextmanager
def peft_layers() -> Iterator[None]:
    """Within: LoRA jobs run PEFT's own layers beside the base weights (the eager, unfused UNet) instead of the
    worker's merge, which gives the libraries' own image to compare the merge's with."""
    import pytest

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sdxl_worker.loras.runtime.mergeable_layers", lambda unet: None)
        yield


def assert_images_match(first: Any, second: Any) -> None:
    """The same image from the same weights held at other memory addresses: at most 1 level of 255 apart.

    On CPUs with AVX-512 (this project's machine since 2026-12-03, an AMD EPYC) the kernels round the last bit by
    the weights' alignment in memory, which differs by loader and by the tensors' offsets in their files.
    """
    import numpy as np

    def pixels(image: Any) -> Any:
        return np.asarray(decode(image).convert("RGB") if isinstance(image, str) else image).astype(int)

    assert np.abs(pixels(first) - pixels(second)).max() <= 1
