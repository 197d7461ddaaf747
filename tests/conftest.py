"""Shared fixtures: tiny synthetic volumes (built once per session, copied per test) and a network guard."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from sdxl_worker.synthetic_volume import build_volume


@pytest.fixture(scope="session")
def tiny_volume_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both variants plus the flax/onnx/single-file decoys a real volume carries; never modified."""
    return build_volume(tmp_path_factory.mktemp("source") / "photonicfusion-sdxl", "tiny", extras=True)


@pytest.fixture(scope="session")
def sharded_volume_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Standard weights only, every model over 1 MB split into shards with an index."""
    return build_volume(tmp_path_factory.mktemp("sharded") / "photonicfusion-sdxl", "tiny", ["standard"],
                        shard_bytes=1_000_000)


@pytest.fixture
def volume(tiny_volume_source: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny volume at <tmp>/runpod-volume/photonicfusion-sdxl, free to damage."""
    target = tmp_path / "runpod-volume" / "photonicfusion-sdxl"
    shutil.copytree(tiny_volume_source, target)
    return target


@pytest.fixture
def sharded_volume(sharded_volume_source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "runpod-volume" / "photonicfusion-sdxl"
    shutil.copytree(sharded_volume_source, target)
    return target


MODELS = ("text_encoder", "text_encoder_2", "unet", "vae")


def drop_variant(volume: Path, variant: str, components: tuple[str, ...] = MODELS) -> None:
    """Delete one weight set from some components, as an operator's partial upload would leave it."""
    for component in components:
        for path in (volume / component).glob("*.safetensors"):
            is_fp16 = ".fp16." in path.name
            if is_fp16 == (variant == "fp16"):
                path.unlink()


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every outbound connection or name lookup fail loudly, and record the attempts."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[:2]))
        raise AssertionError(f"network access attempted: {args[:2]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture(scope="session")
def worker(tiny_volume_source: Path):
    """One worker loaded on the CPU for the session, as the handler starts it (warm-up included)."""
    from handler_volume_optimized import Worker

    started = Worker.start(str(tiny_volume_source), "cpu", warmup=True)
    assert started.pipe is not None, started.startup_error
    return started


def decode(b64: str):
    """A reply's base64 image as a Pillow image (and proof that it is one)."""
    import base64
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def draw_latents(pipe, size: int = 256, steps: int = 2, seed: int = 5):
    """A job's latents, as float32, from a fixed seed. No negative prompt, as in most jobs: SDXL then makes its
    negative text embedding all zeros."""
    import torch

    return pipe("a lighthouse", width=size, height=size, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator("cpu").manual_seed(seed)).images.float()


def weight_bytes(model) -> int:
    """Bytes of distinct storage behind a model's parameters: what it holds in memory (for a tensor subclass
    such as an fp8 weight, the storage of its data and scales)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    storages = {}
    for param in model.parameters():
        inner = [getattr(param, name) for name in param.__tensor_flatten__()[0]] \
            if is_traceable_wrapper_subclass(param) else [param]
        storages.update({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in inner})
    return sum(storages.values())
