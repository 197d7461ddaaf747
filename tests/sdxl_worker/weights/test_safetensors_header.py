"""Header-only validation of safetensors files, against files written by the safetensors library."""

from __future__ import annotations

import errno
import json
import os
import re
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


def _raw_file(tmp_path: Path, entries: dict, data_bytes: int) -> Path:
    header = json.dumps(entries).encode()
    path = tmp_path / "raw.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * data_bytes)
    return path


@pytest.mark.parametrize(("entries", "words"), [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, "tensor 'b' at data_offsets [4, 12] overlaps"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, "leaves a gap at byte 0"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [False, True]}}, "invalid data_offsets [False, True]"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8.0]}}, "invalid data_offsets [0.0, 8.0]"),
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, "invalid shape [True]"),
    ({"__metadata__": {"format": 1}, "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
     "__metadata__ is not an object of strings"),
])
def test_offsets_the_loader_would_refuse(tmp_path: Path, entries: dict, words: str) -> None:
    """The safetensors library requires tensors to tile the data exactly, with integer offsets."""
    with pytest.raises(SafetensorsHeaderError, match=re.escape(words)):
        read_safetensors_header(_raw_file(tmp_path, entries, 16))


def test_header_json_that_python_cannot_parse(tmp_path: Path) -> None:
    for text, words in (('{"a": ' + "9" * 5000 + "}", "not valid JSON"), ("[" * 100_000 + "]" * 100_000,
                                                                            "not valid JSON (maximum recursion")):
        header = text.encode()
        path = tmp_path / "deep.safetensors"
        path.write_bytes(struct.pack("<Q", len(header)) + header)
        with pytest.raises(SafetensorsHeaderError, match=re.escape(words)):
            read_safetensors_header(path)


def test_unreadable_file_is_a_header_error(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def io_error(path: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(os, "open", io_error)
    with pytest.raises(SafetensorsHeaderError, match=r"w\.safetensors: cannot be read \(Input/output error\)"):
        read_safetensors_header(good)


def test_shapes_are_read_from_the_header(good: Path) -> None:
    assert read_safetensors_header(good).shapes == {"a": (3, 4), "b": (5,)}
