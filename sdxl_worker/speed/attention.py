"""The attention implementation: PyTorch SDPA unless xformers is asked for and works.

On torch >= 2, diffusers already uses scaled_dot_product_attention, and xformers measured no faster, so
it is opt-in (ATTENTION_BACKEND=xformers) for images that carry it. When asked for but not importable or
not working on this device, the worker says so and keeps SDPA rather than failing its start.
"""

from __future__ import annotations

import importlib.util
import logging

log = logging.getLogger(__name__)


def configure_attention(pipe: object, backend: str) -> str:
    """Apply `backend` ("sdpa" or "xformers", as the settings allow) to `pipe`; return the one in use."""
    if backend == "sdpa":
        return "sdpa"
    if importlib.util.find_spec("xformers") is None:
        log.warning("ATTENTION_BACKEND=xformers but xformers is not installed; using PyTorch SDPA")
        return "sdpa"
    try:
        pipe.enable_xformers_memory_efficient_attention()
    # diffusers raises these when xformers cannot run here (no CUDA, no kernel for this card); a CUDA
    # error is not among them and propagates.
    except (ModuleNotFoundError, ValueError, NotImplementedError) as exc:
        log.warning("xformers is installed but does not work here (%s); using PyTorch SDPA", exc)
        return "sdpa"
    return "xformers"
