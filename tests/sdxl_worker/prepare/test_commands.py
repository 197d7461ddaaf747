"""prepare_volume's commands (and prepare_volume.py over them) on tiny volumes: the fp16 set the worker then
reads, the faults that must leave the volume as it was (a kill at any point, a full disk), single-file checkpoints
converted offline, every tensor compared, and .bin weights converted without running a pickle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import prepare_volume
from dev.hf_cache import cache_repo
from dev.single_file import write_checkpoint
from sdxl_worker.loading.loader import load_planned
from sdxl_worker.loading.plan import plan_of
from sdxl_worker.prepare import commands
from sdxl_worker.prepare.fp16_set import PrepareError
from sdxl_worker.prepare.lock import lock_path, writer_lock
from sdxl_worker.volume.check import check_volume
from sdxl_worker.weights.safetensors_header import read_safetensors_header
from sdxl_worker.weights.safetensors_io import PARTIAL_SUFFIX
from tests.forked import run_prepare
from tests.helpers import MODELS, ROOT, draw_latents, tmpfs, tree_state

GUARD = ROOT / "tests" / "guard"


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """prepare_volume.py's exit code, stdout and stderr, run in this process (no second torch import)."""
    capsys.readouterr()
    code = prepare_volume.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "prepare_volume.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)


def fp16_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {n: t for path in sorted(folder.glob("*.fp16*.safetensors")) for n, t in load_file(path).items()}


def standard_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {n: t for path in sorted(folder.glob("*.safetensors")) if ".fp16" not in path.name
            for n, t in load_file(path).items()}


def assert_fp16_is_the_standard_cast(volume: Path, standard: dict[str, dict[str, torch.Tensor]]) -> None:
    for component in MODELS:
        written = fp16_tensors(volume / component)
        assert written.keys() == standard[component].keys(), component
        for name, tensor in standard[component].items():
            cast = tensor.to(torch.float16)
            assert torch.equal(written[name].view(torch.int16), cast.view(torch.int16)), (component, name)


def assert_no_visible_partial_file(volume: Path) -> None:
    """Every weight file a reader can see is complete (a hidden temporary may be there)."""
    for path in volume.rglob("*.safetensors"):
        read_safetensors_header(path)


def test_fp32_only_volume_gets_an_fp16_set_the_worker_then_reads(fp32_volume: Path) -> None:
    standard = {c: standard_tensors(fp32_volume / c) for c in MODELS}
    assert check_volume(fp32_volume).plans["fp16"].possible is False
    summary = commands.add_fp16(fp32_volume)
    assert summary.exit_code == 0 and summary.status == "done", summary.render()
    report = check_volume(fp32_volume, tensors=True)
    assert report.plans["fp16"].possible and summary.load_plan.startswith("fp16 variant")
    assert_fp16_is_the_standard_cast(fp32_volume, standard)
    assert not list(fp32_volume.rglob(f"*{PARTIAL_SUFFIX}"))


def test_latents_from_the_prepared_fp16_set_equal_the_fallback_loads(fp32_volume: Path) -> None:
    """On a GPU the worker loaded the float32 files cast to fp16; from the prepared set it gets the same model."""
    def latents(variant: str) -> torch.Tensor:
        report = check_volume(fp32_volume, tensors=True)
        plan = plan_of(report, "cpu", "float16", dict.fromkeys(MODELS, variant))
        assert plan.bytes_to_read == report.plans[variant].bytes
        pipe, _ = load_planned(plan, prefetch=False)
        return draw_latents(pipe, size=256, steps=2)

    fallback = latents("standard")
    assert commands.add_fp16(fp32_volume).exit_code == 0
    assert torch.equal(latents("fp16"), fallback)


def test_a_complete_volume_is_left_untouched(volume: Path) -> None:
    before = tree_state(volume)
    summary = commands.add_fp16(volume)
    assert summary.status == "nothing to do" and summary.exit_code == 0 and not summary.written
    assert tree_state(volume) == before
    assert "Nothing to do" in summary.render()


def test_only_the_component_with_a_truncated_fp16_file_is_rewritten(volume: Path) -> None:
    broken = volume / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    with broken.open("r+b") as handle:
        handle.truncate(broken.stat().st_size // 2)
    others = {c: tree_state(volume / c) for c in MODELS if c != "unet"}
    standard = standard_tensors(volume / "unet")
    summary = commands.add_fp16(volume)
    assert summary.written == ["unet/diffusion_pytorch_model.fp16.safetensors"], summary.render()
    assert any("unet: fp16 set broken: " in a and "truncated" in a for a in summary.actions)
    assert {c: tree_state(volume / c) for c in others} == others
    assert all(torch.equal(fp16_tensors(volume / "unet")[n], t.half()) for n, t in standard.items())


def test_plan_and_dry_run_write_nothing(fp32_volume: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_state(fp32_volume)
    assert prepare_volume.main(["plan", str(fp32_volume), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "dry run" and summary["bytes_to_write"] > 0 and summary["free_bytes"] > 0
    assert len(summary["actions"]) == 4 and all("would write" in a for a in summary["actions"])
    assert prepare_volume.main(["add-fp16", str(fp32_volume), "--dry-run"]) == 0
    assert "Nothing written." in capsys.readouterr().out
    assert tree_state(fp32_volume) == before


# The sharded volume's text encoders have 3 shards each: replace 4 and 8 come just before their indexes.
@pytest.mark.parametrize(("call", "number"), [("pwrite", 1), ("pwrite", 60), ("replace", 1), ("replace", 4),
                                              ("replace", 8)])
def test_a_kill_at_any_point_leaves_the_volume_servable_and_a_rerun_finishes(
        sharded_volume: Path, call: str, number: int) -> None:
    """SIGKILL inside a file, just before a shard's rename, just before an index's: never a visible partial file,
    the worker's plan as before, then a rerun removes the leftovers and completes the set."""
    standard = {c: standard_tensors(sharded_volume / c) for c in MODELS}
    status, output = run_prepare(["add-fp16", str(sharded_volume)], kill_at=(call, number))
    assert status == -9, output[-2000:]
    assert_no_visible_partial_file(sharded_volume)
    report = check_volume(sharded_volume, tensors=True)
    assert report.loadable and report.plans["standard"].possible and not report.problems
    summary = commands.add_fp16(sharded_volume)
    assert summary.exit_code == 0, summary.render()
    assert not list(sharded_volume.rglob(f"*{PARTIAL_SUFFIX}"))
    assert_fp16_is_the_standard_cast(sharded_volume, standard)
    assert check_volume(sharded_volume, tensors=True).plans["fp16"].possible


def test_a_full_disk_mid_write_fails_that_component_and_leaves_the_volume_as_before(
        fp32_volume: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree_state(fp32_volume)
    real = os.pwrite

    def fill_up(fd: int, data: memoryview, offset: int) -> int:
        if offset > 4096:
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", fill_up)
    summary = commands.add_fp16(fp32_volume)
    assert summary.exit_code == 1
    assert any("failed (No space left on device); no fp16 set written for it, the volume is as before" in f
               for f in summary.failures), summary.failures
    assert tree_state(fp32_volume) == before


def test_too_little_free_space_is_refused_before_the_first_byte(fp32_volume: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    before = tree_state(fp32_volume)
    monkeypatch.setattr("sdxl_worker.prepare.fp16_set.free_bytes", lambda _: 1_000_000)
    assert prepare_volume.main(["add-fp16", str(fp32_volume)]) == 1
    error = capsys.readouterr().err
    assert "not enough free space" in error and "1.0 MB free" in error and "nothing written" in error
    assert tree_state(fp32_volume) == before


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="mounting a small tmpfs needs root")
def test_a_really_small_filesystem_is_refused_before_the_first_byte(fp32_volume_source: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with tmpfs(tmp_path / "small", "24m") as mount:
        volume = mount / "photonicfusion-sdxl"
        shutil.copytree(fp32_volume_source, volume)
        before = tree_state(volume)
        code, _, err = run_main(capsys, "add-fp16", str(volume))
        assert code == 1 and "not enough free space" in err, err[-2000:]
        assert tree_state(volume) == before


def test_a_value_beyond_float16_fails_its_component_only(fp32_volume: Path) -> None:
    path = fp32_volume / "vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[3]
    tensors[name].view(-1)[:2] = 70000.0
    save_file(tensors, path, metadata={"format": "pt"})
    summary = commands.add_fp16(fp32_volume)
    assert summary.exit_code == 1
    assert f"vae: tensor {name} has 2 value(s) beyond float16's range" in summary.failures[0]
    assert not list((fp32_volume / "vae").glob("*fp16*"))
    assert len(summary.written) == 3


def test_drop_standard_deletes_only_after_verifying(fp32_volume: Path) -> None:
    total = sum(p.stat().st_size for p in fp32_volume.rglob("*.safetensors"))
    summary = commands.add_fp16(fp32_volume, drop_standard=True)
    assert summary.exit_code == 0 and summary.freed_bytes == total, summary.render()
    assert not [p for p in fp32_volume.rglob("*.safetensors") if ".fp16" not in p.name]
    report = check_volume(fp32_volume, tensors=True)
    assert report.loadable and report.plans["fp16"].possible
    assert "freed" in summary.render()


def test_add_fp16_checks_the_volume_once_and_then_only_what_it_changed(fp32_volume: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A full tensor check of a 14 GB volume is seconds on a network volume: one per command, not three."""
    full, partial = [], []
    monkeypatch.setattr(commands, "check_volume", lambda *a, **k: full.append(a) or check_volume(*a, **k))
    real_recheck = commands.recheck
    monkeypatch.setattr(commands, "recheck", lambda r, names, **k: partial.append(sorted(names)) or
                        real_recheck(r, names, **k))
    summary = commands.add_fp16(fp32_volume, drop_standard=True)
    assert summary.exit_code == 0, summary.render()
    assert len(full) == 1 and partial == [sorted(MODELS), sorted(MODELS)]
    assert summary.volume_check == {"exit_code": 0, "summary": check_volume(fp32_volume, tensors=True).summary()}
    assert summary.load_plan.startswith("fp16 variant")


def test_drop_standard_keeps_the_standard_files_when_the_fp16_set_differs(volume: Path) -> None:
    path = volume / "text_encoder" / "model.fp16.safetensors"
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] += 1
    save_file(tensors, path, metadata={"format": "pt"})
    before = tree_state(volume)
    summary = commands.add_fp16(volume, drop_standard=True)
    assert summary.exit_code == 1 and summary.freed_bytes == 0
    assert f"text_encoder: standard files kept: tensor {name}" in summary.failures[0]
    assert tree_state(volume) == before


def test_a_missing_folder_is_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare_volume.main(["add-fp16", str(tmp_path / "nothing" / "here")]) == 2
    assert "is not a model folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["add-fp16", "convert-bin"])
def test_a_missing_model_folder_on_a_volume_is_refused_writing_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    """The refusal names what the volume holds, never the command's own lock, and leaves the volume as it was."""
    (tmp_path / "photonicfusion-sdxl").mkdir()
    assert prepare_volume.main([command, str(tmp_path / "photonicfusion-sdl")]) == 2
    err = capsys.readouterr().err
    assert "is not a model folder" in err and "prepare-lock" not in err
    assert "Did you mean" in err and str(tmp_path / "photonicfusion-sdxl") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photonicfusion-sdxl"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="a read-only mount needs root")
def test_a_read_only_volume_is_one_sentence(fp32_volume_source: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with tmpfs(tmp_path / "ro", "64m") as mount:
        volume = mount / "photonicfusion-sdxl"
        shutil.copytree(fp32_volume_source, volume)
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        before = tree_state(mount)
        assert prepare_volume.main(["add-fp16", str(volume)]) == 1
        err = capsys.readouterr().err
        assert f"cannot write next to {volume} (Read-only file system)" in err and "Traceback" not in err
        assert err.count("\n") == 1 and tree_state(mount) == before


@pytest.fixture(scope="module")
def checkpoints(fp32_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    made = {dtype: write_checkpoint(fp32_volume_source, folder / f"photonic-{dtype}.safetensors", dtype)
            for dtype in ("F32", "F16", "BF16")}
    made["no-vae"] = write_checkpoint(fp32_volume_source, folder / "photonic-no-vae.safetensors", vae=False)
    return made


def assert_same_model(converted: Path, source: Path, dtype: torch.dtype) -> None:
    """Every tensor of every component, under the names the libraries load, equal to the source's."""
    for component in MODELS:
        expected = {n.removeprefix("text_model."): t for n, t in standard_tensors(source / component).items()}
        found = {n.removeprefix("text_model."): t for n, t in fp16_tensors(converted / component).items()}
        assert found.keys() == expected.keys(), component
        for name, tensor in expected.items():
            assert torch.equal(found[name], tensor.to(dtype).to(torch.float16)), (component, name)


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_single_file_round_trip_gives_back_every_tensor(checkpoints: dict[str, Path], fp32_volume_source: Path,
                                                        tmp_path: Path, dtype: str) -> None:
    target = tmp_path / "runpod-volume" / "photonicfusion-sdxl"
    target.parent.mkdir()
    summary = commands.from_single_file(checkpoints[dtype], target, config_dir=fp32_volume_source)
    assert summary.exit_code == 0, summary.render()
    torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    assert_same_model(target, fp32_volume_source, torch_dtype)
    assert check_volume(target, tensors=True).plans["fp16"].possible
    assert [p.name for p in target.parent.iterdir()] == ["photonicfusion-sdxl"]


def test_single_file_conversion_is_offline_and_writes_only_its_folder(checkpoints: dict[str, Path],
                                                                      fp32_volume_source: Path, tmp_path: Path) -> None:
    """Under the guard that refuses and records any connection, name lookup or write elsewhere, HF_HUB_OFFLINE
    unset: the checkpoint converts with the shipped SDXL files, or --config, without a network call. (torch makes
    empty folders in TMPDIR at import; no file is written there.)"""
    volume, tmpdir = tmp_path / "volume", tmp_path / "tmpdir"
    volume.mkdir()
    tmpdir.mkdir()
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "TORCH", "XDG_"))}
    env = {**keep,
           "PYTHONPATH": f"{GUARD}{os.pathsep}{ROOT}", "GUARD_LOG": str(tmp_path / "guard.log"),
           "GUARD_ALLOWED": os.pathsep.join([str(volume), str(tmpdir)]), "TMPDIR": str(tmpdir),
           "HOME": str(tmp_path / "home"), "PYTHONDONTWRITEBYTECODE": "1"}
    result = run_cli("from-single-file", str(checkpoints["F16"]), str(volume / "photonicfusion-sdxl"),
                     "--config", str(fp32_volume_source), "--json", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["load_plan"].startswith("fp16 variant")
    refused = run_cli("from-single-file", str(checkpoints["F16"]), str(volume / "other"), env=env)
    assert refused.returncode == 1 and "do not fit SDXL base 1.0's config" in refused.stderr
    assert not (tmp_path / "guard.log").exists(), (tmp_path / "guard.log").read_text()
    assert sorted(p.name for p in volume.iterdir()) == ["photonicfusion-sdxl"]
    assert not [p for p in tmpdir.rglob("*") if p.is_file()]


def test_a_checkpoint_without_a_vae_needs_one(checkpoints: dict[str, Path], fp32_volume_source: Path,
                                              tmp_path: Path) -> None:
    target = tmp_path / "photonicfusion-sdxl"
    with pytest.raises(commands.PrepareError, match=r"has no weights for vae \(first_stage_model\.\*\); "
                                                          "pass --vae"):
        commands.from_single_file(checkpoints["no-vae"], target, config_dir=fp32_volume_source)
    summary = commands.from_single_file(checkpoints["no-vae"], target, config_dir=fp32_volume_source,
                                              vae_dir=fp32_volume_source / "vae")
    assert summary.exit_code == 0, summary.render()
    assert_same_model(target, fp32_volume_source, torch.float32)


def test_existing_target_and_missing_checkpoint_are_bad_usage(checkpoints: dict[str, Path], volume: Path,
                                                              tmp_path: Path) -> None:
    before = tree_state(volume)
    assert prepare_volume.main(["from-single-file", str(checkpoints["F16"]), str(volume)]) == 2
    assert prepare_volume.main(["from-single-file", str(tmp_path / "none.safetensors"), str(tmp_path / "x")]) == 2
    assert tree_state(volume) == before


def test_a_non_sdxl_checkpoint_is_refused_and_nothing_written(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8)}, lora)
    assert prepare_volume.main(["from-single-file", str(lora), str(tmp_path / "model")]) == 1
    assert "style.safetensors looks like a LoRA" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["style.safetensors"]


def test_an_interrupted_conversion_is_invisible_and_cleaned_by_the_next(checkpoints: dict[str, Path],
                                                                       fp32_volume_source: Path,
                                                                       tmp_path: Path) -> None:
    target = tmp_path / "photonicfusion-sdxl"
    argv = ["from-single-file", str(checkpoints["F32"]), str(target), "--config", str(fp32_volume_source)]
    status, output = run_prepare(argv, kill_at=("pwrite", 30))
    assert status == -9, output[-2000:]
    assert not target.exists() and (tmp_path / f".photonicfusion-sdxl{PARTIAL_SUFFIX}").is_dir()
    summary = commands.from_single_file(checkpoints["F32"], target, config_dir=fp32_volume_source)
    assert summary.exit_code == 0 and summary.removed_leftovers == [f".photonicfusion-sdxl{PARTIAL_SUFFIX}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photonicfusion-sdxl"]


def serve(model_path: Path, **settings: object) -> list[str]:
    """The images of one small job from a worker started on `model_path` with default settings but those given."""
    from sdxl_worker.serving.worker import Worker
    from tests.helpers import cpu_settings

    worker = Worker.start(cpu_settings(model_path, **settings), warmup=False)
    assert worker.pipe is not None, worker.startup_error
    reply = worker.handle({"id": "t", "input": {"prompt": "a lighthouse", "width": 256, "height": 256,
                                                "num_inference_steps": 2, "seed": 3}})
    assert "images" in reply, reply
    return reply["images"]


def test_a_single_file_conversion_is_served_with_default_settings(checkpoints: dict[str, Path],
                                                                  fp32_volume_source: Path, tmp_path: Path) -> None:
    """diffusers' conversion writes the published names (transformers 4's `text_model.`): the default read-once
    loader serves them, drawing what the libraries' loader draws."""
    target = tmp_path / "runpod-volume" / "photonicfusion-sdxl"
    target.parent.mkdir()
    assert commands.from_single_file(checkpoints["F32"], target, config_dir=fp32_volume_source).exit_code == 0
    assert "text_model.final_layer_norm.weight" in read_safetensors_header(
        target / "text_encoder" / "model.fp16.safetensors").entries
    assert serve(target) == serve(target, load_streams=0)


def test_add_fp16_on_every_layout_keeps_its_names_and_is_served(layout_volume: Path) -> None:
    """The fp16 set of a published volume (sharded UNet, transformers 4 names) holds the same names, verifies
    tensor by tensor, and the worker serves it once the standard files are gone."""
    for path in layout_volume.rglob("*.fp16*"):
        path.unlink()
    standard = {c: set(standard_tensors(layout_volume / c)) for c in MODELS}
    summary = commands.add_fp16(layout_volume, drop_standard=True)
    assert summary.exit_code == 0, summary.render()
    assert {c: set(fp16_tensors(layout_volume / c)) for c in MODELS} == standard
    assert not [p for p in layout_volume.rglob("*.safetensors") if ".fp16" not in p.name]
    assert len(serve(layout_volume)) == 1


class RunsCode:
    """Pickles as a call of os.mkdir: what a hostile .bin does when a plain unpickler loads it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)


def pickle_weights(volume: Path, component: str, legacy_format: bool = False) -> dict[str, torch.Tensor]:
    """Replace a component's standard safetensors with the .bin files older repositories ship (shards and index
    where it is sharded); return its tensors."""
    from sdxl_worker.weights.layout import BIN_PREFIX

    folder = volume / component
    prefix = BIN_PREFIX["transformers" if component.startswith("text_encoder") else "diffusers"]
    shards = sorted(p for p in folder.glob("*.safetensors") if ".fp16" not in p.name)
    tensors, weight_map = {}, {}
    for number, path in enumerate(shards, start=1):
        shard = load_file(path)
        name = f"{prefix}.bin" if len(shards) == 1 else f"{prefix}-{number:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, folder / name, _use_new_zipfile_serialization=not legacy_format)
        tensors.update(shard)
        weight_map.update(dict.fromkeys(shard, name))
        path.unlink()
    for index in folder.glob("*.safetensors.index.json"):
        index.unlink()
        (folder / f"{prefix}.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return tensors


def test_bin_only_components_are_converted_and_then_served(layout_volume: Path) -> None:
    """Every component as an older repository ships it (`pytorch_model.bin`, a sharded UNet's `.bin` shards and
    index, one in torch's legacy format): the check names the command, which writes safetensors of the same
    tensors under the same names; the worker then serves the volume."""
    for path in layout_volume.rglob("*.fp16*"):
        path.unlink()
    pickled = {c: pickle_weights(layout_volume, c, legacy_format=c == "vae") for c in MODELS}
    report = check_volume(layout_volume)
    for component in MODELS:
        assert f"{component}: only .bin weights" in report.render()
    assert f"convert them with `python prepare_volume.py convert-bin {layout_volume}`" in report.render()
    sharded = (layout_volume / "unet" / "diffusion_pytorch_model.bin.index.json").is_file()
    summary = commands.convert_bin(layout_volume)
    assert summary.exit_code == 0, summary.render()
    for component in MODELS:
        converted = standard_tensors(layout_volume / component)
        assert converted.keys() == pickled[component].keys(), component
        assert all(torch.equal(converted[n], t) for n, t in pickled[component].items()), component
    assert ("unet/diffusion_pytorch_model.safetensors.index.json" in summary.written) == sharded
    assert len(serve(layout_volume)) == 1
    assert commands.convert_bin(layout_volume).status == "nothing to do"


@pytest.mark.parametrize("content", ["runs code", "not tensors", "not a pickle"])
def test_a_bin_that_is_not_plain_weights_is_refused_and_nothing_written(volume: Path, tmp_path: Path, content: str,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pickle_weights(volume, "vae")
    path = volume / "vae" / "diffusion_pytorch_model.bin"
    marker = tmp_path / "code-ran"
    if content == "runs code":
        torch.save({"decoder.conv_in.weight": RunsCode(marker)}, path)
    elif content == "not tensors":
        torch.save({"decoder.conv_in.weight": "a string"}, path)
    else:
        path.write_bytes(b"\x80\x02not a pickle at all")
    before = tree_state(volume)
    code, out, _ = run_main(capsys, "convert-bin", str(volume))
    assert code == 1
    refusal = next(line for line in out.splitlines() if line.startswith("  ❌ vae: "))
    assert len(refusal) < 400 and refusal.endswith("; nothing written for it"), refusal
    assert {"runs code": "does not read it as plain tensors (Trying to load unsupported GLOBAL posix.mkdir",
            "not tensors": "entry 'decoder.conv_in.weight' is a str, not a dense tensor",
            "not a pickle": "does not read it as plain tensors (Unsupported operand"}[content] in refusal
    assert not marker.exists()
    assert tree_state(volume) == before


def test_a_compressed_bomb_is_refused_from_its_directory(volume: Path) -> None:
    """A torch zip whose pickle inflates 1,000-fold: refused before a byte of it is inflated."""
    import zipfile

    pickle_weights(volume, "vae")
    path = volume / "vae" / "diffusion_pytorch_model.bin"
    path.unlink()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * 200_000_000)
    before = tree_state(volume)
    summary = commands.convert_bin(volume)
    assert summary.exit_code == 1
    (failure,) = summary.failures
    assert failure.startswith(f"vae: {path}: refused: its members inflate to 200,000,000 bytes from ") and \
        failure.endswith("torch.save stores them uncompressed; nothing in it was read; nothing written for it")
    assert tree_state(volume) == before


def test_a_bin_linked_out_of_the_model_folder_is_not_read(volume: Path, tmp_path: Path) -> None:
    pickle_weights(volume, "vae")
    path = volume / "vae" / "diffusion_pytorch_model.bin"
    outside = tmp_path / "elsewhere.bin"
    path.rename(outside)
    path.symlink_to(outside)
    before = tree_state(volume)
    summary = commands.convert_bin(volume)
    assert summary.exit_code == 1
    assert summary.failures == [f"vae: {path}: links outside the model folder {volume}; only files inside it are "
                                "converted; nothing written for it"], summary.failures
    assert tree_state(volume) == before


def test_convert_bin_dry_run_writes_nothing(volume: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pickle_weights(volume, "text_encoder")
    before = tree_state(volume)
    code, out, err = run_main(capsys, "convert-bin", str(volume), "--dry-run")
    assert code == 0, err
    assert "text_encoder: would convert pytorch_model.bin to model.safetensors" in out
    assert tree_state(volume) == before


@pytest.mark.parametrize(("relative", "kind"), [("unet/config.json", "fifo"), ("text_encoder/config.json", "zero"),
                                                ("vae/diffusion_pytorch_model.safetensors", "fifo")])
def test_add_fp16_next_to_a_fifo_or_device_ends_with_a_sentence(fp32_volume: Path, relative: str, kind: str) -> None:
    """It once blocked for ever on a FIFO and ended in a MemoryError on a link to /dev/zero."""
    import threading

    path = fp32_volume / relative
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else path.symlink_to("/dev/zero")
    summaries = []
    running = threading.Thread(target=lambda: summaries.append(commands.add_fp16(fp32_volume)), daemon=True)
    running.start()
    running.join(120)
    assert summaries, f"add-fp16 blocked on {relative}"
    (summary,) = summaries
    component = relative.split("/")[0]
    assert summary.exit_code == 1, summary.render()
    assert not [w for w in summary.written if w.startswith(f"{component}/")], "nothing written next to it"
    assert f"{path.name} is a {'FIFO' if kind == 'fifo' else 'character device'}" in summary.render()


def test_a_second_writer_of_the_same_folder_is_refused_and_changes_nothing(fp32_volume: Path) -> None:
    """Two add-fp16 runs at once replaced each other's files; the second now waits its turn, told so."""
    before = tree_state(fp32_volume)
    with writer_lock(fp32_volume):
        status, output = run_prepare(["add-fp16", str(fp32_volume)])
        assert status == 1, output
        assert f"{fp32_volume} is being written by process {os.getpid()} on " in output
        assert tree_state(fp32_volume) == before
        assert run_prepare(["add-fp16", str(fp32_volume), "--dry-run"])[0] == 0, "a dry run writes nothing: no lock"
    assert not lock_path(fp32_volume).exists()
    assert commands.add_fp16(fp32_volume).exit_code == 0


def test_a_lock_left_by_a_run_that_died_here_is_taken_over(fp32_volume: Path) -> None:
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_path(fp32_volume).write_text(f"{socket.gethostname()} {int(dead.stdout)} 2026-12-03T00:00:00Z\n")
    summary = commands.add_fp16(fp32_volume)
    assert summary.exit_code == 0, summary.render()
    assert not lock_path(fp32_volume).exists()
    lock_path(fp32_volume).write_text("other-machine 1 2026-12-03T00:00:00Z\n")
    with pytest.raises(PrepareError, match=r"is being written by process 1 on other-machine since "
                                               r"2026-12-03T00:00:00Z \(lock .*\): wait for it to finish, or delete"):
        commands.add_fp16(fp32_volume)


@pytest.mark.parametrize("command", ["add-fp16", "convert-bin"])
def test_a_model_cache_is_never_written(command: str, fp32_volume_source: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """RunPod's cache is the platform's, its files links shared between revisions: a Hub id or a snapshot folder is
    refused before the lock, and the cache is left as it was."""
    cache = tmp_path / "hub"
    snapshot = cache_repo(fp32_volume_source, cache, "Baileyy/photonicfusion-sdxl")
    before = tree_state(cache)
    assert prepare_volume.main([command, "Baileyy/photonicfusion-sdxl"]) == 2
    assert "is a Hugging Face repo id, not a folder: prepare_volume writes folders, never into a model cache" in \
        capsys.readouterr().err
    assert prepare_volume.main([command, str(snapshot)]) == 2
    assert "is inside a Hugging Face cache (models--.../snapshots): prepare_volume never writes into a model " \
           "cache" in capsys.readouterr().err
    assert tree_state(cache) == before
