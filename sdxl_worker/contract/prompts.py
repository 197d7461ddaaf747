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
from dataclasses import dataclass
from typing import Any

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

    def count_tokens(self, text: str) -> int:
        return len(self.pipe.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(self, prompt: str, negative_prompt: str | None, weighting: bool) -> EncodedPrompts:
        """The pipeline's prompt arguments: the texts themselves when nothing needs compel, else embeddings."""
        texts = {"prompt": prompt, "negative_prompt": negative_prompt}
        # A text that weighs to nothing ("", "()") is the empty prompt: compel needs one fragment to encode.
        fragments = {name: (weighted_fragments(text) if weighting else [(text, 1.0)]) or [("", 1.0)]
                     for name, text in texts.items() if text is not None}
        plain = {name: "".join(text for text, _ in parts) for name, parts in fragments.items()}
        tokens = {name: self.count_tokens(text) for name, text in plain.items()}
        weighted = any(weight != 1.0 for parts in fragments.values() for _, weight in parts)
        if not weighted and max(tokens.values()) <= CHUNK_TOKENS:
            return EncodedPrompts({"prompt": plain["prompt"], "negative_prompt": plain.get("negative_prompt")}, tokens)
        import torch

        with torch.inference_mode():
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
