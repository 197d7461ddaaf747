"""The synthetic volume builder: deterministic bytes, the sets asked for, shards, decoys, atomic output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dev.synthetic_volume import build_volume, component_config, main
from sdxl_worker.prepare.pipeline_files import ASSETS
from volume_check import check_volume


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: Path) -> None:
    a = build_volume(tmp_path / "a", "tiny", seed=3, extras=True)
    b = build_volume(tmp_path / "b", "tiny", seed=3, extras=True)
    c = build_volume(tmp_path / "c", "tiny", seed=4, extras=True)
    assert digest(a) == digest(b)
    differing = {k for k in digest(a) if digest(a)[k] != digest(c).get(k)}
    assert "unet/diffusion_pytorch_model.safetensors" in differing
    assert "tokenizer/vocab.json" not in differing


def test_only_the_sets_asked_for(tmp_path: Path) -> None:
    folder = build_volume(tmp_path / "v", "tiny", variants=["fp16"])
    names = {p.name for p in folder.rglob("*.safetensors")}
    assert names == {"model.fp16.safetensors", "diffusion_pytorch_model.fp16.safetensors"}
    report = check_volume(folder)
    assert report.plans["fp16"].possible and not report.plans["standard"].possible


def test_real_tokenizer_files_and_full_configs(tmp_path: Path) -> None:
    folder = build_volume(tmp_path / "v", "tiny", variants=["fp16"])
    config = json.loads((folder / "tokenizer_2" / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 77 and config["pad_token"] == "!"
    assert (folder / "tokenizer" / "vocab.json").read_bytes() == (ASSETS / "clip_tokenizer" / "vocab.json").read_bytes()
    full_unet = component_config("full", "unet")
    assert full_unet["block_out_channels"] == [320, 640, 1280] and full_unet["cross_attention_dim"] == 2048


def test_sharded_sets_have_an_index(tmp_path: Path) -> None:
    folder = build_volume(tmp_path / "v", "tiny", variants=["fp16"], shard_bytes=500_000)
    index = json.loads((folder / "unet" / "diffusion_pytorch_model.safetensors.index.fp16.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2 and shards[0] == f"diffusion_pytorch_model.fp16-00001-of-{len(shards):05d}.safetensors"
    assert check_volume(folder).exit_code == 0


def test_reuse_and_rebuild(tmp_path: Path) -> None:
    folder = build_volume(tmp_path / "v", "tiny", variants=["fp16"])
    marker = folder / "unet" / "marker"
    marker.write_text("kept")
    assert build_volume(tmp_path / "v", "tiny", variants=["fp16"]) == folder and marker.exists()
    build_volume(tmp_path / "v", "tiny", variants=["fp16"], reuse=False)
    assert not marker.exists()
    assert not list(tmp_path.glob(".*partial")), "no half-written folder is left behind"


def test_cli_refuses_unknown_variant(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main([str(tmp_path / "v"), "--variants", "fp8"])
    assert "unknown variant(s) fp8" in capsys.readouterr().err
