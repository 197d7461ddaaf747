"""Speed options: parsed from the environment, applied without changing the picture beyond tolerance."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sdxl_worker.speed import SpeedOptions, apply_speedups, use_compile_cache


def test_defaults_are_the_measured_ones() -> None:
    options = SpeedOptions.from_env({})
    assert options == SpeedOptions(fuse_qkv=True, channels_last=True, vae_dtype="auto", cudnn_benchmark=False,
                                   compile=False, compile_mode="default", compile_cache_dir=None)


def test_env_overrides() -> None:
    options = SpeedOptions.from_env({"FUSE_QKV": "0", "CHANNELS_LAST": "false", "VAE_DTYPE": "FP32",
                                     "COMPILE": "yes", "COMPILE_MODE": "reduce-overhead",
                                     "COMPILE_CACHE_DIR": "/runpod-volume/.cache/torch-compile"})
    assert (options.fuse_qkv, options.channels_last, options.vae_dtype, options.compile) == (False, False, "fp32",
                                                                                             True)
    assert options.compile_mode == "reduce-overhead"
    assert options.compile_cache_dir == "/runpod-volume/.cache/torch-compile"


@pytest.mark.parametrize(
    ("env", "words"),
    [({"COMPILE": "maybe"}, "COMPILE must be 1 or 0"), ({"VAE_DTYPE": "fp8"}, "VAE_DTYPE must be one of"),
     ({"COMPILE_MODE": "fast"}, "COMPILE_MODE must be one of")],
)
def test_bad_settings_are_refused(env: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        SpeedOptions.from_env(env)


def test_compile_cache_points_inductor_and_triton_at_the_folder(tmp_path: Path, monkeypatch) -> None:
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    use_compile_cache(str(tmp_path / "cache"))
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "triton")
    assert (tmp_path / "cache" / "inductor").is_dir()


def test_cuda_set_keeps_the_picture(tiny_volume_source: Path) -> None:
    """The CUDA-only options (bf16 VAE with its input cast, channels_last) run on CPU tensors too."""
    import torch

    from model_loader import load_pipeline

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")

    def draw() -> np.ndarray:
        image = pipe("a lighthouse", width=256, height=256, num_inference_steps=3,
                     generator=torch.Generator("cpu").manual_seed(5)).images[0]
        return np.asarray(image).astype(np.float64)

    plain = draw()
    applied = apply_speedups(pipe, SpeedOptions(), "cuda")
    assert applied == {"fuse_qkv": True, "channels_last": True, "vae_dtype": "bf16"}
    assert pipe.vae.dtype == torch.bfloat16
    fast = draw()
    psnr = 10 * np.log10(255**2 / np.mean((plain - fast) ** 2))
    assert psnr > 35, psnr
