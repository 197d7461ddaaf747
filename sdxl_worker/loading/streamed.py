"""Read a model's weight files once, in large requests from parallel streams, into its tensors on the device.

A network volume serves one stream at a fraction of its aggregate bandwidth, charges a round trip per request,
and, mounted through FUSE with default caching, drops a file's pages when it is opened again: the library loader
(memory maps, plus readers warming the page cache ahead of them) then reads every byte twice, or in small faults
(benchmarks/RESULTS.md). Here each file's data is read exactly once with plain `pread`s of CHUNK_BYTES, several
streams at a time, into one host buffer per file; each tensor is taken from the buffer as soon as its bytes are in,
cast if the plan says so (on the host: no float32 copy on the GPU), and moved to the device while the streams
read on. On the CPU the tensors stay views of the buffer (no memory map, so a file changed under the worker
cannot SIGBUS it, and no second copy).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, SafetensorsInfo
from sdxl_worker.weights.safetensors_io import TORCH_DTYPES, pread_fully

CHUNK_BYTES = 16 * 1024 * 1024  # one request to the volume
DEFAULT_STREAMS = 16  # the fastest in every cell of the simulated network grid (benchmarks/RESULTS.md)


class StreamedFiles:
    """Parallel readers filling one host buffer per file, front to back; `tensors()` yields as bytes arrive."""

    def __init__(self, infos: list[SafetensorsInfo], streams: int = DEFAULT_STREAMS,
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        import torch

        self.infos = infos
        self.buffers = [torch.empty(info.file_bytes - info.data_start, dtype=torch.uint8) for info in infos]
        self.chunk_bytes = chunk_bytes
        self.chunks = [(index, offset, min(chunk_bytes, len(buffer) - offset))
                       for index, buffer in enumerate(self.buffers) for offset in range(0, len(buffer), chunk_bytes)]
        self.first_chunk = [sum(1 for i, _, _ in self.chunks if i < index) for index in range(len(infos))]
        self.done = [False] * len(self.chunks)
        self.ready = 0  # chunks complete from the first on
        self.bytes_read = 0
        self.error: BaseException | None = None
        self.next = 0
        self.condition = threading.Condition()
        self.fds: list[list[int]] = []
        self.threads = [threading.Thread(target=self._run, args=(n,), name=f"weight-stream-{n}", daemon=True)
                        for n in range(max(1, min(streams, len(self.chunks))))]

    def __enter__(self) -> StreamedFiles:
        # Every stream its own descriptor of every file: a network filesystem moves one stream at a fraction of its
        # bandwidth. All are opened before the first read, since FUSE drops a file's cached pages at every open.
        # No readahead: the requests are large, and pages read ahead past a chunk would be read again by the next.
        try:
            for _ in self.threads:
                self.fds.append([])
                for info in self.infos:
                    self.fds[-1].append(_open_unchanged(info))
        except BaseException:
            self._close()
            raise
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self.condition:
            self.next = len(self.chunks)  # the readers take nothing more
            self.condition.notify_all()
        for thread in self.threads:
            thread.join()
        self._close()

    def _close(self) -> None:
        for fds in self.fds:
            for fd in fds:
                os.close(fd)
        self.fds = []

    def _run(self, stream: int) -> None:
        index = 0
        try:
            while True:
                with self.condition:
                    if self.next >= len(self.chunks) or self.error is not None:
                        return
                    n = self.next
                    self.next += 1
                index, offset, size = self.chunks[n]
                info = self.infos[index]
                view = memoryview(self.buffers[index].numpy())[offset:offset + size]
                pread_fully(self.fds[stream][index], view, info.data_start + offset, info.path)
                with self.condition:
                    self.bytes_read += size
                    self.done[n] = True
                    while self.ready < len(self.done) and self.done[self.ready]:
                        self.ready += 1
                    self.condition.notify_all()
        except BaseException as exc:  # handed to the loading thread, which raises it with the file's name
            with self.condition:
                self.error = exc if isinstance(exc, SafetensorsHeaderError) else SafetensorsHeaderError(
                    f"{self.infos[index].path}: cannot be read ({getattr(exc, 'strerror', None) or exc})")
                self.condition.notify_all()

    def _wait(self, index: int, end: int) -> None:
        """Until file `index` is read up to byte `end` of its data."""
        if end == 0:
            return
        target = self.first_chunk[index] + max(end - 1, 0) // self.chunk_bytes
        with self.condition:
            while self.ready <= target and self.error is None:
                self.condition.wait()
            if self.error is not None:
                raise self.error

    def tensors(self) -> Iterator[tuple[str, Any]]:
        """(name, tensor viewing the host buffer) for every tensor, in file and data order."""
        import torch

        for index, info in enumerate(self.infos):
            for name, entry in sorted(info.entries.items(), key=lambda item: item[1].begin):
                if entry.dtype not in TORCH_DTYPES:
                    raise SafetensorsHeaderError(f"{info.path}: tensor {name!r} has dtype {entry.dtype}, which torch "
                                                 "cannot hold")
                self._wait(index, entry.end)
                raw = self.buffers[index][entry.begin:entry.end]
                dtype = getattr(torch, TORCH_DTYPES[entry.dtype])
                if entry.begin % dtype.itemsize:  # safetensors writes aligned data; a hand-made file may not be
                    raw = raw.clone()
                yield name, raw.view(dtype).reshape(entry.shape)


def read_state_dict(infos: list[SafetensorsInfo], dtype: Any, device: str, streams: int = DEFAULT_STREAMS
                    ) -> dict[str, Any]:
    """Every tensor of `infos`' files, floating ones as `dtype`, on `device`: each byte read once."""
    state: dict[str, Any] = {}
    with StreamedFiles(infos, streams) as files:
        for name, tensor in files.tensors():
            if tensor.is_floating_point() and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            state[name] = tensor.to(device)
    return state


def _open_unchanged(info: SafetensorsInfo) -> int:
    """A descriptor of `info`'s file, refused if the file's size is no longer the one its header was read with."""
    try:
        fd = os.open(info.path, os.O_RDONLY)
    except OSError as exc:
        raise SafetensorsHeaderError(f"{info.path}: cannot be opened ({exc.strerror or exc})") from exc
    size = os.fstat(fd).st_size
    if size != info.file_bytes:
        os.close(fd)
        raise SafetensorsHeaderError(f"{info.path}: {size} bytes, not the {info.file_bytes} its header was read "
                                     "with (changed since the volume check)")
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return fd
