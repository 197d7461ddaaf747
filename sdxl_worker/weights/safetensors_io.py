"""Read safetensors files tensor by tensor and write them so that no reader ever sees half a file.

Preparing a volume moves gigabytes: holding a whole model in memory, as `safetensors.torch.save_file` needs, would
take the host's memory for a ~10 GB UNet, and writing in place would leave a truncated file behind a crash or a
full disk, one the worker would then find at its next start. So reads go tensor by tensor in the file's order
with plain reads (never a memory map: a network volume turns a map's page faults into small reads, and a file
cut short under a map kills the process with SIGBUS), and writes go tensor by tensor into a hidden temporary
file beside the target, which is flushed, fsynced and renamed into place only when complete.

The files written are byte for byte what `safetensors.torch.save_file` writes for the same tensors: the same
compact header (metadata first, then tensors ordered by dtype, widest first, then by name), padded with spaces
to 8 bytes, and the data in that order (tests/sdxl_worker/weights/test_safetensors_io.py compares them).
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sdxl_worker.weights.safetensors_header import DTYPE_SIZES, SafetensorsHeaderError, SafetensorsInfo, TensorEntry

# The safetensors crate's Dtype enum in declaration order; files order their data by it, last first.
DTYPE_ORDER = ("BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ",
               "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64")
TORCH_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
                "F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
SAFETENSORS_DTYPES = {torch_name: name for name, torch_name in TORCH_DTYPES.items()}
# The suffix of a file being written; a run removes those an interrupted one left (`leftovers`).
PARTIAL_SUFFIX = ".prepare-partial"
# Tensors handed to the writer thread and not yet written, and read ahead of the caller: enough to keep each
# thread busy, few enough to bound memory (for SDXL, under 1 GB in all: its largest tensor is 253 MB in float32).
WRITES_IN_FLIGHT = 2
READS_AHEAD = 2

# Counts bytes as they are written: a progress bar's update.
Progress = Callable[[int], None]


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written: its name, safetensors dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.ceil(math.prod(self.shape) * DTYPE_SIZES[self.dtype])


@dataclass(frozen=True)
class Layout:
    """A file's header bytes and where each tensor's data goes in it."""

    header: bytes
    offsets: dict[str, int]
    file_bytes: int


def layout(specs: Iterable[TensorSpec], metadata: dict[str, str] | None = None) -> Layout:
    """The header and data offsets `save_file` would give these tensors."""
    ordered = sorted(specs, key=lambda s: (-DTYPE_ORDER.index(s.dtype), s.name))
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offsets: dict[str, int] = {}
    position = 0
    for spec in ordered:
        end = position + spec.nbytes
        header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [position, end]}
        offsets[spec.name] = position
        position += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    start = 8 + len(raw)
    return Layout(struct.pack("<Q", len(raw)) + raw, {n: start + o for n, o in offsets.items()}, start + position)


def partial_path(final: Path) -> Path:
    """The hidden name a file is written under, in its own folder (a rename within one filesystem is atomic)."""
    return final.with_name(f".{final.name}{PARTIAL_SUFFIX}")


def leftovers(folder: Path) -> list[Path]:
    """Files and folders an interrupted run left under their temporary names in `folder`."""
    return sorted(folder.glob(f".*{PARTIAL_SUFFIX}")) if folder.is_dir() else []


def fsync_path(path: Path) -> None:
    """fsync a file (its data) or a folder (the renames in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(final: Path) -> Iterator[IO[bytes]]:
    """Write `final` through a hidden temporary file that is renamed into place only if the block completes;
    on any error it is removed, and `final` is as it was."""
    temporary = partial_path(final)
    done = False
    try:
        with temporary.open("wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        fsync_path(final.parent)
        done = True
    finally:
        if not done:
            temporary.unlink(missing_ok=True)


@contextmanager
def removed_on_error() -> Iterator[list[Path]]:
    """A list for the files a block writes, removed again if the block raises: a set appears whole or not at all."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def write_json(final: Path, data: object) -> None:
    """A JSON file as diffusers and transformers write an index (indent 2, sorted keys), atomically."""
    with atomic_file(final) as handle:
        handle.write((json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_safetensors(final: Path, specs: list[TensorSpec], tensors: Iterable[tuple[str, Any]],
                      metadata: dict[str, str] | None = None, progress: Progress | None = None) -> int:
    """Write `tensors` (name, torch tensor; any order, each once) as the file `specs` describe; return its size.

    One thread writes while the caller's iterator reads and casts the next tensors (both release the GIL), so a
    preparation takes about the longer of its reading and its writing, not their sum. Memory: at most
    `WRITES_IN_FLIGHT` tensors queued for writing, plus the one being made. A tensor that does not match its spec,
    one missing, or a failed write raises and leaves nothing behind.
    """
    plan = layout(specs, metadata)
    expected = {spec.name: spec for spec in specs}
    with atomic_file(final) as handle:
        handle.write(plan.header)
        handle.flush()
        if progress is not None:
            progress(len(plan.header))
        # Tensors arriving in file order append; no ftruncate to the final size first: writes into a sparse file
        # measured 2.7x slower here (ext4).
        fd = handle.fileno()
        written: set[str] = set()
        pending: deque[Future[None]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="safetensors-writer") as writer:
            for name, tensor in tensors:
                spec = expected.get(name)
                found = (SAFETENSORS_DTYPES.get(str(tensor.dtype).removeprefix("torch.")), tuple(tensor.shape))
                if spec is None or name in written or found != (spec.dtype, spec.shape):
                    raise ValueError(f"{final.name}: tensor {name!r} {found} does not match what the header declares")
                data = memoryview(tensor.contiguous().view(-1).view(_byte_dtype()).numpy())
                pending.append(writer.submit(_write_at, fd, data, plan.offsets[name], progress))
                written.add(name)
                while len(pending) > WRITES_IN_FLIGHT or (pending and pending[0].done()):
                    pending.popleft().result()  # a write's error surfaces here
            while pending:
                pending.popleft().result()
        missing = set(expected) - written
        if missing:
            raise ValueError(f"{final.name}: {len(missing)} tensor(s) never came, e.g. {min(missing)!r}")
    return plan.file_bytes


def _write_at(fd: int, data: memoryview, offset: int, progress: Progress | None) -> None:
    total = len(data)
    while data:
        count = os.pwrite(fd, data, offset)
        data, offset = data[count:], offset + count
    if progress is not None:
        progress(total)


def read_tensors(info: SafetensorsInfo, names: Iterable[str] | None = None) -> Iterator[tuple[str, Any]]:
    """Yield (name, tensor) from a checked file in its data order, with plain reads; each tensor owns its memory.

    A thread reads up to `READS_AHEAD` tensors ahead of the caller, so reading overlaps what the caller does with
    each. A file that shrank since its header was read raises SafetensorsHeaderError naming it.
    """
    import torch

    wanted = set(info.entries) if names is None else set(names)
    entries = sorted((e.begin, n, e) for n, e in info.entries.items() if n in wanted)
    for _, name, entry in entries:
        if entry.dtype not in TORCH_DTYPES:
            raise SafetensorsHeaderError(f"{info.path}: tensor {name!r} has dtype {entry.dtype}, which torch "
                                         "cannot hold")
    todo = iter(entries)
    pending: deque[tuple[str, TensorEntry, Future[Any]]] = deque()
    with info.path.open("rb", buffering=0) as handle, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="safetensors-reader") as reader:

        def read_next() -> None:
            item = next(todo, None)
            if item is not None:
                _, name, entry = item
                start = info.data_start + entry.begin
                pending.append((name, entry, reader.submit(_read_at, handle.fileno(), start, entry.end - entry.begin,
                                                           info.path)))

        for _ in range(READS_AHEAD):
            read_next()
        while pending:
            name, entry, future = pending.popleft()
            raw = future.result()
            read_next()
            yield name, raw.view(getattr(torch, TORCH_DTYPES[entry.dtype])).reshape(entry.shape)


def _read_at(fd: int, offset: int, size: int, path: Path) -> Any:
    """`size` bytes at `offset`, into a tensor of bytes (uninitialised first: a bytearray's zero-fill is a wasted
    pass over every byte)."""
    import torch

    buffer = torch.empty(size, dtype=torch.uint8)
    pread_fully(fd, memoryview(buffer.numpy()), offset, path)
    return buffer


def pread_fully(fd: int, view: memoryview, offset: int, path: Path) -> None:
    """Fill `view` from `offset` of the open file; a file that ends first was cut while being read."""
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            raise SafetensorsHeaderError(f"{path}: shorter than its header says (changed while being read)")
        done += count


def _byte_dtype() -> Any:
    import torch

    return torch.uint8
