"""Header-only validation of safetensors files, against files written by the safetensors library."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, read_safetensors_header


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(3, 4, dtype=torch.float16), "b": torch.ones(5)}, path, metadata={"format": "pt"})
    return path


def test_valid_file(good: Path) -> None:
    info = read_safetensors_header(good)
    assert (info.tensor_count, info.parameter_count, info.dtypes) == (2, 17, frozenset({"F16", "F32"}))
    assert info.file_bytes == good.stat().st_size


def test_trailing_bytes(good: Path) -> None:
    good.write_bytes(good.read_bytes() + b"\0" * 10)
    with pytest.raises(SafetensorsHeaderError, match="10 unexpected bytes after"):
        read_safetensors_header(good)


def test_header_length_beyond_file(good: Path) -> None:
    data = bytearray(good.read_bytes())
    data[:8] = struct.pack("<Q", 10**9)
    good.write_bytes(bytes(data))
    with pytest.raises(SafetensorsHeaderError, match="header length field says 1000000000 bytes"):
        read_safetensors_header(good)


def test_inconsistent_entry(tmp_path: Path) -> None:
    header = json.dumps({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(SafetensorsHeaderError, match="spans 4 bytes but its dtype and shape need 8"):
        read_safetensors_header(path)


def test_too_short(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(SafetensorsHeaderError, match="too short"):
        read_safetensors_header(path)
