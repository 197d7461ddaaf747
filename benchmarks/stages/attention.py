"""Each SDPA kernel on the UNet's attention shapes at this size: is PyTorch's own pick the fastest?"""

from __future__ import annotations

from typing import Any

from benchmarks.results import AttentionResult, KernelTiming
from benchmarks.stages.common import timed


def measure_attention(device: str, size: int) -> AttentionResult:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    latent = size // 8
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    # (name, heads, query tokens, key tokens): batch 2 (CFG), head width 64, as in SDXL's UNet.
    shapes = [("self 640ch", 10, (latent // 2) ** 2, (latent // 2) ** 2),
              ("self 1280ch", 20, (latent // 4) ** 2, (latent // 4) ** 2),
              ("cross 640ch", 10, (latent // 2) ** 2, 77)]
    kernels = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION}
    repeats = 20 if device.startswith("cuda") else 1
    rows: dict[str, dict[str, KernelTiming | None]] = {}
    for name, heads, tokens, keys in shapes:
        q = torch.randn(2, heads, tokens, 64, device=device, dtype=dtype)
        k, v = (torch.randn(2, heads, keys, 64, device=device, dtype=dtype) for _ in range(2))
        flops = 4 * 2 * heads * tokens * keys * 64
        rows[name] = {}
        for kernel, backend in kernels.items():
            # The default: every kernel allowed, in PyTorch's own order.
            backends = [backend] if backend is not None else [b for b in kernels.values() if b is not None]

            def run(backends: list[Any] = backends, qkv: tuple[Any, ...] = (q, k, v)) -> None:
                with sdpa_kernel(backends):
                    for _ in range(repeats):
                        torch.nn.functional.scaled_dot_product_attention(*qkv)

            try:
                run()  # warm-up, and the check that this kernel takes these inputs
            except RuntimeError:  # "No available kernel": this backend cannot run this shape here
                rows[name][kernel] = None
                continue
            seconds, _ = timed(run, device)
            ms = seconds / repeats * 1000
            rows[name][kernel] = KernelTiming(round(ms, 3), round(flops / (ms / 1000) / 1e12, 1))
    return AttentionResult(rows)
