"""Replay the UNet's forward as CUDA graphs: the same eager kernels, without the CPU launching each one.

An eager UNet leaves the GPU waiting while the CPU launches each of its thousands of small kernels, which is
also why eager timings vary from host to host. torch.compile with CUDA graphs removes that, but costs minutes
of compiling at a first start, seconds more at every cached one, and compilers in the image. Capturing the
eager forward costs two eager calls and one capture and needs no compiler; measured faster than eager with the
same output (benchmarks/RESULTS.md), it is on by default on CUDA (`CUDA_GRAPHS`).

A graph per call shape (shapes, dtypes and devices: the image size and count, the prompt's length in 77-token
chunks): the warm-up captures the usual one, and a job with a new shape captures its own on its first
UNet call, so only that job pays the capture (two extra UNet calls), up to `CUDA_GRAPH_MAX` graphs. Every sampler
shares a shape's graph, since the UNet gets its timestep as float32 whatever the sampler (unet_timestep.py).
Calls no graph can hold run eagerly: CPU tensors (a copy from host memory cannot be captured), a numeric
argument that is not a tensor (it would be baked into the graph), gradients. Inputs are copied into the
graph's buffers and outputs cloned out of them, so no caller ever holds memory that the next replay overwrites.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sdxl_worker.speed.unet_timestep import timestep_as_float32

log = logging.getLogger(__name__)

# capture(run, warmup_calls, device, pool) -> (outputs, replay): records `run`, which reads the static inputs on
# `device` and returns the outputs, into the memory pool `pool`; each `replay()` then recomputes those same output
# tensors in place.
Capture = Callable[[Callable[[], Any], int, Any, Any], tuple[Any, Callable[[], None]]]


def cuda_graph_capture(run: Callable[[], Any], warmup_calls: int, device: Any,
                       pool: Any = None) -> tuple[Any, Callable[[], None]]:
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
        with torch.cuda.graph(graph, pool=pool):
            outputs = run()
    return outputs, graph.replay


@dataclass
class CapturedGraph:
    """One captured call: the buffers a replay reads and writes, and the replay itself."""

    static_inputs: list[Any]
    static_outputs: Any
    replay: Callable[[], None]


@dataclass
class GraphCounts:
    """What a GraphedForward has done so far; the difference over a job says how that job ran."""

    captures: int = 0
    replays: int = 0
    eager_calls: int = 0

    def since(self, before: GraphCounts) -> str:
        """`eager` if any call ran eagerly since `before`, else `captured` if a graph was captured, else
        `replayed` (and `eager` when there was no call at all, a module without a graph)."""
        if self.eager_calls > before.eager_calls or self.replays == before.replays:
            return "eager"
        return "captured" if self.captures > before.captures else "replayed"


class GraphedForward:
    """Stands in for a module's `forward`: a graph per call shape, captured the first time that shape is seen
    and replayed after; calls no graph can hold run eagerly.

    At most `max_graphs` graphs are kept, the least recently used dropped first. They share one memory pool
    (replays are sequential, and each replay's outputs are cloned before the next), so their memory grows with the
    largest shape, not with the count.
    """

    def __init__(self, forward: Callable[..., Any], device_type: str = "cuda", capture: Capture = cuda_graph_capture,
                 warmup_calls: int = 2, max_graphs: int = 12) -> None:
        self.eager = forward
        self.device_type = device_type
        self.capture = capture
        self.warmup_calls = warmup_calls
        self.max_graphs = max_graphs
        self.bypass = False  # every call eager while set: modules changed since the capture (LoRA jobs)
        self.graphs: OrderedDict[tuple[Any, ...], CapturedGraph] = OrderedDict()
        self.pool: Any = None  # the graphs' shared memory pool, made at the first capture
        self.counts = GraphCounts()

    @property
    def replays(self) -> int:
        return self.counts.replays

    @property
    def eager_calls(self) -> int:
        return self.counts.eager_calls

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import torch
        import torch.utils._pytree as pytree

        leaves, spec = pytree.tree_flatten((args, kwargs))
        # A replay records no autograd history: a caller that wants gradients gets the eager forward.
        key = None if torch.is_grad_enabled() or self.bypass or self.max_graphs < 1 else self._key(leaves, spec)
        if key is None:
            self.counts.eager_calls += 1
            return self.eager(*args, **kwargs)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self._capture(leaves, spec, key)
        else:
            self.graphs.move_to_end(key)
        for static, value in zip(graph.static_inputs, _tensors(leaves), strict=True):
            static.copy_(value)
        graph.replay()
        self.counts.replays += 1
        return pytree.tree_map(_clone, graph.static_outputs)

    def _key(self, leaves: list[Any], spec: Any) -> tuple[Any, ...] | None:
        """What a call must match to replay a graph; None when it can never be captured."""
        import torch

        parts: list[Any] = [spec]
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                if leaf.device.type != self.device_type:
                    return None
                # Not the strides: a call's inputs are copied into the graph's own buffers, whatever their layout
                # (image to image's latents come channels-last from the VAE's encoder, text to image's contiguous).
                parts.append((tuple(leaf.shape), leaf.dtype, leaf.device))
            elif leaf is None or isinstance(leaf, (bool, str)):
                parts.append(leaf)
            else:
                return None
        return tuple(parts)

    def _capture(self, leaves: list[Any], spec: Any, key: tuple[Any, ...]) -> CapturedGraph:
        import torch
        import torch.utils._pytree as pytree

        while len(self.graphs) >= self.max_graphs:
            dropped, _ = self.graphs.popitem(last=False)
            log.info("dropped the least recently used CUDA graph, for inputs %s", _shapes(dropped))
        started = time.perf_counter()
        # Normal tensors even when the first call comes under inference_mode (the worker's jobs do): an
        # inference tensor refuses in-place copies outside it, and a later caller may use no_grad instead.
        with torch.inference_mode(False):
            static = [_clone(leaf) for leaf in leaves]

        def run() -> Any:
            args, kwargs = pytree.tree_unflatten(static, spec)
            return self.eager(*args, **kwargs)

        static_inputs = list(_tensors(static))
        device = static_inputs[0].device if static_inputs else None
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle() if self.device_type == "cuda" else object()
        outputs, replay = self.capture(run, self.warmup_calls, device, self.pool)
        graph = self.graphs[key] = CapturedGraph(static_inputs, outputs, replay)
        self.counts.captures += 1
        log.info("captured the UNet's forward as a CUDA graph for inputs %s in %.2f s (%d graph(s) kept)",
                 [tuple(t.shape) for t in static_inputs], time.perf_counter() - started, len(self.graphs))
        return graph


def graph_unet(unet: Any, device_type: str = "cuda", capture: Capture = cuda_graph_capture,
               max_graphs: int = 12) -> GraphedForward:
    """Route `unet`'s calls through a GraphedForward, in place: the pipeline keeps the model itself."""
    timestep_as_float32(unet)
    graphed = GraphedForward(unet.forward, device_type, capture, max_graphs=max_graphs)
    unet.forward = graphed
    return graphed


def graphed_forward(pipe: Any) -> GraphedForward | None:
    """`pipe`'s UNet's GraphedForward, or None when its UNet runs without graphs."""
    forward = getattr(getattr(pipe, "unet", None), "forward", None)
    return forward if isinstance(forward, GraphedForward) else None


def _tensors(leaves: list[Any]) -> Any:
    import torch

    return (leaf for leaf in leaves if isinstance(leaf, torch.Tensor))


def _shapes(key: tuple[Any, ...]) -> list[tuple[int, ...]]:
    return [part[0] for part in key[1:] if isinstance(part, tuple)]


def _clone(value: Any) -> Any:
    import torch

    return value.clone() if isinstance(value, torch.Tensor) else value
