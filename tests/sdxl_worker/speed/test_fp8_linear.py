"""QUANTIZE=fp8: which layers convert, where it is skipped, and what it draws.

torchao refuses fp8 below compute capability 8.9, so the tests that run the fp8 layers lift that check and run
them on the CPU for real. torch 2.11's CPU fp8 product (the image's torch) takes one scale a tensor only, not the
row-wise scales the worker uses on a GPU, so on the CPU they run with per-tensor scales: the same layers, casts,
zero-row floor and compiled graphs, with a coarser scale. The row-wise product itself runs on a GPU only
(scripts/gpu_check.sh: the `ours fp8` scenario).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdxl_worker.speed.fp8_linear import cast_for_fp8, fp8_unsupported_reason, is_fp8_layer
from sdxl_worker.speed.options import SpeedOptions, apply_speedups, compile_models
from tests.helpers import draw_latents, weight_bytes


def _relative_difference(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture
def fp8_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lift the hardware gates, ours and torchao's, so the fp8 layers run on this CPU, with per-tensor scales
    (the only ones torch's CPU fp8 product takes)."""
    import torchao.quantization
    import torchao.quantization.quant_api as quant_api

    monkeypatch.setattr("sdxl_worker.speed.options.fp8_unsupported_reason", lambda device: None)
    monkeypatch.setattr(quant_api, "_check_hardware_support", lambda granularity: None)
    monkeypatch.setattr(torchao.quantization, "PerRow", torchao.quantization.PerTensor)


def test_the_cpus_fp8_product_takes_per_tensor_scales_only() -> None:
    """Why the CPU tests run per-tensor scales: if this fails, torch's CPU product took row-wise scales and the
    fixture above can go, testing the GPU's scheme on the CPU again."""
    import torch

    a = torch.ones(16, 32).to(torch.float8_e4m3fn)
    b = torch.ones(16, 32).to(torch.float8_e4m3fn).t()
    one = torch.ones((), dtype=torch.float32)
    per_tensor = torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    assert per_tensor.float().eq(32).all()
    with pytest.raises(RuntimeError, match="per-tensor scaling for CPU"):
        torch._scaled_mm(a, b, scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)


def test_gpus_without_fp8_are_named_in_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    assert "the device is cpu" in fp8_unsupported_reason("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert "NVIDIA A100-SXM4-80GB is 8.0" in fp8_unsupported_reason("cuda")
    for capability in ((8, 9), (9, 0), (10, 0)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert fp8_unsupported_reason("cuda") is None


def test_skipped_with_its_reason_where_fp8_cannot_run(tiny_volume_source: Path) -> None:
    """An endpoint allowed several GPU types keeps serving on those without fp8, at 16 bits."""
    import torch

    from sdxl_worker.loading.loader import load_pipeline

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    applied = apply_speedups(pipe, SpeedOptions(fuse_qkv=False, quantize="fp8"), "cpu")
    (setting, reason), = applied.skipped
    assert applied.fp8_layers == 0 and setting == "QUANTIZE" and "compute capability 8.9" in reason
    assert pipe.unet.dtype == torch.float32
    assert all(type(p) is torch.nn.Parameter for p in pipe.unet.parameters())


def test_only_transformer_linears_owning_their_weights_convert(tiny_volume_source: Path) -> None:
    """The fused q/k/v layer converts; the separate q/k/v views of it (never called) and the embeddings don't."""
    from sdxl_worker.loading.loader import load_pipeline

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    apply_speedups(pipe, SpeedOptions(), "cpu")
    chosen = {fqn for fqn, module in pipe.unet.named_modules() if is_fp8_layer(module, fqn)}
    block = "down_blocks.1.attentions.0.transformer_blocks.0"
    assert {f"{block}.attn1.to_qkv", f"{block}.attn2.to_q", f"{block}.attn2.to_kv", f"{block}.ff.net.2"} <= chosen
    assert not {f"{block}.attn1.to_q", f"{block}.attn1.to_k", f"{block}.attn2.to_v"} & chosen
    assert not any("time_emb" in fqn or "add_embedding" in fqn for fqn in chosen)


def test_fp8_unet_draws_near_the_16_bit_one(tiny_volume_source: Path, fp8_anywhere: None) -> None:
    import torch

    from sdxl_worker.loading.loader import load_pipeline

    # The 16-bit job fp8 replaces: bfloat16 (a float32 draw is no reference: torch 2.11 draws a seed's noise in
    # bfloat16 as other numbers than in float32, and the pipeline draws it in the text encoder's dtype).
    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    cast_for_fp8(pipe)
    apply_speedups(pipe, SpeedOptions(), "cpu")
    plain = draw_latents(pipe, steps=3)

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    before = weight_bytes(pipe.unet)
    applied = apply_speedups(pipe, SpeedOptions(quantize="fp8"), "cpu")
    assert applied.fp8_layers > 0 and applied.labels()[-1].startswith("quantize=fp8")
    assert pipe.unet.dtype == pipe.text_encoder_2.dtype == torch.bfloat16
    attn = pipe.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1
    assert type(attn.to_qkv.weight).__name__ == "Float8Tensor"
    assert type(attn.to_q.weight) is torch.nn.Parameter  # the unused view stays a view: no second copy

    fp8 = draw_latents(pipe, steps=3)
    assert torch.isfinite(fp8).all()  # no negative prompt: all-zero rows, which an fp8 scale must survive
    # Measured 0.036 here (per-tensor scales, torch 2.11); random weights, 3 steps.
    assert _relative_difference(fp8, plain) < 0.1
    assert weight_bytes(pipe.unet) < before / 2  # float32 here -> bfloat16, and a byte a weight in fp8 layers
    # A whole job: the VAE (float32 here, float16 with VAE_DTYPE=fp32 on a GPU) decodes the bfloat16 latents.
    image = np.asarray(pipe("a lighthouse", width=256, height=256, num_inference_steps=1).images[0])
    assert image.shape == (256, 256, 3) and image.std() > 0


def test_fp8_blocks_compile_as_whole_graphs(tiny_volume_source: Path, fp8_anywhere: None, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """COMPILE=1 (fullgraph: a graph break would fail) traces torchao's fp8 weights, through inductor for real."""
    import torch

    from sdxl_worker.loading.loader import load_pipeline

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name))
    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    apply_speedups(pipe, SpeedOptions(quantize="fp8"), "cpu")
    eager = draw_latents(pipe, steps=3)
    try:
        compile_models(pipe, "default", "blocks")
        compiled = draw_latents(pipe, steps=3)
    finally:
        torch._dynamo.reset()
    assert torch.isfinite(compiled).all()
    assert _relative_difference(compiled, eager) < 0.1
