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
import struct
from dataclasses import dataclass
from pathlib import Path

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
class SafetensorsInfo:
    """What a valid header declares: enough to size a load without reading any tensor."""

    path: Path
    file_bytes: int
    tensor_count: int
    parameter_count: int
    dtypes: frozenset[str]
    tensor_names: frozenset[str]


def read_safetensors_header(path: Path) -> SafetensorsInfo:
    """Parse and validate the header of `path`; raise SafetensorsHeaderError if it is broken."""
    path = Path(path)
    file_bytes = path.stat().st_size
    if file_bytes < 8:
        raise SafetensorsHeaderError(f"{path}: {file_bytes} bytes, too short to hold a safetensors header")
    with path.open("rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len > MAX_HEADER_BYTES or header_len > file_bytes - 8:
            raise SafetensorsHeaderError(
                f"{path}: header length field says {header_len} bytes but the file holds {file_bytes} "
                "(not a safetensors file, or truncated inside its header)"
            )
        raw = handle.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsHeaderError(f"{path}: header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(f"{path}: header is not a JSON object")

    data_end = 0
    parameters = 0
    dtypes: set[str] = set()
    names: set[str] = set()
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        nbytes, count = _entry_size(path, name, entry)
        begin, end = entry["data_offsets"]
        if end - begin != nbytes:
            raise SafetensorsHeaderError(
                f"{path}: tensor {name!r} spans {end - begin} bytes but its dtype and shape need {nbytes}"
            )
        data_end = max(data_end, end)
        parameters += count
        dtypes.add(entry["dtype"])
        names.add(name)

    data_bytes = file_bytes - 8 - header_len
    if data_bytes < data_end:
        raise SafetensorsHeaderError(
            f"{path}: truncated: header declares {data_end:,} data bytes, file holds {data_bytes:,}"
        )
    if data_bytes > data_end:
        raise SafetensorsHeaderError(
            f"{path}: {data_bytes - data_end:,} unexpected bytes after the {data_end:,} data bytes the header declares"
        )
    return SafetensorsInfo(path, file_bytes, len(names), parameters, frozenset(dtypes), frozenset(names))


def _entry_size(path: Path, name: str, entry: object) -> tuple[int, int]:
    """Return (bytes, elements) of one header entry after checking its fields' types."""
    if not isinstance(entry, dict):
        raise SafetensorsHeaderError(f"{path}: tensor {name!r} has no dtype/shape/data_offsets record")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        raise SafetensorsHeaderError(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise SafetensorsHeaderError(f"{path}: tensor {name!r} has an invalid shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise SafetensorsHeaderError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    count = math.prod(shape)
    return math.ceil(count * DTYPE_SIZES[dtype]), count
