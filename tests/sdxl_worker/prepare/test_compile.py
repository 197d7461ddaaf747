"""`prepare_volume.py compile`'s refusals: a bad size or a folder that is not a model is one sentence, exit 2, and
nothing written (its packages themselves: tests/sdxl_worker/speed/test_aot.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

import prepare_volume
from sdxl_worker.prepare.compile import parse_shapes
from sdxl_worker.speed.aot import Shape


def test_sizes_are_read_as_width_by_height_and_a_bad_one_is_named() -> None:
    assert parse_shapes("1024x1024, 832x1216") == [Shape(2, 128, 128), Shape(2, 152, 104)]
    for bad in ("1024", "1020x1024", "128x128", "wide"):
        with pytest.raises(ValueError, match="is not a size WxH with sides of 256-4096 pixels, multiples of 8"):
            parse_shapes(f"1024x1024,{bad}")


def test_a_bad_size_or_a_folder_without_a_model_writes_nothing(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        prepare_volume.main(["compile", str(tmp_path), "--shapes", "1020x1020", "--device", "cpu"])
    assert exited.value.code == 2 and "--shapes: '1020x1020' is not a size WxH" in capsys.readouterr().err
    assert prepare_volume.main(["compile", str(tmp_path), "--shapes", "256x256", "--device", "cpu"]) == 2
    assert f"{tmp_path} is not a model folder the worker can load" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
