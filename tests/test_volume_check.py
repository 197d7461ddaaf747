"""volume_check.py, the HEALTHCHECK's command: its exit codes, JSON, the LoRA, embeddings and ControlNet listings,
no torch, and a read error anywhere as a line naming the file."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dev.hf_cache import cache_repo
from sdxl_worker.volume.check import check_volume
from tests.helpers import ROOT, drop_variant
from volume_check import main

FOLDERS = ("LoRAs", "Embeddings", "ControlNets")


def section(out: str, title: str) -> list[str]:
    """The lines of one folder's listing: from the line starting with `title` to the next folder's."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(FOLDERS)), len(lines))
    return lines[start:end]


def test_cli_json_and_exit_codes(volume: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    assert main([str(volume), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["loadable"] is True and data["plans"]["fp16"]["possible"] is True
    monkeypatch.setenv("MODEL_PATH", str(volume.parent / "nope"))
    assert main([]) == 2
    assert "model folder" in capsys.readouterr().out


def test_with_models_each_is_checked_and_named_and_the_worst_verdict_is_the_exit_code(
        volume: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELS", f"photonic={volume},base={tmp_path / 'base'}")
    assert main([]) == 2  # base's folder is missing
    out = capsys.readouterr().out
    assert "model 'photonic' (MODELS):" in out and "model 'base' (MODELS):" in out
    assert f"model at {volume} is loadable" in out and f"model at {tmp_path / 'base'} is not loadable" in out
    assert main(["--json"]) == 2
    assert set(json.loads(capsys.readouterr().out)["models"]) == {"photonic", "base"}
    assert main([str(volume)]) == 0  # a PATH is checked alone
    capsys.readouterr()
    monkeypatch.setenv("MODELS", "photonic")
    assert main([]) == 1
    assert "MODELS: 'photonic' is not NAME=SOURCE" in capsys.readouterr().out


def test_cli_lists_the_loras_without_changing_the_verdict(volume: Path, tmp_path: Path, capsys,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from dev.lora import write_lora

    folder = tmp_path / "loras"
    write_lora(volume, folder / "photonic-style.safetensors", fmt="kohya")
    (folder / "cut.safetensors").write_bytes((folder / "photonic-style.safetensors").read_bytes()[:-500])
    assert main([str(volume), "--lora-dir", str(folder)]) == 0
    out = section(capsys.readouterr().out, "LoRAs")
    assert out == [f"LoRAs in {folder}: 1 usable, 1 broken",
                   "✅ photonic-style: kohya, unet, text_encoder, text_encoder_2, rank 4, 0.1 MB", out[-1]]
    assert out[-1].startswith("❌ LoRA 'cut' is not a readable safetensors file: truncated")
    assert main([str(volume), "--json", "--lora-dir", str(tmp_path / "none")]) == 0
    assert json.loads(capsys.readouterr().out)["loras"] == {"folder": str(tmp_path / "none"), "present": False,
                                                           "broken": {}, "usable": []}
    monkeypatch.setenv("LORA_MAX_MB", "lots")
    assert main([str(volume)]) == 0
    assert section(capsys.readouterr().out, "LoRAs") == [
        "LoRAs not checked: LORA_MAX_MB must be a whole number of at most 18 digits, not 'lots'"]


def test_cli_lists_the_embeddings_checked_against_the_model_s_text_encoders(volume: Path, tmp_path: Path, capsys,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from safetensors.torch import save_file

    from dev.embedding import write_embedding

    folder = tmp_path / "embeddings"
    write_embedding(volume, folder / "grainy.safetensors", vectors=3)
    save_file({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, folder / "other-model.safetensors")
    assert main([str(volume), "--embeddings-dir", str(folder)]) == 0
    assert section(capsys.readouterr().out, "Embeddings") == [
        f"Embeddings in {folder}: 1 usable, 1 broken", "✅ grainy: 3 vector(s)",
        "❌ Embedding 'other-model' is for text encoders 768 and 1280 wide; this model's are 16 and 32 (an embedding "
        "for another model)."]
    monkeypatch.setenv("EMBEDDINGS_DIR", str(folder))
    assert main([str(volume), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["embeddings"]
    assert listed["usable"] == [{"name": "grainy", "vectors": 3}] and list(listed["broken"]) == ["other-model"]
    (volume / "text_encoder_2" / "config.json").write_text("{")  # the model's verdict says why; this line too
    assert main([str(volume)]) == 1
    assert section(capsys.readouterr().out, "Embeddings")[0].startswith(
        f"Embeddings in {folder} not checked: the text encoders' configs cannot be read")
    assert main([str(volume), "--embeddings-dir", str(tmp_path / "none")]) == 1
    assert section(capsys.readouterr().out, "Embeddings") == [f"Embeddings: no folder {tmp_path / 'none'} (every "
                                                              "prompt word is text)"]


def test_cli_lists_the_controlnets_checked_against_the_model_s_unet(volume: Path, tmp_path: Path, capsys) -> None:
    from dev.controlnet import write_controlnet

    folder = tmp_path / "controlnets"
    write_controlnet(volume, folder / "edges", fp16=True)
    write_controlnet(volume, folder / "sd15")
    config = folder / "sd15" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "cross_attention_dim": 768,
                                         "addition_embed_type": None}))
    assert main([str(volume), "--controlnet-dir", str(folder)]) == 0
    out = section(capsys.readouterr().out, "ControlNets")
    assert out[:2] == [f"ControlNets in {folder}: 1 usable, 1 broken", "✅ edges: fp16, 1.9 MB"]
    assert out[2] == "❌ ControlNet 'sd15' is an SD 1.5 ControlNet; this model is SDXL (an SDXL ControlNet reads " \
                     "48-wide text)."
    assert main([str(volume), "--json", "--controlnet-dir", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["controlnets"]["usable"] == [
        {"name": "edges", "bytes": (folder / "edges" / "diffusion_pytorch_model.fp16.safetensors").stat().st_size,
         "variants": ["fp16"]}]


def test_cli_does_not_import_torch(volume: Path) -> None:
    code = (
        "import sys, volume_check; rc = volume_check.main([sys.argv[1]]);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(volume)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "✅ model at" in result.stdout


def test_the_tensor_check_says_its_own_time_apart_from_importing_torch(volume: Path) -> None:
    """A start's check imports torch for the tensor comparison: seconds that are not the check's and are said apart."""
    result = subprocess.run([sys.executable, "volume_check.py", str(volume), "--tensors"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "no library's import notice"
    verdict = result.stdout.splitlines()[-4]
    timing = re.search(r"\(checked in (\d+\.\d\d) s; importing torch and the model libraries for it: "
                       r"(\d+\.\d\d) s more\)$", verdict)
    assert timing is not None, verdict
    check_s, import_s = map(float, timing.groups())
    assert import_s > check_s, "torch's import dwarfs a check of headers and configs"


def fails(report) -> str:
    return "\n".join(report.problems)


def _io_error_on(monkeypatch: pytest.MonkeyPatch, method: str, target: Path, error: int = errno.EIO) -> None:
    """Make one pathlib method (or `os.open`, which every read of a volume's file goes through) fail for `target`
    as a network volume's read or a permission would."""
    if method == "os.open":
        real_open = os.open

        def failing_open(path: object, *args: object, **kwargs: object) -> int:
            if Path(path) == target:
                raise OSError(error, os.strerror(error), str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", failing_open)
        return
    real = getattr(Path, method)

    def failing(self: Path, *args: object, **kwargs: object):
        if self == target:
            raise OSError(error, os.strerror(error), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, failing)


@pytest.mark.parametrize(("method", "relative", "error"), [
    ("os.open", "unet/config.json", errno.EIO),
    ("os.open", "model_index.json", errno.EACCES),
    ("os.open", "vae/diffusion_pytorch_model.safetensors", errno.EIO),
    ("iterdir", "text_encoder", errno.EACCES),
    ("is_dir", "tokenizer_2", errno.EIO),
])
def test_any_read_error_is_a_finding_naming_the_file(volume: Path, monkeypatch: pytest.MonkeyPatch, capsys,
                                                     method: str, relative: str, error: int) -> None:
    """An I/O or permission error anywhere: a ❌ line naming the file, exit 1, never a traceback."""
    _io_error_on(monkeypatch, method, volume / relative, error)
    if relative.startswith("vae/"):
        drop_variant(volume, "fp16", ("vae",))
    report = check_volume(volume)
    assert report.exit_code == 1 and not report.loadable
    assert f"{volume / relative}" in fails(report) and os.strerror(error) in fails(report)
    assert main([str(volume)]) == 1
    assert "❌" in capsys.readouterr().out


def test_cli_checks_a_hub_id_in_the_model_cache_and_its_add_ons_against_the_snapshot(
        tiny_volume_source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dev.controlnet import write_controlnet

    cache = tmp_path / "huggingface-cache" / "hub"
    snapshot = cache_repo(tiny_volume_source, cache, "Baileyy/photonicfusion-sdxl")
    write_controlnet(tiny_volume_source, tmp_path / "controlnets" / "edges")
    monkeypatch.setenv("MODEL_CACHE", str(cache))
    monkeypatch.setenv("MODEL_PATH", "Baileyy/photonicfusion-sdxl")
    assert main(["--controlnet-dir", str(tmp_path / "controlnets")]) == 0
    out = capsys.readouterr().out
    assert f"commit {snapshot.name[:12]}) from RunPod's model cache {cache}" in out
    assert section(out, "ControlNets")[1].startswith("✅ edges")
    assert main(["Baileyy/photonicfusion-sdxl@v2"]) == 2
    assert "holds Baileyy/photonicfusion-sdxl but not its revision 'v2': refs main" in capsys.readouterr().out
