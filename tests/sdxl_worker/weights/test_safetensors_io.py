"""Streamed safetensors files: the bytes save_file writes, tensors read back as written, nothing left on failure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, read_safetensors_header
from sdxl_worker.weights.safetensors_io import (
    SAFETENSORS_DTYPES,
    TensorSpec,
    leftovers,
    partial_path,
    read_tensors,
    write_safetensors,
)


def _mixed() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"b.weight": torch.randn(3, 5).half(), "a.weight": torch.randn(4, 4), "ids": torch.arange(7),
            "mask": torch.tensor([True, False]), "z": torch.randn(2).bfloat16(), "scalar": torch.tensor(2.5),
            "empty": torch.empty(0, 3)}


def _specs(tensors: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [TensorSpec(n, SAFETENSORS_DTYPES[str(t.dtype).removeprefix("torch.")], tuple(t.shape))
            for n, t in tensors.items()]


def test_written_file_is_byte_for_byte_what_save_file_writes(tmp_path: Path) -> None:
    """Same header, order and padding as the safetensors library, whatever order the tensors arrive in."""
    tensors = _mixed()
    save_file(tensors, tmp_path / "library.safetensors", metadata={"format": "pt"})
    streamed = tmp_path / "streamed.safetensors"
    counted: list[int] = []
    size = write_safetensors(streamed, _specs(tensors), reversed(list(tensors.items())), {"format": "pt"},
                             counted.append)
    assert streamed.read_bytes() == (tmp_path / "library.safetensors").read_bytes()
    assert size == sum(counted) == streamed.stat().st_size


def test_tensors_read_back_equal_those_written(tmp_path: Path) -> None:
    tensors = _mixed()
    save_file(tensors, tmp_path / "file.safetensors", metadata={"format": "pt"})
    info = read_safetensors_header(tmp_path / "file.safetensors")
    read = dict(read_tensors(info))
    assert read.keys() == tensors.keys() and info.metadata == {"format": "pt"}
    assert all(torch.equal(read[n], t) and read[n].dtype == t.dtype for n, t in tensors.items())
    assert set(dict(read_tensors(info, ["ids"]))) == {"ids"}


def test_a_file_that_shrinks_while_read_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "file.safetensors"
    save_file({"a": torch.zeros(1000)}, path)
    info = read_safetensors_header(path)
    with path.open("r+b") as handle:
        handle.truncate(info.file_bytes - 100)
    with pytest.raises(SafetensorsHeaderError, match="shorter than its header"):
        list(read_tensors(info))


@pytest.mark.parametrize("problem", ["wrong shape", "missing tensor", "disk full"])
def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path: Path, problem: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tensors = {"a": torch.zeros(4), "b": torch.ones(2, 2)}
    final = tmp_path / "out.safetensors"
    stream = list(tensors.items())
    if problem == "wrong shape":
        stream[1] = ("b", torch.ones(4))
    elif problem == "missing tensor":
        stream = stream[:1]
    else:
        def full(*_: object) -> int:
            raise OSError(28, "No space left on device")
        monkeypatch.setattr("os.pwrite", full)
    with pytest.raises((ValueError, OSError)):
        write_safetensors(final, _specs(tensors), stream)
    assert not final.exists() and not partial_path(final).exists() and not leftovers(tmp_path)


def test_a_write_replaces_the_old_file_only_when_complete(tmp_path: Path) -> None:
    final = tmp_path / "out.safetensors"
    save_file({"a": torch.zeros(4)}, final)
    before = final.read_bytes()
    with pytest.raises(ValueError):
        write_safetensors(final, _specs({"a": torch.ones(4)}), [("a", torch.ones(5))])
    assert final.read_bytes() == before
    write_safetensors(final, _specs({"a": torch.ones(4)}), [("a", torch.ones(4))])
    assert torch.equal(load_file(final)["a"], torch.ones(4))
