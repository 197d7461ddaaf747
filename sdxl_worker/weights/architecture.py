"""Does a component's weight set hold the tensors its config describes, under names its library accepts?

A text encoder file missing tensors has valid headers, and transformers fills the gaps with random values:
the worker would serve images whose prompt quietly stops mattering. So the tensor names and shapes the
safetensors headers declare are compared with the model's own, before any tensor is read.

The model's own come from a manifest shipped with the worker (assets/sdxl-base-1.0/tensors.json) when the
component's config is SDXL base 1.0's, which a fine-tune like PhotonicFusion keeps: pure Python, fast enough for
the HEALTHCHECK. For any other config they come from the model built on the meta device, which needs torch
(`expected_from_meta`: the worker's start, `volume_check.py --tensors`).

What a file may call a tensor is the library's own rule for that class (`NameRules`), read from the library:
transformers' base-model prefix and its checkpoint conversion mapping (published SDXL text encoders were saved by
transformers 4, whose CLIPTextModel names start with `text_model.`; transformers 5's do not), the stored buffers
its loader drops without a word (`position_ids`), and diffusers' renames of deprecated attention blocks (single
files only, as diffusers applies them). The manifest keeps each SDXL class's rules as the pinned libraries give
them, so the header-only check, the volume check with torch, both loaders and prepare_volume map names one way.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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
# Module names diffusers' deprecated attention blocks stored, and what they are now (its _fix_state_dict_keys_on_load).
DEPRECATED_ATTENTION = ("query", "key", "value", "proj_attn")
# A module path no model has, to ask a library's filters whether they drop a name wherever it stands.
PROBE_PREFIX = "any.module"

Shapes = dict[str, tuple[int, ...]]


class UnsupportedNaming(ValueError):
    """A class whose library renames tensors in a way a header-only check cannot follow (splits, merges)."""


@dataclass(frozen=True)
class NameRules:
    """How a model class's library names a file's tensors when it loads them."""

    # Stored prefix -> the model's, applied in turn to every name (transformers' PrefixChange renamings).
    prefix_renames: tuple[tuple[str, str], ...] = ()
    # The base model's prefix: stripped when the rest names a tensor, added when that names one (transformers).
    base_prefix: str = ""
    # Whole-name renames the library applies to a single-file (not sharded) weight set (diffusers).
    renames: Mapping[str, str] = field(default_factory=dict)
    # Regular expressions of stored names the library drops without a word (buffers it no longer saves).
    ignored: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"prefix_renames": [list(pair) for pair in self.prefix_renames], "base_prefix": self.base_prefix,
                "renames": dict(sorted(self.renames.items())), "ignored": list(self.ignored)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NameRules:
        return cls(tuple((old, new) for old, new in data["prefix_renames"]), data["base_prefix"],
                   dict(data["renames"]), tuple(data["ignored"]))

    def model_name(self, stored: str, expected: Mapping[str, Any] | set[str], single_file: bool) -> str:
        """The name the library gives a stored tensor (in `expected` when the model has a place for it)."""
        name = self.renames.get(stored, stored) if single_file else stored
        for old, new in self.prefix_renames:
            if name.startswith(old):
                name = new + name[len(old):]
        base = f"{self.base_prefix}." if self.base_prefix else ""
        if base and name.startswith(base) and name[len(base):] in expected:
            name = name[len(base):]
        elif base and base + name in expected:
            name = base + name
        # transformers: a name the renamings took away from the model's is kept as it was.
        return stored if name not in expected and stored in expected else name


@dataclass(frozen=True)
class Expected:
    """A component's tensors as its config makes them, and the names its library accepts for them."""

    shapes: Shapes
    rules: NameRules


@dataclass
class NameMap:
    """A weight set's tensor names sorted by what the library does with each."""

    names: dict[str, str] = field(default_factory=dict)  # file name -> the model's name for it
    ignored: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # model names two file names map to


def map_names(rules: NameRules, found: Iterable[str], expected: Mapping[str, Any] | set[str],
              single_file: bool) -> NameMap:
    """Each file tensor name as the library loads it: its model name, ignored, or unexpected."""
    result = NameMap()
    ignored = [re.compile(pattern) for pattern in rules.ignored]
    taken: set[str] = set()
    for stored in found:
        name = rules.model_name(stored, expected, single_file)
        if name in expected:
            if name in taken:
                result.duplicates.append(name)
            taken.add(name)
            result.names[stored] = name
        elif any(p.search(name) or p.search(stored) for p in ignored):
            result.ignored.append(stored)
        else:
            result.unexpected.append(stored)
    return result


def shape_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config keys that decide tensor names and shapes."""
    return {key: value for key, value in config.items() if key not in SHAPELESS_KEYS}


def expected_from_manifest(component: str, class_name: str, config: Mapping[str, Any]) -> Expected | None:
    """SDXL base 1.0's tensors for this component, or None when its class or config is another one."""
    entry = _manifest().get(component)
    if entry is None or entry["class"] != class_name or entry["config"] != shape_config(config):
        return None
    return Expected({name: tuple(shape) for name, shape in entry["tensors"].items()},
                    NameRules.from_dict(entry["names"]))


def meta_model(library: str, class_name: str, config: Mapping[str, Any]) -> Any:
    """The model `config` describes, built on the meta device (no memory, no weights)."""
    import importlib

    import torch

    cls = getattr(importlib.import_module(library), class_name)
    with torch.device("meta"):
        if library == "transformers":
            return cls(cls.config_class.from_dict(dict(config)))
        return cls.from_config(dict(config))


def expected_from_meta(library: str, class_name: str, config: Mapping[str, Any]) -> Expected:
    """The tensors and naming rules of the model `config` describes, from the model built on the meta device."""
    model = meta_model(library, class_name, config)
    return Expected({name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}, rules_of(model))


def rules_of(model: Any) -> NameRules:
    """The naming rules `model`'s library applies when it loads weights into it, read from the library."""
    if type(model).__module__.startswith("transformers."):
        return _transformers_rules(model)
    return _diffusers_rules(model)


def _transformers_rules(model: Any) -> NameRules:
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import PrefixChange
    from transformers.utils.loading_report import LoadStateDictInfo

    renames = []
    # The legacy renames (`LayerNorm.gamma`, `weight_g`...) name layers no class here has; the test suite compares
    # these rules with transformers' own renaming, legacy included, on every layout it knows.
    for transform in get_model_conversion_mapping(model, add_legacy=False):
        if not (isinstance(transform, PrefixChange) and transform.prefix_to_remove and not transform.model_prefix
                and not transform.scope_prefix):
            raise UnsupportedNaming(f"transformers renames {type(model).__name__}'s tensors with "
                                    f"{transform!r}, which a header check cannot follow")
        # Scoped to a submodule at the model's root: the stored prefix follows the base model's.
        scope = f"{transform.base_model_prefix}." if transform.scope_prefix == "" and transform.base_model_prefix \
            else ""
        renames.append((f"{scope}{transform.prefix_to_remove}.", scope))
    # The stored buffers transformers drops, asked of its own filter: for each buffer, the shortest end of its name
    # that is dropped under any prefix (transformers matches `position_ids` wherever it stands).
    dropped = set()
    for buffer, _ in model.named_buffers():
        parts = buffer.split(".")
        for size in range(1, len(parts) + 1):
            tail = ".".join(parts[-size:])
            probes = {tail, f"{PROBE_PREFIX}.{tail}"}
            info = LoadStateDictInfo(missing_keys=set(), unexpected_keys=set(probes), mismatched_keys=set(),
                                     conversion_errors={}, error_msgs=[], skipped_pp_keys=set())
            model._adjust_missing_and_unexpected_keys(info)
            if not info.unexpected_keys:
                dropped.add(rf"(^|\.){re.escape(tail)}$")
                break
    patterns = sorted(model._keys_to_ignore_on_load_unexpected or ())
    return NameRules(tuple(renames), model.base_model_prefix or "", ignored=(*patterns, *sorted(dropped)))


def _diffusers_rules(model: Any) -> NameRules:
    # diffusers renames deprecated attention blocks' tensors in single files: asked of its own function.
    # Each placeholder is its own old name: after the function, the key it sits under is its new name.
    renamed = {f"{path}.{old}.{kind}": f"{path}.{old}.{kind}" for path, module in model.named_modules()
               if getattr(module, "_from_deprecated_attn_block", False)
               for old in DEPRECATED_ATTENTION for kind in ("weight", "bias")}
    model._fix_state_dict_keys_on_load(renamed)
    renames = {source: target for target, source in renamed.items() if source != target}
    return NameRules(renames=renames, ignored=tuple(sorted(type(model)._keys_to_ignore_on_load_unexpected or ())))


def compare(expected: Expected, found: Shapes, single_file: bool = True) -> str | None:
    """What is wrong with `found` (a weight set's header shapes) against `expected`; None when they match."""
    mapped = map_names(expected.rules, found, expected.shapes, single_file)
    loaded = {model_name: found[stored] for stored, model_name in mapped.names.items()}
    missing = sorted(set(expected.shapes) - set(loaded))
    misshaped = sorted(name for name in loaded if expected.shapes[name] != loaded[name])
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) the config needs are missing, e.g. {missing[0]}")
    if mapped.unexpected:
        problems.append(f"{len(mapped.unexpected)} tensor(s) the config has no place for, e.g. "
                        f"{sorted(mapped.unexpected)[0]}")
    if mapped.duplicates:
        problems.append(f"{len(mapped.duplicates)} tensor(s) stored under two names, e.g. "
                        f"{sorted(mapped.duplicates)[0]}")
    if misshaped:
        name = misshaped[0]
        problems.append(f"{len(misshaped)} tensor(s) of another shape, e.g. {name} is {list(loaded[name])}, "
                        f"the config makes it {list(expected.shapes[name])}")
    return "; ".join(problems) or None


@functools.cache
def _manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text())
