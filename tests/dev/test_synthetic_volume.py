"""The synthetic volume builder: deterministic bytes, the sets asked for, shards, decoys, atomic output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dev.synthetic_volume import build_volume, component_config, main, stored_tensors
from sdxl_worker.prepare.pipeline_files import ASSETS
from sdxl_worker.volume.check import check_volume


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


PUBLISHED_SIZES = Path(__file__).resolve().parents[1] / "data" / "sdxl-base-1.0-weight-files.tsv"


def unsharded_file_bytes(component: str, variant: str, layout: str) -> int:
    """The size of one component's weight file of `layout` at full scale, as safetensors writes it unsharded."""
    from sdxl_worker.weights.architecture import meta_model
    from sdxl_worker.weights.safetensors_io import SAFETENSORS_DTYPES, TensorSpec
    from sdxl_worker.weights.safetensors_io import layout as file_layout

    library, class_name = json.loads((ASSETS / "model_index.json").read_text())[component]
    state = stored_tensors(component, meta_model(library, class_name, component_config("full", component)).state_dict(),
                           layout)
    floating = "F16" if variant == "fp16" else "F32"
    specs = [TensorSpec(name, floating if t.is_floating_point()
                        else SAFETENSORS_DTYPES[str(t.dtype).removeprefix("torch.")], tuple(t.shape))
             for name, t in state.items()]
    return file_layout(specs, {"format": "pt"}).file_bytes


def test_the_published_layout_names_what_the_published_files_hold() -> None:
    """At full scale every weight file of the `published` layout is exactly as large as the published SDXL base
    1.0 file: its header lists the same names, dtypes and shapes (one stored position_ids, or a text encoder
    without `text_model.`, changes the size by hundreds of bytes)."""
    published = dict(line.split("\t") for line in PUBLISHED_SIZES.read_text().splitlines() if line[0] != "#")
    assert len(published) == 8
    for path, size in published.items():
        component = path.split("/")[0]
        variant = "fp16" if ".fp16." in path else "standard"
        assert unsharded_file_bytes(component, variant, "published") == int(size), path
    # Today's libraries' names are not the published ones: the comparison can tell.
    assert unsharded_file_bytes("text_encoder", "standard", "current") != int(
        published["text_encoder/model.safetensors"])
    assert unsharded_file_bytes("text_encoder_2", "standard", "legacy") != int(
        published["text_encoder_2/model.safetensors"])


def test_every_layout_holds_the_same_weights_under_its_own_names(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    current = build_volume(tmp_path / "current", "tiny", ["standard"])
    legacy = build_volume(tmp_path / "legacy", "tiny", ["standard"], layout="legacy")
    ours = load_file(current / "text_encoder" / "model.safetensors")
    theirs = load_file(legacy / "text_encoder" / "model.safetensors")
    assert theirs.keys() == {f"text_model.{n}" for n in ours} | {"text_model.embeddings.position_ids"}
    assert all((theirs[f"text_model.{n}"] == t).all() for n, t in ours.items())
    vae = load_file(legacy / "vae" / "diffusion_pytorch_model.safetensors")
    assert {"encoder.mid_block.attentions.0.query.weight", "decoder.mid_block.attentions.0.proj_attn.bias"} <= set(vae)
    assert sorted(p.name for p in (legacy / "unet").glob("*.safetensors*")) == [
        "diffusion_pytorch_model-00001-of-00003.safetensors", "diffusion_pytorch_model-00002-of-00003.safetensors",
        "diffusion_pytorch_model-00003-of-00003.safetensors", "diffusion_pytorch_model.safetensors.index.json"]
    assert json.loads((legacy / "text_encoder" / "config.json").read_text())["transformers_version"] == "4.32.0.dev0"


def test_the_demo_tool_prints_no_library_import_notices(tmp_path: Path) -> None:
    """The demo's first command once printed torchao's "Failed to load ..." lines, so it looked broken."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    run = subprocess.run([sys.executable, "-m", "dev.synthetic_volume", str(tmp_path / "demo")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr == "" and run.stdout.strip() == str(tmp_path / "demo")
