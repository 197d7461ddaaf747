"""GraphedForward: one captured call replayed, every other call eager, never an aliased output.

CUDA graphs need a GPU; here `capture` is replaced by one that re-runs the recorded call into the same
output tensors, which is what a replay does (tests/helpers.py), so the bookkeeping around it is what these tests
check.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree

from dev.synthetic_volume import component_config
from dev.unet_inputs import unet_call_inputs
from sdxl_worker.speed.cuda_graphs import GraphCounts, GraphedForward, cuda_graph_capture, graph_unet
from tests.helpers import RecordingCapture, draw_latents


def test_each_shape_is_captured_once_then_replayed_drawing_what_eager_draws(tiny_volume_source: Path) -> None:
    from sdxl_worker.loading.loader import load_pipeline

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    plain_256, plain_320 = draw_latents(pipe, 256), draw_latents(pipe, 320)
    capture = RecordingCapture()
    graphed = graph_unet(pipe.unet, "cpu", capture)

    torch.testing.assert_close(draw_latents(pipe, 256), plain_256, rtol=0, atol=0)
    assert (capture.captures, graphed.replays, graphed.eager_calls) == (1, 2, 0)  # 2 steps, CFG in one batch
    torch.testing.assert_close(draw_latents(pipe, 256), plain_256, rtol=0, atol=0)
    assert graphed.replays == 4

    torch.testing.assert_close(draw_latents(pipe, 320), plain_320, rtol=0, atol=0)
    assert (capture.captures, graphed.replays, graphed.eager_calls) == (2, 6, 0)  # another size: its own graph
    torch.testing.assert_close(draw_latents(pipe, 256), plain_256, rtol=0, atol=0)
    torch.testing.assert_close(draw_latents(pipe, 320), plain_320, rtol=0, atol=0)
    assert (capture.captures, graphed.replays, len(graphed.graphs)) == (2, 10, 2)
    assert len({id(pool) for pool in capture.pools}) == 1 and capture.pools[0] is graphed.pool  # one shared pool


def test_samplers_with_other_timestep_dtypes_replay_the_same_graph(tiny_volume_source: Path) -> None:
    """Captured with Euler's float32 timesteps; DDIM and DPM++ (int64), DPM++ SDE (float64) draw as eager."""
    from sdxl_worker.contract.schedulers import build_schedulers
    from sdxl_worker.loading.loader import load_pipeline

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    schedulers = build_schedulers(pipe.scheduler)
    schedulers["dpmpp_sde_karras"].noise_sampler_seed = [3]  # its Brownian noise, as generate() seeds it
    plain = {}
    for name in ("ddim", "dpmpp_2m", "dpmpp_sde_karras"):
        pipe.scheduler = schedulers[name]
        plain[name] = draw_latents(pipe, 256)
    pipe.scheduler = schedulers["euler"]
    capture = RecordingCapture()
    graphed = graph_unet(pipe.unet, "cpu", capture)
    draw_latents(pipe, 256)
    for name, expected in plain.items():
        pipe.scheduler = schedulers[name]
        torch.testing.assert_close(draw_latents(pipe, 256), expected, rtol=0, atol=0)
    assert capture.captures == 1 and graphed.eager_calls == 0


def test_a_guidance_free_lcm_job_is_its_own_shape_captured_once_then_replayed(tiny_volume_source: Path) -> None:
    """A 4-step distilled recipe (LCM's sampler, guidance 0) calls the UNet at batch 1, not CFG's 2: its own graph."""
    from sdxl_worker.contract.schedulers import build_schedulers
    from sdxl_worker.loading.loader import load_pipeline

    pipe, _ = load_pipeline(tiny_volume_source, "cpu")
    schedulers = build_schedulers(pipe.scheduler)

    def fast() -> torch.Tensor:
        pipe.scheduler = schedulers["lcm"]
        return pipe("a lighthouse", width=256, height=256, num_inference_steps=4, guidance_scale=0.0,
                    output_type="latent", generator=torch.Generator("cpu").manual_seed(5)).images.float()

    plain = fast()
    capture = RecordingCapture()
    graphed = graph_unet(pipe.unet, "cpu", capture)
    pipe.scheduler = schedulers["euler"]
    draw_latents(pipe, 256)  # a guided job: CFG's batch of 2
    assert (capture.captures, graphed.replays) == (1, 2)
    torch.testing.assert_close(fast(), plain, rtol=0, atol=0)
    assert (capture.captures, graphed.replays, graphed.eager_calls) == (2, 6, 0)  # batch 1: captured, 4 replays
    torch.testing.assert_close(fast(), plain, rtol=0, atol=0)
    assert (capture.captures, graphed.replays) == (2, 10)


def test_each_replay_reads_its_own_inputs_and_returns_its_own_outputs() -> None:
    layer = torch.nn.Linear(4, 3)
    graphed = GraphedForward(layer.forward, "cpu", RecordingCapture())
    first_in, second_in = torch.randn(2, 4), torch.randn(2, 4)
    with torch.no_grad():
        first = graphed(first_in)
        kept = first.clone()
        second = graphed(second_in)
        torch.testing.assert_close(second, layer(second_in))
    torch.testing.assert_close(first, kept)  # the second replay did not write into the first call's result
    assert first.data_ptr() != second.data_ptr()


def test_captured_in_a_job_replays_for_any_caller() -> None:
    """Jobs run under inference_mode, the benchmark's checks under no_grad: the same graph serves both."""
    layer = torch.nn.Linear(4, 3)
    graphed = GraphedForward(layer.forward, "cpu", RecordingCapture())
    x = torch.randn(2, 4)
    with torch.inference_mode():
        graphed(x)
    with torch.no_grad():
        torch.testing.assert_close(graphed(x), layer(x))
    with torch.inference_mode():
        torch.testing.assert_close(graphed(x), layer(x))
    assert graphed.replays == 3


def test_inputs_of_another_memory_layout_replay_the_same_graph() -> None:
    """Image to image's latents come channels-last from the VAE's encoder: copied into the graph's buffers, they
    replay text to image's graph of the same shape (measured: they would otherwise capture one more)."""
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    graphed = GraphedForward(conv.forward, "cpu", RecordingCapture())
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        graphed(x)
        channels_last = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last)
        torch.testing.assert_close(graphed(channels_last), conv(channels_last))
    assert len(graphed.graphs) == 1 and graphed.replays == 2


def test_one_shape_in_two_dtypes_is_a_graph_each() -> None:
    """A shape's float32 and bfloat16 calls (QUANTIZE=fp8 runs the UNet in bfloat16) capture a graph each, and
    each call replays its own dtype's: copied into the other's buffers it would come back in the wrong dtype."""
    layer = torch.nn.Linear(4, 3)
    graphed = GraphedForward(lambda x: layer(x.float()).to(x.dtype), "cpu", RecordingCapture())
    x = torch.randn(2, 4)
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16, torch.float32, torch.bfloat16):
            out = graphed(x.to(dtype))
            assert out.dtype == dtype
            torch.testing.assert_close(out, layer(x.to(dtype).float()).to(dtype))
    assert len(graphed.graphs) == 2 and graphed.replays == 4


@pytest.mark.parametrize("call", [
    lambda f: f(torch.randn(2, 4), scale=0.5),  # a number would be baked into the graph
    lambda f: f(torch.randn(2, 4).to("meta")),  # not on the graph's device
])
def test_calls_a_graph_cannot_hold_run_eagerly(call) -> None:
    seen: list[tuple] = []

    def forward(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x * scale

    capture = RecordingCapture()
    graphed = GraphedForward(forward, "cpu", capture)
    with torch.no_grad():  # with gradients on, every call is eager anyway
        call(graphed)
    assert capture.captures == 0 and graphed.eager_calls == 1 and seen == [(2, 4)]


def test_a_call_with_gradients_runs_eagerly() -> None:
    layer = torch.nn.Linear(4, 3)
    capture = RecordingCapture()
    graphed = GraphedForward(layer.forward, "cpu", capture)
    graphed(torch.randn(2, 4)).sum().backward()
    assert capture.captures == 0 and layer.weight.grad is not None


def test_the_least_recently_used_graph_is_dropped_past_the_bound() -> None:
    layer = torch.nn.Linear(4, 3)
    capture = RecordingCapture()
    graphed = GraphedForward(layer.forward, "cpu", capture, max_graphs=2)
    with torch.no_grad():
        for batch in (1, 2, 1, 3):  # 2 is the least recently used when 3 comes
            x = torch.randn(batch, 4)
            torch.testing.assert_close(graphed(x), layer(x))
        assert [key[1][0][0] for key in graphed.graphs] == [1, 3]
        graphed(torch.randn(2, 4))  # captured again
    assert (capture.captures, graphed.replays, graphed.eager_calls) == (4, 5, 0)
    assert [key[1][0][0] for key in graphed.graphs] == [3, 2]


def test_no_graphs_kept_means_every_call_eager() -> None:
    capture = RecordingCapture()
    graphed = GraphedForward(torch.nn.Linear(4, 3).forward, "cpu", capture, max_graphs=0)
    with torch.no_grad():
        graphed(torch.randn(2, 4))
    assert capture.captures == 0 and graphed.eager_calls == 1


def test_a_jobs_graph_status_says_how_its_unet_calls_ran() -> None:
    graphed = GraphedForward(lambda x: x * 2, "cpu", RecordingCapture())

    def job(*inputs: torch.Tensor) -> str:
        before = dataclasses.replace(graphed.counts)
        with torch.no_grad():
            for x in inputs:
                graphed(x)
        return graphed.counts.since(before)

    x, y = torch.randn(2, 4), torch.randn(5, 4)
    assert job(x, x) == "captured"
    assert job(x, x) == "replayed"
    assert job(x, torch.randn(2, 4).to("meta")) == "eager"  # one call no graph can hold
    assert job(y) == "captured"
    assert job() == "eager" and GraphCounts().since(GraphCounts()) == "eager"


def test_the_capture_is_given_the_device_of_the_inputs() -> None:
    capture = RecordingCapture()
    graphed = GraphedForward(torch.nn.Linear(4, 3).forward, "cpu", capture)
    with torch.no_grad():
        graphed(torch.randn(2, 4, device="cpu"))
    assert capture.devices == [torch.device("cpu")]


def test_the_capture_runs_on_the_models_card_not_the_current_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """DEVICE=cuda:1: the side stream, the stream waits and the graph all belong to cuda:1, while
    torch's current device (0 by default) would put them on the wrong card."""
    events: list[tuple[str, object]] = []
    current = ["cuda:0"]

    class Device:
        def __init__(self, device: object) -> None:
            self.device, self.before = str(device), None

        def __enter__(self) -> None:
            self.before, current[0] = current[0], self.device

        def __exit__(self, *exc: object) -> None:
            current[0] = self.before

    class Stream:
        def __init__(self, device: object = None) -> None:
            events.append(("stream", str(device)))

        def wait_stream(self, other: object) -> None:
            pass

    class Graph:
        def __init__(self) -> None:
            events.append(("graph", current[0]))

        def replay(self) -> None:
            pass

    class Recording:
        def __init__(self, *args: object, pool: object = None) -> None:
            if pool is not None:
                events.append(("pool", current[0] if pool == "the pool" else "another pool"))

        def __enter__(self) -> None:
            events.append(("capture", current[0]))

        def __exit__(self, *exc: object) -> None:
            pass

    monkeypatch.setattr(torch.cuda, "device", Device)
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: events.append(("current", str(device)))
                        or Stream(device))
    monkeypatch.setattr(torch.cuda, "stream", Recording)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", Recording)
    outputs, replay = cuda_graph_capture(lambda: "out", 2, torch.device("cuda:1"), "the pool")
    assert ("pool", "cuda:1") in events
    assert outputs == "out" and isinstance(replay.__self__, Graph)
    assert {where for _, where in events} == {"cuda:1"}, events
    assert current == ["cuda:0"]  # left as it was for the rest of the worker


def test_sdxl_unet_forward_is_capturable() -> None:
    """What would break a capture, checked at SDXL's real size on the meta device: a tensor made on the host
    (its copy to the GPU cannot be captured) or a value read back (`.item()` fails on meta)."""
    from diffusers import UNet2DConditionModel
    from torch.utils._python_dispatch import TorchDispatchMode

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(component_config("full", "unet"))
        unet.to(torch.float16).fuse_qkv_projections()
    args, kwargs = unet_call_inputs(unet.config, 1024, dtype=torch.float16, device="meta")

    class HostTensors(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += [str(func) for x in pytree.tree_leaves(out)
                         if isinstance(x, torch.Tensor) and x.device.type != "meta"]
            return out

    with torch.no_grad(), HostTensors() as mode:
        (noise,) = unet(*args, **kwargs, return_dict=False)
    assert noise.shape == (2, 4, 128, 128)
    assert mode.ops == []
