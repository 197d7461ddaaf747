"""LoRA files: names resolved inside the LoRA folder only, every unusable file one sentence, formats told apart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dev.lora import write_lora
from sdxl_worker.loras.files import LoraFileError, available, inspect, resolve, scan

MB = 1_000_000


@pytest.fixture
def loras(tiny_volume_source: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "loras"
    write_lora(tiny_volume_source, folder / "photonic-style.safetensors")
    write_lora(tiny_volume_source, folder / "kohya.v2.safetensors", fmt="kohya", rank=8)
    write_lora(tiny_volume_source, folder / "unet-only.safetensors", parts=("unet",))
    (folder / ".hidden.safetensors").write_bytes(b"x")
    (folder / "notes.txt").write_text("not a LoRA")
    return folder


def test_the_folder_lists_visible_safetensors_stems(loras: Path, tmp_path: Path) -> None:
    assert available(loras) == ["kohya.v2", "photonic-style", "unet-only"]
    assert available(tmp_path / "missing") == []


def test_formats_parts_and_rank_come_from_the_header(loras: Path) -> None:
    style = inspect("photonic-style", resolve(loras, "photonic-style"), 10 * MB)
    kohya = inspect("kohya.v2", resolve(loras, "kohya.v2"), 10 * MB)
    unet_only = inspect("unet-only", resolve(loras, "unet-only"), 10 * MB)
    assert (style.format, style.parts, style.rank) == ("diffusers", ("unet", "text_encoder", "text_encoder_2"), 4)
    assert (kohya.format, kohya.parts, kohya.rank) == ("kohya", ("unet", "text_encoder", "text_encoder_2"), 8)
    assert unet_only.parts == ("unet",)


def test_an_unknown_name_lists_the_available_ones_and_suggests_the_closest(loras: Path, tmp_path: Path) -> None:
    with pytest.raises(LoraFileError) as error:
        resolve(loras, "photonic-stlye")
    assert str(error.value) == ("LoRA 'photonic-stlye' not found. Did you mean 'photonic-style'? Available: kohya.v2, "
                                "photonic-style, unet-only.")
    with pytest.raises(LoraFileError, match=r"^LoRA 'x' not found: the LoRA folder .*/missing does not exist "
                                            r"\(LORA_DIR"):
        resolve(tmp_path / "missing", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LoraFileError, match=r"^LoRA 'x' not found: the LoRA folder .* holds no .safetensors files "
                                            r"\(LORA_DIR\)\.$"):
        resolve(tmp_path / "empty", "x")


def test_a_symlink_out_of_the_folder_is_refused_one_inside_is_followed(loras: Path, tiny_volume_source: Path) -> None:
    (loras / "escape.safetensors").symlink_to(tiny_volume_source / "unet" / "diffusion_pytorch_model.safetensors")
    (loras / "alias.safetensors").symlink_to(loras / "photonic-style.safetensors")
    with pytest.raises(LoraFileError, match=r"^LoRA 'escape' links outside the LoRA folder; only files inside"):
        resolve(loras, "escape")
    assert resolve(loras, "alias") == (loras / "photonic-style.safetensors").resolve()


@pytest.mark.parametrize(("make", "reason"), [
    (lambda p: p.write_bytes(b"not safetensors at all"), r"is not a readable safetensors file: header length field"),
    (lambda p: p.write_bytes((p.parent / "photonic-style.safetensors").read_bytes()[:-100]),
     r"is not a readable safetensors file: truncated: header declares"),
    (lambda p: os.link(p.parent.parent / "unet.safetensors", p), r"is not a LoRA: none of its \d+ tensor names is"),
    (lambda p: _save(p, {"lora_unet_x.hada_w1_a": 1, "lora_unet_x.hada_w1_b": 1}), r"is a LyCORIS \(LoHa/LoKr/OFT\)"),
    (lambda p: _recast(p, "int64"), r"holds I64 tensors \(e\.g\. '.+'\); a LoRA's weights are floating point\.$"),
    (lambda p: _recast(p, "bool"), r"holds BOOL tensors"),
])
def test_each_unusable_file_is_one_sentence(loras: Path, tiny_volume_source: Path, make, reason: str) -> None:
    os.link(tiny_volume_source / "unet" / "diffusion_pytorch_model.safetensors", loras.parent / "unet.safetensors")
    make(loras / "broken.safetensors")
    with pytest.raises(LoraFileError, match=rf"^LoRA 'broken' {reason}") as error:
        inspect("broken", resolve(loras, "broken"), 100 * MB)
    assert "\n" not in str(error.value) and len(str(error.value)) < 300


def test_a_file_over_the_cap_is_refused_before_its_header_is_read(loras: Path) -> None:
    with pytest.raises(LoraFileError, match=r"^LoRA 'photonic-style' is 0 MB, over this endpoint's limit of 0 MB "
                                            r"\(LORA_MAX_MB\)\.$"):
        inspect("photonic-style", resolve(loras, "photonic-style"), 1000)


def test_scan_separates_the_usable_from_the_broken(loras: Path) -> None:
    (loras / "broken.safetensors").write_bytes(b"\x00" * 4)
    usable, broken = scan(loras, 10 * MB)
    assert [f.name for f in usable] == ["kohya.v2", "photonic-style", "unet-only"]
    assert list(broken) == ["broken"] and broken["broken"].startswith("LoRA 'broken' is not a readable safetensors")


def _save(path: Path, shapes: dict[str, int]) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({name: torch.zeros(size) for name, size in shapes.items()}, path)


def _recast(path: Path, dtype: str) -> None:
    """The photonic-style LoRA with its weights as another dtype (the names and shapes right)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(path.parent / "photonic-style.safetensors")
    save_file({name: tensor.to(getattr(torch, dtype)) for name, tensor in tensors.items()}, path)
