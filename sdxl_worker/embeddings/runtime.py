"""A job's textual-inversion embeddings: a word of a prompt that names a file in EMBEDDINGS_DIR, as in A1111.

Each embedding used is loaded once into both text encoders (diffusers' `load_textual_inversion`, one vector per
new token) and stays loaded, the least recently used unloaded past EMBEDDINGS_CACHE, loaded again when its file
changes. Its tokens are placeholders no prompt contains by chance (`<ti-3>`, `<ti-3>_1`, ...; the tokenizers
match added tokens anywhere in the text, so the file's own stem would also match inside longer words), and only
a whole word equal to the stem is replaced by them, so A1111's weighting around the word, `(bad-hands:1.2)`,
weights the embedding's tokens. A job with `embeddings: false` leaves every word as text.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdxl_worker.contract.job_schema import MAX_PROMPT_CHARS
from sdxl_worker.embeddings.files import EmbeddingFile, EmbeddingFileError, EmbeddingSettings, inspect, names
from sdxl_worker.logs import libraries_quiet
from sdxl_worker.loras.files import confined, signature_of
from sdxl_worker.sentences import bounded
from sdxl_worker.weights.finite import first_non_finite
from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError
from sdxl_worker.weights.safetensors_io import read_tensors

# The start of a placeholder, in any case. The tokenizers match added tokens anywhere in a text, so a prompt that
# spelled one would reach a loaded embedding's vectors, even with `embeddings: false`. A space after the "<" breaks
# that match and changes no CLIP token: CLIP splits "<" from the letters after it either way.
PLACEHOLDER_START = re.compile(r"<(?=ti-\d)", re.IGNORECASE)
# A word as an embedding's name may be one (LoRA names' characters): dots only inside, so "grain." is "grain".
WORD = re.compile(r"(?<![A-Za-z0-9_.-])[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*(?![A-Za-z0-9_-]|\.[A-Za-z0-9_-])")
# A folder's modification time moves in ticks (a few milliseconds on a local disk, a second or two on some network
# filesystems): a file added in the tick after a listing leaves the time where it was. A listing is trusted only
# once taken this long after its modification time was first seen, when no later change can share that tick.
STAMP_TICK_S = 2.0


@dataclass
class Listing:
    stamp: int  # the folder's modification time, ns
    first_seen: float  # time.monotonic() when that stamp was first seen
    names: set[str]
    settled: bool  # taken STAMP_TICK_S or more after first_seen


@dataclass
class LoadedEmbedding:
    file: EmbeddingFile
    token: str  # the first placeholder; the others are token_1, token_2, ... (diffusers' multi-vector names)

    @property
    def tokens(self) -> list[str]:
        return [self.token] + [f"{self.token}_{i}" for i in range(1, self.file.vectors)]

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


@dataclass(frozen=True)
class PromptTexts:
    """A job's prompts with each embedding's word replaced by its tokens, and the embeddings used, by name."""

    prompt: str
    negative_prompt: str | None
    used: tuple[str, ...]


class PromptEmbeddings:
    """The embeddings a worker has loaded into its text encoders, applied to each job's prompts (`substitute`)."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        self.settings = settings
        self.folder = Path(settings.embeddings_dir)
        self.loaded: OrderedDict[str, LoadedEmbedding] = OrderedDict()  # least recently used first
        self._ids = itertools.count()
        self._listing: Listing | None = None

    def substitute(self, pipe: Any, prompt: str, negative_prompt: str | None, enabled: bool = True) -> PromptTexts:
        """The prompts with every word that names an embedding in the folder replaced by its loaded tokens (none
        when not `enabled`), and no placeholder spelled by the job's own text."""
        prompt = PLACEHOLDER_START.sub("< ", prompt)
        negative_prompt = None if negative_prompt is None else PLACEHOLDER_START.sub("< ", negative_prompt)
        available = self._names() if enabled else set()
        texts = [text for text in (prompt, negative_prompt) if text is not None]
        used = sorted({word.group(0) for text in texts for word in WORD.finditer(text)} & available)
        if not used:
            return PromptTexts(prompt, negative_prompt, ())
        limit = self.settings.embeddings_max_per_job
        if len(used) > limit:
            listed = ", ".join(used[:5]) + (f" and {len(used) - 5} more" if len(used) > 5 else "")
            raise EmbeddingFileError(f"The prompts use {len(used)} embeddings ({listed}), over this endpoint's limit "
                                     f"of {limit} per job (EMBEDDINGS_MAX_PER_JOB); send embeddings: false to use "
                                     "the words as text.")
        loaded = {name: self._load(pipe, name, keep=set(used)) for name in used}

        def replaced(text: str | None) -> str | None:
            if text is None:
                return None
            return WORD.sub(lambda word: loaded[word.group(0)].text if word.group(0) in loaded else word.group(0),
                            text)

        texts = PromptTexts(replaced(prompt) or prompt, replaced(negative_prompt), tuple(used))
        for which, text in (("prompt", texts.prompt), ("negative prompt", texts.negative_prompt)):
            # A token is at least a character of plain text, so only embeddings (up to EMBEDDING_MAX_VECTORS
            # tokens a word) can take a prompt past its character cap in tokens, and the job's time with it.
            if text is not None and (count := len(pipe.tokenizer(text, add_special_tokens=False).input_ids)) > \
                    MAX_PROMPT_CHARS:
                raise EmbeddingFileError(
                    f"The {which} is {count:,} tokens with its embeddings expanded ({_vectors(loaded)}), over the "
                    f"{MAX_PROMPT_CHARS:,} a prompt may have: use them fewer times, or send embeddings: false.")
        return texts

    def _names(self) -> set[str]:
        """The folder's embedding names, listed again only when the folder changed (its modification time moves
        when a file is added, removed or renamed) or may still change within the same tick (STAMP_TICK_S): no
        listing of a network volume at every job."""
        try:
            stamp = os.stat(self.folder).st_mtime_ns
        except OSError:
            return set()
        now = time.monotonic()
        listing = self._listing
        if listing is None or listing.stamp != stamp:
            self._listing = Listing(stamp, now, set(names(self.folder)), settled=False)
        elif not listing.settled:
            self._listing = Listing(stamp, listing.first_seen, set(names(self.folder)),
                                    settled=now - listing.first_seen >= STAMP_TICK_S)
        return self._listing.names

    def _load(self, pipe: Any, name: str, keep: set[str]) -> LoadedEmbedding:
        cached = self.loaded.get(name)
        if cached is not None and cached.file.path == confined(self.folder, f"{name}.safetensors") and \
                cached.file.signature == signature_of(cached.file.path):
            self.loaded.move_to_end(name)
            return cached
        widths = (_width(pipe.text_encoder), _width(pipe.text_encoder_2))
        file = inspect(self.folder, name, widths, self.settings.embedding_max_vectors)
        if cached is not None:  # changed on the volume since it was loaded
            self._unload(pipe, self.loaded.pop(name))
        vectors = _read_finite(file)
        embedding = LoadedEmbedding(file, f"<ti-{next(self._ids)}>")
        added = []
        try:
            for part, tokenizer, encoder in zip(vectors, (pipe.tokenizer, pipe.tokenizer_2),
                                                (pipe.text_encoder, pipe.text_encoder_2), strict=True):
                with libraries_quiet():
                    pipe.load_textual_inversion(part, token=embedding.token, tokenizer=tokenizer,
                                                text_encoder=encoder)
                added.append((tokenizer, encoder))
        # What diffusers raises for a vector it cannot place: the job's answer, after removing any half-added part.
        except (ValueError, RuntimeError) as exc:
            for tokenizer, encoder in added:
                pipe.unload_textual_inversion(embedding.tokens, tokenizer=tokenizer, text_encoder=encoder)
            raise EmbeddingFileError(f"Embedding {name!r} does not fit this model: {bounded(exc, 200)}.") from exc
        self.loaded[name] = embedding
        for old in [old for old in self.loaded if old not in keep]:
            if len(self.loaded) <= self.settings.embeddings_cache:
                break
            self._unload(pipe, self.loaded.pop(old))
        return embedding

    @staticmethod
    def _unload(pipe: Any, embedding: LoadedEmbedding) -> None:
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            pipe.unload_textual_inversion(embedding.tokens, tokenizer=tokenizer, text_encoder=encoder)


def _vectors(loaded: dict[str, LoadedEmbedding]) -> str:
    return ", ".join(f"{name}: {embedding.file.vectors} tokens each" for name, embedding in sorted(loaded.items()))


def _width(encoder: Any) -> int:
    return int(encoder.get_input_embeddings().weight.shape[-1])


def _read_finite(file: EmbeddingFile) -> tuple[Any, Any]:
    """The embedding's clip_l and clip_g vectors; EmbeddingFileError if the file changed since its header was read
    or a vector is NaN or Inf."""

    try:
        tensors = dict(read_tensors(file.info, ("clip_l", "clip_g")))
    except (SafetensorsHeaderError, OSError) as exc:
        raise EmbeddingFileError(f"Embedding {file.name!r} cannot be read: {bounded(exc, 200)}.") from exc
    if first_non_finite(tensors.items()) is not None:
        raise EmbeddingFileError(f"Embedding {file.name!r} holds vectors that are not finite (NaN or Inf).")
    return tensors["clip_l"], tensors["clip_g"]
