"""Opening a file a user put on the volume: a regular file only, opened without blocking, read within a bound.

A FIFO in a config's place blocks `open()` for ever (the HEALTHCHECK hangs), and a link to /dev/zero reads without
end (a MemoryError); both are refused as an OSError saying what the path is, which every caller already reports as
a file that cannot be read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# Larger than any JSON a pipeline holds (tokenizer.json is ~2 MB, a shard index ~0.1 MB).
MAX_TEXT_BYTES = 64 * 2**20
KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def special_kind(mode: int) -> str | None:
    """What a file mode is when it is not a regular file ("a FIFO", ...); None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of `path`, which must be a regular file (links followed); OSError otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: a FIFO's open returns at once
    try:
        kind = special_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise OSError(errno.EINVAL, f"{kind}, not a file", str(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: str | os.PathLike[str], limit: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; OSError (EFBIG) for a larger one."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"over {limit // 2**20} MB, larger than any config", str(path))
    return data


def read_text_bounded(path: str | os.PathLike[str], limit: int = MAX_TEXT_BYTES) -> str:
    """`read_bounded` decoded as UTF-8 (UnicodeDecodeError, a ValueError, if it is not)."""
    return read_bounded(path, limit).decode("utf-8")


def present(path: Path) -> bool:
    """Something is at `path` (a file, a FIFO, a broken link...): "missing" is said only when nothing is."""
    return os.path.lexists(path)
