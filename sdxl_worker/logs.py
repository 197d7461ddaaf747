"""The worker's log: one stream, and no job's text in it beyond a 40-character prompt prefix.

Prompts are users' data. The worker's own lines quote only the first 40 characters of a prompt, but libraries
log what they like: diffusers quotes the part of a long prompt CLIP cut off, twice per job. So every record
goes through one handler on stdout, the libraries' own handlers included (they are routed to it), and while a
job runs, a record from outside the worker that quotes its input is withheld: shown only at DEBUG, and then
only as a notice that it was.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import sys
from collections.abc import Iterator
from typing import TextIO

PROMPT_LOG_CHARS = 40
WORKER_LOGGERS = ("worker", "model_loader", "volume_check", "sdxl_worker")
# Words shorter than this are too common to say that a message quotes a job ("with", "and" are 4 and 3).
MIN_WORD = 5

_job_words: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("job_words", default=frozenset())


class _WorkerHandler(logging.StreamHandler):
    """The worker's own stdout handler (a type of its own, so a second configuration replaces it, not others)."""


# Notices libraries log while being imported, about parts the worker does not use: torchao's kernels and its
# enum registrations (imported by diffusers and transformers whenever torchao is installed, used only by
# QUANTIZE=fp8), and the image processors' torchvision backend (SDXL's pipeline module names one it never uses).
TORCHAO_LOGGERS = ("torchao", "torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer")
UNUSED_PARTS_LOGGERS = ("transformers.utils.import_utils",)


def configure_logging(level: str, torchao_notices: bool = False, stream: TextIO | None = None) -> None:
    """Log to stdout (or `stream`) at `level`, warnings included, through the filter that withholds job text; import
    notices about unused parts only at DEBUG (torchao's kept when `torchao_notices`: QUANTIZE=fp8 uses it)."""
    handler = _WorkerHandler(sys.stdout if stream is None else stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(WithholdJobText())
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _WorkerHandler)] + [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    if level != "DEBUG":
        for name in UNUSED_PARTS_LOGGERS + (() if torchao_notices else TORCHAO_LOGGERS):
            logging.getLogger(name).setLevel(logging.ERROR)


def route_library_logs() -> None:
    """diffusers and transformers log through handlers of their own that bypass the root's filter: use the root's.
    (Call once they are imported: each installs its handler at import.)"""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.disable_default_handler()
        library.utils.logging.enable_propagation()


@contextlib.contextmanager
def job_text(*texts: str | None) -> Iterator[None]:
    """While a job runs: the words of its input that no log line may quote (all but the logged prefix)."""
    prompt, *others = texts
    quoted = (prompt or "")[PROMPT_LOG_CHARS:], *(text or "" for text in others)
    words = frozenset(w.lower() for text in quoted for w in re.findall(r"\w+", text) if len(w) >= MIN_WORD)
    token = _job_words.set(words)
    try:
        yield
    finally:
        _job_words.reset(token)


class WithholdJobText(logging.Filter):
    """Drops a library's record that quotes the running job's input (a notice instead, at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        words = _job_words.get()
        if not words or record.name.split(".")[0] in WORKER_LOGGERS:
            return True
        try:
            text = record.getMessage().lower()
        except (TypeError, ValueError):  # a library's own formatting bug: judge the template alone
            text = str(record.msg).lower()
        if not any(word in text for word in words):
            return True
        record.msg, record.args = f"a {record.levelname} record quoting the job's input was withheld", ()
        record.exc_info = record.exc_text = record.stack_info = None
        return logging.getLogger().isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def libraries_quiet() -> Iterator[None]:
    """Without what the libraries print when an adapter or embedding is loaded into a model: transformers 5 reports
    the base weights as missing from a LoRA's state dict and notes how it initialises the rows of resized token
    embeddings (diffusers overwrites them at once), PEFT lists other adapters' keys as missing (checked: every LoRA
    tensor loads), and diffusers logs a refused adapter's whole error as ERROR before raising it (tens of thousands
    of characters; the job's answer is the first line of it)."""
    import warnings

    import diffusers
    import transformers

    levels = transformers.utils.logging.get_verbosity(), diffusers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity(logging.CRITICAL)
    diffusers.utils.logging.set_verbosity(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        transformers.utils.logging.set_verbosity(levels[0])
        diffusers.utils.logging.set_verbosity(levels[1])
