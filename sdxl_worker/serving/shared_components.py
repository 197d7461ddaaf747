"""Components two models may share (MODELS): a fine-tune next to its base usually carries the base's text encoders,
tokenizers and VAE unchanged, so it needs to hold only its own UNet.

Whether two models' components are the same is decided by their contents as loaded, before any job ran (a job's
LoRA layers and embedding tokens change them afterwards): a digest of each component's class, configuration and
tensors (names, dtypes, shapes and bytes) for a model, of its class and full definition for a tokenizer. The text
encoders and their tokenizers go together or not at all, since a job's embeddings are loaded into both encoders
and both tokenizers; the model taking them also takes the other's embedding cache, so an embedding loaded by one
model's job is not loaded a second time into the same encoders under another placeholder.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Each group of components shared as one, by name.
GROUPS: dict[str, tuple[str, ...]] = {
    "text encoders": ("tokenizer", "tokenizer_2", "text_encoder", "text_encoder_2"),
    "VAE": ("vae",),
}

Digests = dict[str, str]  # group -> digest; a group missing could not be fingerprinted and is never shared


def digests(pipe: Any) -> Digests:
    """Each group's digest for a freshly loaded pipeline."""
    found = {}
    for group, names in GROUPS.items():
        parts = [_component_digest(getattr(pipe, name, None)) for name in names]
        if all(parts):
            found[group] = hashlib.sha256("".join(parts).encode()).hexdigest()
    return found


def adopt(worker: Any, donor: Any, group: str) -> None:
    """`worker`'s components of `group` replaced, in every pipeline it runs, by `donor`'s (the same module objects),
    and what holds references to them rebuilt."""
    from sdxl_worker.contract.prompts import PromptEncoder

    pipelines = {id(p): p for p in (worker.pipe, *worker.pipelines.values())}.values()
    for name in GROUPS[group]:
        ours, theirs = getattr(worker.pipe, name), getattr(donor.pipe, name)
        for pipeline in pipelines:
            if getattr(pipeline, name, None) is ours:
                pipeline.register_modules(**{name: theirs})
    if group == "text encoders":
        worker.prompt_encoder = PromptEncoder(worker.pipe)
        worker.embeddings = donor.embeddings


def _component_digest(component: Any) -> str | None:
    """A digest of a model's or tokenizer's contents; None for anything else (or a tensor subclass: fp8)."""
    import torch

    digest = hashlib.sha256(type(component).__name__.encode())
    if isinstance(component, torch.nn.Module):
        config = getattr(component, "config", None)
        fields = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
        fields.pop("_name_or_path", None)  # the folder it was read from
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode())
        for name, tensor in sorted(component.state_dict(keep_vars=True).items()):
            if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
                return None
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()
    backend = getattr(component, "backend_tokenizer", None)
    if backend is None:
        return None
    definition = json.loads(backend.to_str())
    for setting in ("padding", "truncation"):  # what the last call asked for, set again by every call
        definition.pop(setting, None)
    digest.update(json.dumps(definition, sort_keys=True).encode())
    digest.update(json.dumps(component.special_tokens_map, sort_keys=True).encode())
    digest.update(str(component.model_max_length).encode())
    return digest.hexdigest()
