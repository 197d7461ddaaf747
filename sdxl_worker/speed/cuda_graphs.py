"""Replay the UNet's forward as one CUDA graph: the same eager kernels, without the CPU launching each one.

An eager UNet leaves the GPU waiting while the CPU launches each of its thousands of small kernels, which is
also why eager timings vary from host to host. torch.compile with CUDA graphs removes that, but costs minutes
of compiling at a first start, seconds more at every cached one, and compilers in the image. Capturing the
eager forward costs two eager calls and one capture at the warm-up and needs no compiler; measured faster than
eager with the same output (benchmarks/RESULTS.md), it is on by default on CUDA (`CUDA_GRAPHS`).

One graph, for the warm-up's call (its shapes, dtypes, devices and strides), as with COMPILE; every
sampler shares it, since the UNet gets its timestep as float32 whatever the sampler (unet_timestep.py).
Any other call runs eagerly: another size or image
count, CPU tensors (a copy from host memory cannot be captured), or a numeric argument that is not a
tensor (it would be baked into the graph). Inputs are copied into the graph's buffers and outputs cloned
out of them, so no caller ever holds memory that the next replay overwrites.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sdxl_worker.speed.unet_timestep import timestep_as_float32

log = logging.getLogger(__name__)

# capture(run, warmup_calls, device) -> (outputs, replay): records `run`, which reads the static inputs on
# `device` and returns the outputs; each `replay()` then recomputes those same output tensors in place.
Capture = Callable[[Callable[[], Any], int, Any], tuple[Any, Callable[[], None]]]


def cuda_graph_capture(run: Callable[[], Any], warmup_calls: int, device: Any) -> tuple[Any, Callable[[], None]]:
    """Warm up on a side stream (cuDNN and cuBLAS pick and allocate there), then capture one call.

    Streams and graphs belong to the current CUDA device, which is device 0 unless set: with the model on
    cuda:1 (DEVICE=cuda:1) they would be created on the wrong card, so all of it runs with `device` current.
    """
    import torch

    with torch.cuda.device(device):
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(warmup_calls):
                run()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = run()
    return outputs, graph.replay


class GraphedForward:
    """Stands in for a module's `forward`: replays the one captured call, runs every other call eagerly."""

    def __init__(self, forward: Callable[..., Any], device_type: str = "cuda", capture: Capture = cuda_graph_capture,
                 warmup_calls: int = 2) -> None:
        self.eager = forward
        self.device_type = device_type
        self.capture = capture
        self.warmup_calls = warmup_calls
        self.frozen = False  # set after the warm-up: no capture inside a user's job
        self.bypass = False  # every call eager while set: modules changed since the capture (LoRA jobs)
        self.key: tuple[Any, ...] | None = None
        self.static_inputs: list[Any] = []
        self.static_outputs: Any = None
        self.replay: Callable[[], None] | None = None
        self.replays = 0
        self.eager_calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch
        import torch.utils._pytree as pytree

        leaves, spec = pytree.tree_flatten((args, kwargs))
        # A replay records no autograd history: a caller that wants gradients gets the eager forward.
        key = None if torch.is_grad_enabled() or self.bypass else self._key(leaves, spec)
        if key is not None and self.key is None and not self.frozen:
            self._capture(leaves, spec, key)
        if key is None or key != self.key:
            self.eager_calls += 1
            return self.eager(*args, **kwargs)
        for static, value in zip(self.static_inputs, _tensors(leaves), strict=True):
            static.copy_(value)
        assert self.replay is not None
        self.replay()
        self.replays += 1
        return pytree.tree_map(_clone, self.static_outputs)

    def _key(self, leaves: list[Any], spec: Any) -> tuple[Any, ...] | None:
        """What a call must match to replay the graph; None when it can never be captured."""
        import torch

        parts: list[Any] = [spec]
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                if leaf.device.type != self.device_type:
                    return None
                parts.append((tuple(leaf.shape), leaf.dtype, leaf.device, leaf.stride()))
            elif leaf is None or isinstance(leaf, (bool, str)):
                parts.append(leaf)
            else:
                return None
        return tuple(parts)

    def _capture(self, leaves: list[Any], spec: Any, key: tuple[Any, ...]) -> None:
        import torch
        import torch.utils._pytree as pytree

        # Normal tensors even when the first call comes under inference_mode (the worker's jobs do): an
        # inference tensor refuses in-place copies outside it, and a later caller may use no_grad instead.
        with torch.inference_mode(False):
            static = [_clone(leaf) for leaf in leaves]

        def run() -> Any:
            args, kwargs = pytree.tree_unflatten(static, spec)
            return self.eager(*args, **kwargs)

        self.static_inputs = list(_tensors(static))
        device = self.static_inputs[0].device if self.static_inputs else None
        self.static_outputs, self.replay = self.capture(run, self.warmup_calls, device)
        self.key = key
        log.info("captured the UNet's forward as a CUDA graph for inputs %s",
                 [tuple(t.shape) for t in self.static_inputs])


def graph_unet(unet: Any, device_type: str = "cuda", capture: Capture = cuda_graph_capture) -> GraphedForward:
    """Route `unet`'s calls through a GraphedForward, in place: the pipeline keeps the model itself."""
    timestep_as_float32(unet)
    graphed = GraphedForward(unet.forward, device_type, capture)
    unet.forward = graphed
    return graphed


def freeze_graphs(pipe: Any) -> None:
    """After the warm-up: calls of any other shape run eagerly instead of being captured inside a job."""
    forward = getattr(getattr(pipe, "unet", None), "forward", None)
    if isinstance(forward, GraphedForward):
        forward.frozen = True


def _tensors(leaves: list[Any]) -> Any:
    import torch

    return (leaf for leaf in leaves if isinstance(leaf, torch.Tensor))


def _clone(value: Any) -> Any:
    import torch

    return value.clone() if isinstance(value, torch.Tensor) else value
