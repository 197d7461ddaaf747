"""Dynamo's first call on the UNet and the VAE decoder per compile scope, on the meta device.

The part of a start with a filled compile cache that no cache skips is Dynamo tracing the Python code: CPU
work, the same whatever the GPU, so it is measured here without weights or a GPU (eager backend: tracing,
guards and fake-tensor propagation, no inductor).
"""

from __future__ import annotations

import time
from typing import Any, get_args

from benchmarks.results import TracingResult
from benchmarks.stages.flops import meta_model
from sdxl_worker.speed.options import CompileScope


def dynamo_tracing(scope: str, unet_config: dict[str, Any], vae_config: dict[str, Any], size: int) -> dict:
    from types import SimpleNamespace

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from dev.unet_inputs import unet_call_inputs
    from sdxl_worker.speed.options import compile_models

    torch._dynamo.reset()
    unet = meta_model(UNet2DConditionModel, unet_config, torch.float16)
    vae = meta_model(AutoencoderKL, vae_config, torch.bfloat16)
    graphs: list[int] = []

    def counting_backend(graph: Any, example_inputs: list[Any]) -> Any:
        graphs.append(len(graph.graph.nodes))
        return graph.forward

    pipe = SimpleNamespace(unet=unet, vae=vae)
    compile_models(pipe, "default", scope, backend=counting_backend)
    # Inputs made on the meta device, the calls made outside `torch.device(...)`: that context is a torch
    # function mode, which Dynamo would trace through at every call (2x slower here), unlike a worker's start.
    args, kwargs = unet_call_inputs(unet_config, size, dtype=torch.float16, device="meta")
    latents = torch.randn(1, vae_config["latent_channels"], size // 8, size // 8, dtype=torch.bfloat16, device="meta")
    with torch.no_grad():
        started = time.perf_counter()
        pipe.unet(*args, **kwargs)
        unet_s = time.perf_counter() - started
        unet_graphs = len(graphs)
        started = time.perf_counter()
        pipe.vae.decoder(latents)
        vae_s = time.perf_counter() - started
    torch._dynamo.reset()
    return {"unet_s": round(unet_s, 2), "unet_graphs": unet_graphs, "vae_decoder_s": round(vae_s, 2),
            "traced_nodes": sum(graphs)}


def measure_tracing(unet_config: dict[str, Any], vae_config: dict[str, Any], size: int) -> TracingResult:
    import torch

    # Dynamo's one-time set-up goes to a throwaway module, not to whichever scope is measured first.
    torch.compile(torch.nn.Linear(4, 4), backend="eager")(torch.randn(2, 4))
    return TracingResult({scope: dynamo_tracing(scope, unet_config, vae_config, size)
                          for scope in get_args(CompileScope)})
