"""Read weight files ahead of the loader so disk time and deserialisation overlap.

A network volume reads at a few hundred MB/s, so a cold start is mostly waiting for bytes. Loading
the components in parallel threads would overlap them, but diffusers, accelerate and transformers
patch module-level functions (`nn.Module.register_parameter`, `torch.nn.init.*`) while they build a
model, and concurrent loads race on those patches. So components load one after another and these
readers stream the same files, in the same order, into the page cache: safetensors' memory maps then
find the bytes already there. Several readers work on consecutive chunks at once, because one
sequential reader leaves a network or NVMe volume's parallelism unused and lets the loader catch up
with it, after which the loader's own page faults read in small, slow pieces.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

CHUNK_BYTES = 64 * 1024 * 1024  # the unit readers share out
READ_BYTES = 16 * 1024 * 1024  # one pread into a reader's buffer
DEFAULT_READERS = 4


class Prefetcher:
    """Context manager: starts reading `paths` in order on enter, stops and joins on exit."""

    def __init__(self, paths: Iterable[Path], readers: int = DEFAULT_READERS, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.chunks = [
            (path, offset, min(chunk_bytes, size - offset))
            for path in paths
            for size in [_size(path)]
            for offset in range(0, size, chunk_bytes)
        ]
        self.bytes_read = 0
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"weight-prefetch-{n}", daemon=True) for n in range(readers)
        ]

    def __enter__(self) -> Prefetcher:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def wait(self) -> None:
        """Block until every chunk has been read (the benchmark's parallel raw read)."""
        for thread in self._threads:
            thread.join()

    def _take(self) -> tuple[Path, int, int] | None:
        with self._lock:
            if self._stop.is_set() or self._next >= len(self.chunks):
                return None
            chunk = self.chunks[self._next]
            self._next += 1
            return chunk

    def _run(self) -> None:
        buffer = bytearray(READ_BYTES)
        view = memoryview(buffer)
        while (chunk := self._take()) is not None:
            path, offset, length = chunk
            # A file that vanished or shrank is the loader's to report, with its own error.
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                done = 0
                while done < length and not self._stop.is_set():
                    n = os.preadv(fd, [view[: min(len(view), length - done)]], offset + done)
                    if n <= 0:
                        break
                    done += n
            finally:
                os.close(fd)
            with self._lock:
                self.bytes_read += done


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
