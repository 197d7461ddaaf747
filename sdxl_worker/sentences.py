"""One bounded sentence from whatever a file, a library or an exception says: whitespace collapsed, then cut with
an ellipsis, so a refusal or a log line never carries a library's page of text."""

from __future__ import annotations

import difflib
import sys

NAMES_LISTED = 10  # names a refusal of an unknown name lists; the rest are counted


def bounded(value: object, limit: int = 80) -> str:
    """`value` as one line of at most `limit` characters."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException, limit: int = 300) -> str:
    """`Type: message`, the message bounded: what went wrong, in a reply or a refusal."""
    text = bounded(exc, limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def alternatives(name: str, names: list[str]) -> str:
    """What a refusal of an unknown `name` offers instead: ` Did you mean 'x'? Available: a, b and 3 more.`"""
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    more = f" and {len(names) - NAMES_LISTED} more" if len(names) > NAMES_LISTED else ""
    return f"{hint} Available: {', '.join(names[:NAMES_LISTED])}{more}."


def without_packages(missing: ModuleNotFoundError, command: str) -> str:
    """The one line for an entrypoint started by a Python that lacks the worker's packages (a pod's system Python)."""
    return (f"❌ {command} needs the worker's packages, and {missing.name or missing} is not installed for "
            f"{sys.executable}: run it with .venv/bin/python (bash scripts/setup_venv.sh makes .venv) or inside the "
            "worker's image, whose python has them")
