"""One bounded sentence from whatever a file, a library or an exception says: whitespace collapsed, then cut with
an ellipsis, so a refusal or a log line never carries a library's page of text."""

from __future__ import annotations


def bounded(value: object, limit: int = 80) -> str:
    """`value` as one line of at most `limit` characters."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException, limit: int = 300) -> str:
    """`Type: message`, the message bounded: what went wrong, in a reply or a refusal."""
    text = bounded(exc, limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
