"""Validate a safetensors file from its header alone.

The volume check must say in seconds whether ~7-14 GB of weights are intact, so it cannot read the
tensors. The safetensors format makes that possible: an 8-byte little-endian header length, a JSON
header giving every tensor's dtype, shape and byte range, then the data. A file whose header is
valid and whose declared data size equals the bytes that follow is complete; a copy cut short by a
full disk or an interrupted upload is not. The `safetensors` package offers no header-only check
that reports the declared and actual sizes, so the few rules of the format are applied here, in
pure Python, without importing torch.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from sdxl_worker.sentences import bounded
from sdxl_worker.weights.files import open_regular

# Bytes per element for every dtype the safetensors format defines.
DTYPE_SIZES: dict[str, float] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "F4": 0.5,
    "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}

# The reference implementation refuses headers above 100 MB; a real SDXL header is ~100 KB.
MAX_HEADER_BYTES = 100_000_000


class SafetensorsHeaderError(ValueError):
    """The file is not a complete, well-formed safetensors file; the message says how."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's record in the header: its bytes lie at [begin, end) after the header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsInfo:
    """What a valid header declares: enough to size a load, compare it with a model, or read it tensor by tensor."""

    path: Path
    file_bytes: int
    parameter_count: int
    dtypes: frozenset[str]
    # Where the data starts (8 + the header's length), the header's own metadata, and each tensor's record.
    data_start: int
    metadata: dict[str, str] | None
    entries: dict[str, TensorEntry] = field(repr=False)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: entry.shape for name, entry in self.entries.items()}

    @property
    def tensor_names(self) -> frozenset[str]:
        return frozenset(self.entries)

    @property
    def tensor_count(self) -> int:
        return len(self.entries)


def _read_exactly(handle: BinaryIO, size: int) -> bytes:
    """`size` bytes, or fewer only at the end of the file (a raw read may return less than asked)."""
    parts, got = [], 0
    while got < size:
        part = handle.read(size - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def read_safetensors_header(path: Path) -> SafetensorsInfo:
    """Parse and validate the header of `path`; raise SafetensorsHeaderError if it is broken or unreadable."""
    path = Path(path)
    try:
        # Unbuffered, no readahead: on a network volume, data read past the header here would cross the network
        # again when the loader reads it (FUSE drops a file's pages when it is opened again).
        with os.fdopen(open_regular(path), "rb", buffering=0) as handle:
            file_bytes = os.fstat(handle.fileno()).st_size
            if file_bytes < 8:
                raise SafetensorsHeaderError(f"{path}: {file_bytes} bytes, too short to hold a safetensors header")
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
            head = _read_exactly(handle, 8)
            if len(head) < 8:  # cut since the stat above
                raise SafetensorsHeaderError(f"{path}: {len(head)} bytes, too short to hold a safetensors header")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER_BYTES or header_len > file_bytes - 8:
                raise SafetensorsHeaderError(
                    f"{path}: header length field says {header_len} bytes but the file holds {file_bytes} "
                    "(not a safetensors file, or truncated inside its header)"
                )
            raw = _read_exactly(handle, header_len)
    except OSError as exc:  # a network volume's I/O error, a permission: the file is unusable, and says why
        raise SafetensorsHeaderError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    # ValueError covers invalid JSON and UTF-8, and integers too long to convert; RecursionError, nesting.
    except (ValueError, RecursionError) as exc:
        raise SafetensorsHeaderError(f"{path}: header is not valid JSON ({bounded(exc)})") from exc
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(f"{path}: header is not a JSON object")

    parameters = 0
    dtypes: set[str] = set()
    spans: list[tuple[int, int, str]] = []
    entries: dict[str, TensorEntry] = {}
    metadata = header.get("__metadata__")
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise SafetensorsHeaderError(f"{path}: __metadata__ is not an object of strings")
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        nbytes, count = _entry_size(path, name, entry)
        begin, end = entry["data_offsets"]
        if end - begin != nbytes:
            raise SafetensorsHeaderError(
                f"{path}: tensor {name!r} spans {end - begin} bytes but its dtype and shape need {nbytes}"
            )
        spans.append((begin, end, name))
        parameters += count
        dtypes.add(entry["dtype"])
        entries[name] = TensorEntry(entry["dtype"], tuple(entry["shape"]), begin, end)
    data_end = _check_contiguous(path, spans)

    data_bytes = file_bytes - 8 - header_len
    if data_bytes < data_end:
        raise SafetensorsHeaderError(
            f"{path}: truncated: header declares {data_end:,} data bytes, file holds {data_bytes:,}"
        )
    if data_bytes > data_end:
        raise SafetensorsHeaderError(
            f"{path}: {data_bytes - data_end:,} unexpected bytes after the {data_end:,} data bytes the header declares"
        )
    return SafetensorsInfo(path, file_bytes, parameters, frozenset(dtypes), 8 + header_len, metadata, entries)


def _check_contiguous(path: Path, spans: list[tuple[int, int, str]]) -> int:
    """The tensors must tile the data from 0 without gap or overlap, as the safetensors library requires;
    return where they end."""
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            where = "overlaps the tensor before it" if begin < position else f"leaves a gap at byte {position:,}"
            raise SafetensorsHeaderError(f"{path}: tensor {name!r} at data_offsets [{begin}, {end}] {where}")
        position = end
    return position


def _entry_size(path: Path, name: str, entry: object) -> tuple[int, int]:
    """Return (bytes, elements) of one header entry after checking its fields' types."""
    if not isinstance(entry, dict):
        raise SafetensorsHeaderError(f"{path}: tensor {bounded(name)!r} has no dtype/shape/data_offsets record")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise SafetensorsHeaderError(f"{path}: tensor {bounded(name)!r} has unknown dtype {bounded(dtype)!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise SafetensorsHeaderError(f"{path}: tensor {bounded(name)!r} has an invalid shape {bounded(shape)}")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) \
            or offsets[0] > offsets[1]:
        raise SafetensorsHeaderError(f"{path}: tensor {bounded(name)!r} has invalid data_offsets {bounded(offsets)}")
    count = math.prod(shape)
    return math.ceil(count * DTYPE_SIZES[dtype]), count


def _is_count(value: object) -> bool:
    """A whole number >= 0; JSON's true and false are not (Python counts them as integers)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


