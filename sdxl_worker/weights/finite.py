"""Weights that are not finite: a NaN or Inf anywhere in an add-on turns every latent it touches non-finite, and
the job draws a flat image. Each add-on's files are checked with this at load, and the refusal names the file."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def first_non_finite(named: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first tensor holding a NaN or an Inf, or None when every one is finite."""
    import torch

    return next((name for name, tensor in named if not torch.isfinite(tensor).all()), None)
