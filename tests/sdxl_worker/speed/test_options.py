"""Speed options applied without changing the picture beyond tolerance, in the order that keeps each one."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from dev.synthetic_volume import component_config
from dev.unet_inputs import unet_call_inputs
from sdxl_worker.settings import Settings
from sdxl_worker.speed.options import (
    SpeedOptions,
    SpeedReport,
    apply_speedups,
    compile_models,
    freeze_compiled_shapes,
    share_fused_weights,
    use_compile_cache,
)
from tests.helpers import draw_latents, weight_bytes


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

    from sdxl_worker.loading.loader import load_pipeline

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")

    def draw() -> np.ndarray:
        image = pipe("a lighthouse", width=256, height=256, num_inference_steps=3,
                     generator=torch.Generator("cpu").manual_seed(5)).images[0]
        return np.asarray(image).astype(np.float64)

    plain = draw()
    applied = apply_speedups(pipe, SpeedOptions(), "cuda")
    # CUDA graphs too, by default; this pipeline's CPU tensors then run its UNet eagerly.
    assert applied == SpeedReport(fuse_qkv=True, channels_last=True, vae_bf16=True, cuda_graphs=True)
    assert pipe.vae.dtype == torch.bfloat16
    fast = draw()
    psnr = 10 * np.log10(255**2 / np.mean((plain - fast) ** 2))
    assert psnr > 35, psnr


def test_fused_projections_hold_no_second_copy(tiny_volume_source: Path) -> None:
    """Fusing q/k/v must not leave the unfused weights resident beside the fused ones (VRAM)."""
    import torch

    from sdxl_worker.loading.loader import load_pipeline

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    before = weight_bytes(pipe.unet) + weight_bytes(pipe.vae)
    args, kwargs = unet_call_inputs(pipe.unet.config, 256, batch=1, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        plain = pipe.unet(*args, **kwargs).sample

    applied = apply_speedups(pipe, SpeedOptions(), "cpu")

    assert applied.fuse_qkv is True
    assert weight_bytes(pipe.unet) + weight_bytes(pipe.vae) == before
    attn = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert attn.to_k.weight.untyped_storage().data_ptr() == attn.to_qkv.weight.untyped_storage().data_ptr()
    with torch.inference_mode():
        fused = pipe.unet(*args, **kwargs).sample
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


def test_fusing_sdxl_unet_releases_its_duplicate_gigabyte() -> None:
    """At SDXL's real size (built on the meta device from the published config, no weights)."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(component_config("full", "unet"))
    unet.to(torch.float16).fuse_qkv_projections()
    assert share_fused_weights(unet) / 2**30 == pytest.approx(1.207, abs=0.001)


def test_cudnn_autotuner_is_set_both_ways(tiny_volume_source: Path) -> None:
    """A process-wide flag: a pipeline started with it off must not inherit it from an earlier one."""
    import torch

    from sdxl_worker.loading.loader import load_pipeline

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    try:
        assert apply_speedups(pipe, SpeedOptions(cudnn_benchmark=True, fuse_qkv=False), "cuda").cudnn_benchmark
        assert torch.backends.cudnn.benchmark is True
        assert not apply_speedups(pipe, SpeedOptions(fuse_qkv=False), "cuda").cudnn_benchmark
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = False


def test_after_warm_up_a_new_shape_runs_uncompiled_instead_of_compiling() -> None:
    """With COMPILE=1, a job of a new size must not stall on a compile; the warm-up's size stays compiled."""
    import torch

    compiles: list[str] = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        compiles.append(str(example_inputs[0].shape))
        return graph.forward

    model = torch.compile(torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.SiLU()),
                          backend=counting_backend)
    try:
        model(torch.randn(2, 4, 16, 16))
        freeze_compiled_shapes()
        model(torch.randn(2, 4, 16, 16))
        other = torch.randn(4, 4, 24, 16)
        assert model(other).shape == (4, 4, 24, 16)
        assert len(compiles) == 1
    finally:
        torch.compiler.set_stance("default")
        torch._dynamo.reset()


def test_block_scope_traces_sdxl_unet_as_two_static_graphs() -> None:
    """COMPILE_SCOPE=blocks at SDXL's real size (meta device): only the transformer blocks are traced, as one
    static graph per block width, so a cached start re-traces two small graphs instead of the whole UNet."""
    from types import SimpleNamespace

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(component_config("full", "unet"))
        vae = AutoencoderKL.from_config(component_config("full", "vae"))
    graphs: list[tuple[str, list]] = []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append((graph.code, example_inputs))
        return graph.forward

    pipe = SimpleNamespace(unet=unet, vae=vae)
    try:
        compile_models(pipe, "default", "blocks", backend=counting_backend)
        assert pipe.unet is unet
        args, kwargs = unet_call_inputs(unet.config, 1024, device="meta")
        with torch.no_grad():
            unet(*args, **kwargs)
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 2
    widths = sorted(inputs[0].shape[-1] for _, inputs in graphs)
    assert widths == [640, 1280]
    assert all(isinstance(dim, int) for _, inputs in graphs for x in inputs if isinstance(x, torch.Tensor)
               for dim in x.shape)


def test_block_scope_compiles_and_keeps_the_latents(tiny_volume_source: Path, tmp_path: Path, monkeypatch) -> None:
    """COMPILE=1 COMPILE_SCOPE=blocks through inductor for real (CPU): same latents as uncompiled."""
    import torch

    from sdxl_worker.loading.loader import load_pipeline

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name))
    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    apply_speedups(pipe, SpeedOptions(), "cpu")

    plain = draw_latents(pipe)
    options = SpeedOptions(fuse_qkv=False, compile=True, compile_scope="blocks",  # fused above already
                           compile_cache_dir=str(tmp_path / "cache"))
    try:
        applied = apply_speedups(pipe, options, "cpu")
        compiled = draw_latents(pipe)
    finally:
        torch._dynamo.reset()
    assert (applied.compile_mode, applied.compile_scope) == ("default", "blocks")
    assert any((tmp_path / "cache" / "inductor").iterdir()), "the compiled kernels must land in COMPILE_CACHE_DIR"
    torch.testing.assert_close(compiled, plain, rtol=1e-3, atol=1e-3)


def test_compile_says_where_its_cache_goes(tiny_volume_source: Path, monkeypatch, caplog) -> None:
    """Without COMPILE_CACHE_DIR the worker warns of minutes-long cold starts, unless inductor's own cache
    variable already points somewhere (the image sets it to the volume)."""
    import logging

    from sdxl_worker.loading.loader import load_pipeline

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    options = Settings.from_env({"TORCHINDUCTOR_CACHE_DIR": "/runpod-volume/.cache/torch-compile/inductor",
                                 "COMPILE": "1", "FUSE_QKV": "0"}).speed
    with caplog.at_level(logging.INFO, logger="sdxl_worker.speed.options"):
        applied = apply_speedups(pipe, options, "cpu")
    assert applied.compile_cache_dir == "/runpod-volume/.cache/torch-compile/inductor"
    assert "compiles from scratch" not in caplog.text

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sdxl_worker.speed.options"):
        applied = apply_speedups(pipe, SpeedOptions(fuse_qkv=False, compile=True), "cpu")
    assert applied.compile_cache_dir is None
    assert "every cold start compiles from scratch" in caplog.text


def test_cuda_graphs_route_the_unet_through_graphs_on_cuda_only(tiny_volume_source: Path) -> None:
    from sdxl_worker.loading.loader import load_pipeline
    from sdxl_worker.speed.cuda_graphs import GraphedForward

    assert Settings.from_env({"CUDA_GRAPHS": "1"}).speed.cuda_graphs
    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    assert not apply_speedups(pipe, SpeedOptions(fuse_qkv=False, cuda_graphs=True), "cpu").cuda_graphs
    assert not isinstance(pipe.unet.forward, GraphedForward)
    assert apply_speedups(pipe, SpeedOptions(fuse_qkv=False, channels_last=False, vae_dtype="fp32",
                                             cuda_graphs=True), "cuda") == SpeedReport(cuda_graphs=True)
    assert isinstance(pipe.unet.forward, GraphedForward) and pipe.unet.forward.max_graphs == 12
    assert not SpeedReport(cuda_graphs=True).shapes_frozen_after_warm_up  # new shapes capture their own graphs
    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    apply_speedups(pipe, SpeedOptions(fuse_qkv=False, channels_last=False, vae_dtype="fp32", cuda_graph_max=2),
                   "cuda")
    assert pipe.unet.forward.max_graphs == 2
