"""Prompts as users write them on Civitai: longer than CLIP's 77 tokens, with A1111-style weights.

Stock diffusers cuts a prompt at 77 tokens without a word. Here a prompt that is longer, or that weights a
part with `(word:1.3)`, `(word)` (x1.1) or `[word]` (/1.1), is encoded by compel (a maintained library): 75-token
chunks through both SDXL text encoders, concatenated, each token's embedding weighted, and the pooled embedding
from the first chunk. compel's own syntax is not A1111's (it reads `(red:1.5)` as the text "red:1 . 5"), and no
maintained package parses A1111's, so `weighted_fragments` turns the syntax into compel's (text, weight)
fragments: nesting multiplies, `\\(` and `\\)` are literal, an unclosed bracket applies to the rest, as in A1111.
A prompt without weights that fits in 77 tokens goes to the pipeline as text, exactly as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sdxl_worker.contract.job_schema import MAX_CLIP_SKIP

CHUNK_TOKENS = 75  # CLIP's 77 positions less the start and end markers
PAREN_FACTOR = 1.1
TOKEN = re.compile(r"\\[()\[\]\\]|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|.", re.S)


@dataclass(frozen=True)
class EncodedPrompts:
    """What the pipeline takes instead of text, and how many tokens each prompt had."""

    kwargs: dict[str, Any]
    tokens: dict[str, int]


def weighted_fragments(prompt: str) -> list[tuple[str, float]]:
    """A1111's attention syntax as (text, weight) fragments, adjacent equal weights merged."""
    fragments: list[list[Any]] = []
    open_brackets: list[tuple[str, int]] = []  # (bracket, index of its first fragment)

    def scale(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in TOKEN.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            fragments.append([token[1], 1.0])
        elif token in ("(", "["):
            open_brackets.append((token, len(fragments)))
        elif weight is not None and open_brackets and open_brackets[-1][0] == "(":
            scale(open_brackets.pop()[1], float(weight))
        elif token == ")" and open_brackets and open_brackets[-1][0] == "(":
            scale(open_brackets.pop()[1], PAREN_FACTOR)
        elif token == "]" and open_brackets and open_brackets[-1][0] == "[":
            scale(open_brackets.pop()[1], 1 / PAREN_FACTOR)
        else:
            fragments.append([token, 1.0])
    for bracket, start in reversed(open_brackets):
        scale(start, PAREN_FACTOR if bracket == "(" else 1 / PAREN_FACTOR)
    merged: list[tuple[str, float]] = []
    for text, weight in fragments:
        if merged and abs(merged[-1][1] - weight) < 1e-9:
            merged[-1] = (merged[-1][0] + text, weight)
        elif text:
            merged.append((text, weight))
    return merged


class PromptEncoder:
    """Encodes a job's prompts for one SDXL pipeline (its tokenizers and text encoders), compel doing the work."""

    def __init__(self, pipe: Any) -> None:
        from compel import Compel, ReturnedEmbeddingsType

        self.pipe = pipe
        self.compels = [Compel(tokenizer=tokenizer, text_encoder=encoder, truncate_long_prompts=False,
                               returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
                               requires_pooled=pooled, device=str(encoder.device))
                        for tokenizer, encoder, pooled in ((pipe.tokenizer, pipe.text_encoder, False),
                                                           (pipe.tokenizer_2, pipe.text_encoder_2, True))]

    @property
    def max_clip_skip(self) -> int:
        """The most layers `clip_skip` may skip: both encoders need a layer left below the penultimate one's."""
        layers = min(encoder.config.num_hidden_layers for encoder in (self.pipe.text_encoder, self.pipe.text_encoder_2))
        return min(MAX_CLIP_SKIP, layers - 2)

    def count_tokens(self, text: str) -> int:
        return len(self.pipe.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(self, prompt: str, negative_prompt: str | None, weighting: bool, clip_skip: int | None = None,
               text_encoders_changed: bool = False, tokens_added: bool = False) -> EncodedPrompts:
        """The pipeline's prompt arguments: the texts themselves when nothing needs compel, else embeddings.

        `clip_skip` as diffusers' SDXL pipelines take it; `text_encoders_changed` (a LoRA job) makes compel encode
        the empty prompt its weights scale from afresh, with the job's text encoders; `tokens_added` (the texts hold
        an embedding's tokens, one for each of its vectors already) sends them through compel, since the pipeline
        would expand those tokens a second time."""
        texts = {"prompt": prompt, "negative_prompt": negative_prompt}
        # A text that weighs to nothing ("", "()") is the empty prompt: compel needs one fragment to encode.
        fragments = {name: (weighted_fragments(text) if weighting else [(text, 1.0)]) or [("", 1.0)]
                     for name, text in texts.items() if text is not None}
        plain = {name: "".join(text for text, _ in parts) for name, parts in fragments.items()}
        tokens = {name: self.count_tokens(text) for name, text in plain.items()}
        weighted = any(weight != 1.0 for parts in fragments.values() for _, weight in parts)
        if not weighted and not tokens_added and max(tokens.values()) <= CHUNK_TOKENS:
            return EncodedPrompts({"prompt": plain["prompt"], "negative_prompt": plain.get("negative_prompt"),
                                   "clip_skip": clip_skip}, tokens)
        import torch

        with torch.inference_mode(), self._encoders(clip_skip, fresh=text_encoders_changed):
            # Per encoder, every prompt's embeddings, padded with the empty prompt's to one length (whole chunks).
            per_encoder = [[self._weighted(compel, fragments[name]) for name in fragments] for compel in self.compels]
            length = max(tensor.shape[1] for tensors in per_encoder for tensor in tensors)
            per_encoder = [[self._pad(compel, tensor, length) for tensor in tensors]
                           for compel, tensors in zip(self.compels, per_encoder, strict=True)]
            embeds = [torch.cat(pair, dim=-1) for pair in zip(*per_encoder, strict=True)]
            pooled = [self.compels[1].conditioning_provider.get_pooled_embeddings([plain[name]],
                                                                                 device=self.compels[1].device)
                      for name in fragments]
        kwargs = {"prompt_embeds": embeds[0], "pooled_prompt_embeds": pooled[0]}
        if len(embeds) == 2:
            kwargs.update(negative_prompt_embeds=embeds[1], negative_pooled_prompt_embeds=pooled[1])
        return EncodedPrompts(kwargs, tokens)

    @contextmanager
    def _encoders(self, clip_skip: int | None, fresh: bool) -> Iterator[None]:
        """Within: compel reads the hidden states `clip_skip` asks for, and its empty prompt's embedding (the point
        its weights scale from; compel caches it) is the one these encoders give; both as they were on the way out.
        compel has no clip_skip of its own: it always takes the penultimate hidden state, so each encoder's states
        are handed to it `clip_skip` layers short."""
        providers = [compel.conditioning_provider for compel in self.compels]
        saved = [(provider.text_encoder, provider._empty_z) for provider in providers]
        try:
            for provider in providers:
                if clip_skip:
                    provider.text_encoder = _LayersSkipped(provider.text_encoder, clip_skip)
                if clip_skip or fresh:
                    provider._empty_z = None
            yield
        finally:
            for provider, (encoder, empty) in zip(providers, saved, strict=True):
                provider.text_encoder, provider._empty_z = encoder, empty

    @staticmethod
    def _weighted(compel: Any, parts: list[tuple[str, float]]) -> Any:
        return compel.conditioning_provider.get_embeddings_for_weighted_prompt_fragments(
            text_batch=[[t for t, _ in parts]], fragment_weights_batch=[[w for _, w in parts]], device=compel.device)

    def _pad(self, compel: Any, tensor: Any, length: int) -> Any:
        import torch

        if tensor.shape[1] == length:
            return tensor
        empty = self._weighted(compel, [("", 1.0)])
        return torch.cat([tensor, empty.repeat(1, (length - tensor.shape[1]) // empty.shape[1], 1)], dim=1)


class _LayersSkipped:
    """A text encoder whose outputs list `skip` fewer hidden states: compel's penultimate one is then diffusers'
    `hidden_states[-(clip_skip + 2)]`. The pooled embedding (the last layer's) is untouched, as in diffusers."""

    def __init__(self, encoder: Any, skip: int) -> None:
        self.encoder, self.skip = encoder, skip

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        output = self.encoder(*args, **kwargs)
        if output.hidden_states is not None:
            output.hidden_states = output.hidden_states[: -self.skip]
        return output

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)
