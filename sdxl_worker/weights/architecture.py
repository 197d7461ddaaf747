"""Does a component's weight set hold the tensors its config describes: every name, every shape?

A text encoder file missing tensors has valid headers, and transformers fills the gaps with random values:
the worker would serve images whose prompt quietly stops mattering. So the tensor names and shapes the
safetensors headers declare are compared with the model's own, before any tensor is read.

The model's own come from a manifest shipped with the worker (assets/sdxl-base-1.0/tensors.json) when the
component's config is SDXL base 1.0's, which a fine-tune like PhotonicFusion keeps: pure Python, fast enough for
the HEALTHCHECK. For any other config they come from the model built on the meta device, which needs torch
(`expected_from_meta`: the worker's start, `volume_check.py --tensors`).

Names are compared as the libraries load them: transformers 5 drops CLIPTextModel's `text_model.` prefix, and
ignores a stored `position_ids` (a buffer it no longer saves); anything else missing, extra or of another
shape is a problem.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MANIFEST = Path(__file__).resolve().parents[1] / "assets" / "sdxl-base-1.0" / "tensors.json"

# Config keys that name, document or tune a model without changing any tensor's name or shape.
SHAPELESS_KEYS = frozenset({
    "_class_name", "_diffusers_version", "_name_or_path", "architectures", "torch_dtype", "dtype",
    "transformers_version", "force_upcast", "scaling_factor", "shift_factor", "sample_size", "latents_mean",
    "latents_std", "initializer_factor", "initializer_range", "attention_dropout", "dropout", "bos_token_id",
    "eos_token_id", "pad_token_id", "hidden_act", "layer_norm_eps", "upcast_attention",
})
DROPPED_PREFIX = "text_model."
IGNORED_SUFFIX = "position_ids"

Shapes = dict[str, tuple[int, ...]]


def shape_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config keys that decide tensor names and shapes."""
    return {key: value for key, value in config.items() if key not in SHAPELESS_KEYS}


def expected_from_manifest(component: str, class_name: str, config: Mapping[str, Any]) -> Shapes | None:
    """SDXL base 1.0's tensors for this component, or None when its class or config is another one."""
    entry = _manifest().get(component)
    if entry is None or entry["class"] != class_name or entry["config"] != shape_config(config):
        return None
    return {name: tuple(shape) for name, shape in entry["tensors"].items()}


def expected_from_meta(library: str, class_name: str, config: Mapping[str, Any]) -> Shapes:
    """The tensors of the model `config` describes, built on the meta device (no memory, no weights)."""
    import importlib

    import torch

    cls = getattr(importlib.import_module(library), class_name)
    with torch.device("meta"):
        if library == "transformers":
            model = cls(cls.config_class.from_dict(dict(config)))
        else:
            model = cls.from_config(dict(config))
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def compare(expected: Shapes, found: Shapes) -> str | None:
    """What is wrong with `found` (a weight set's header shapes) against `expected`; None when they match."""
    loaded: Shapes = {}
    for name, shape in found.items():
        if name not in expected and name.startswith(DROPPED_PREFIX) and name[len(DROPPED_PREFIX):] in expected:
            name = name[len(DROPPED_PREFIX):]
        elif name not in expected and name.endswith(IGNORED_SUFFIX):
            continue
        loaded[name] = shape
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    misshaped = sorted(name for name in set(expected) & set(loaded) if expected[name] != loaded[name])
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) the config needs are missing, e.g. {missing[0]}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) the config has no place for, e.g. {unexpected[0]}")
    if misshaped:
        name = misshaped[0]
        problems.append(f"{len(misshaped)} tensor(s) of another shape, e.g. {name} is {list(loaded[name])}, "
                        f"the config makes it {list(expected[name])}")
    return "; ".join(problems) or None


@functools.cache
def _manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text())
