"""The UNet gets its timestep as float32 whatever the sampler: same output, and one graph for all samplers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dev.unet_inputs import unet_call_inputs
from sdxl_worker.speed.options import compile_models, freeze_compiled_shapes
from sdxl_worker.speed.unet_timestep import timestep_as_float32


@pytest.fixture
def unet_call(tiny_volume_source: Path):
    from sdxl_worker.loading.loader import load_pipeline

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    unet = pipe.unet
    with torch.inference_mode():
        (sample, _, text), kwargs = unet_call_inputs(unet.config, 256, generator=torch.Generator().manual_seed(0))

    def call(model, value: float, dtype: torch.dtype) -> torch.Tensor:
        # The timestep made inside inference_mode, as a sampler's are inside the worker's jobs.
        with torch.inference_mode():
            timestep = torch.tensor(value, dtype=dtype)
            return model(sample, timestep, text, **kwargs, return_dict=False)[0]

    return unet, call


@pytest.mark.parametrize(("value", "dtype"), [(981, torch.int64), (980.6283, torch.float64)])
def test_the_cast_changes_nothing_the_unet_draws(unet_call, value: float, dtype: torch.dtype) -> None:
    unet, call = unet_call
    plain = call(unet, value, dtype)
    timestep_as_float32(unet)
    torch.testing.assert_close(call(unet, value, dtype), plain, rtol=0, atol=0)


def test_a_compiled_unet_serves_every_sampler_with_one_graph(unet_call) -> None:
    unet, call = unet_call
    graphs, runs = [], []

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list):
        graphs.append(graph)

        def run(*args):
            runs.append(1)
            return graph.forward(*args)

        return run

    pipe = SimpleNamespace(unet=unet, vae=SimpleNamespace(decoder=torch.nn.Identity()))
    try:
        compile_models(pipe, "default", "full", backend=counting_backend)
        call(pipe.unet, 999.0, torch.float32)  # the warm-up, with Euler's float32 timestep
        freeze_compiled_shapes()
        call(pipe.unet, 981, torch.int64)  # DDIM, DPM++, UniPC
        call(pipe.unet, 980.6283, torch.float64)  # DPM++ SDE
    finally:
        torch.compiler.set_stance("default")
        torch._dynamo.reset()
    assert (len(graphs), len(runs)) == (1, 3)  # no recompile, and no uncompiled fallback
