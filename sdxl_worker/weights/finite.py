"""Weights that are not finite: a NaN or Inf anywhere in an add-on turns every latent it touches non-finite, and
the job draws a flat image. Each add-on's files are checked with this at load, and the refusal names the file."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sdxl_worker.sentences import bounded


def first_non_finite(named: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first tensor holding a NaN or an Inf, or None when every one is finite."""
    import torch

    return next((name for name, tensor in named if not torch.isfinite(tensor).all()), None)


def non_finite_weights(named: Iterable[tuple[str, Any]]) -> str | None:
    """The refusal's middle for a model whose weights hold a NaN or an Inf ("holds weights that are not finite (NaN
    or Inf), e.g. 'name'"), or None when every one is finite."""
    bad = first_non_finite(named)
    return None if bad is None else f"holds weights that are not finite (NaN or Inf), e.g. {bounded(bad, 60)!r}"
