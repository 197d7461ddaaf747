"""Read weight files ahead of the loader so disk time and deserialisation overlap.

A network volume reads at a few hundred MB/s, so a cold start is mostly waiting for bytes. Loading
the components in parallel threads would overlap them, but diffusers, accelerate and transformers
patch module-level functions (`nn.Module.register_parameter`, `torch.nn.init.*`) while they build a
model, and concurrent loads race on those patches. So components load one after another and this
reader streams the same files, in the same order, into the page cache from a background thread:
safetensors' memory maps then find the bytes already there.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

CHUNK_BYTES = 16 * 1024 * 1024


class Prefetcher:
    """Context manager: starts reading `paths` in order on enter, stops and joins on exit."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = list(paths)
        self.bytes_read = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weight-prefetch", daemon=True)

    def __enter__(self) -> Prefetcher:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        buffer = bytearray(CHUNK_BYTES)
        view = memoryview(buffer)
        for path in self.paths:
            # A file that vanished is the loader's to report, with its own error; the reader just stops.
            try:
                handle = path.open("rb", buffering=0)
            except OSError:
                return
            with handle:
                while not self._stop.is_set():
                    n = handle.readinto(view)
                    if not n:
                        break
                    self.bytes_read += n
            if self._stop.is_set():
                return
