"""The UNet and VAE decoder compiled ahead of time (`prepare_volume.py compile`, speed/aot.py): compiled once for
the module (the tiny model, 256x256, on the CPU), then a worker starting on that folder runs jobs of that size
through the packages with no compiling at start, drawing what the eager worker draws, LoRA jobs included (merged
into the weights the package reads); other sizes run eagerly; a package built for anything else is ignored with one
log line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import prepare_volume
from dev.lora import write_lora
from sdxl_worker.loras.files import LoraSettings
from sdxl_worker.serving.worker import Worker
from sdxl_worker.speed.aot import AOT_DIR, MANIFEST, AotDecoder, AotForward
from sdxl_worker.speed.plain import plain_unet
from tests.helpers import cpu_settings, decode, tree_state

pytestmark = pytest.mark.slow  # the module's compile (about 100 s here) starts first, beside the short tests

SMALL = {"prompt": "a photonic lighthouse", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 5}
STYLE = [{"name": "style", "scale": 0.9}]


@pytest.fixture(scope="module")
def compiled(tiny_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A copy of the tiny model with its 256x256 package, and the command's summary."""
    volume = tmp_path_factory.mktemp("compiled") / "photonicfusion-sdxl"
    shutil.copytree(tiny_volume_source, volume)
    (volume / AOT_DIR / ".compiling-unet-512x512").mkdir(parents=True)  # an interrupted run's leftover
    import contextlib
    import io

    import torch._inductor.config

    out = io.StringIO()
    # Without AOTInductor's precompiled headers: built for later compiles with the same flags, and this module
    # compiles once (its setup 44 s against 54 s here). The packages are the same kernels and wrapper either way.
    with contextlib.redirect_stdout(out), torch._inductor.config.patch({"aot_inductor.precompile_headers": False}):
        code = prepare_volume.main(["compile", str(volume), "--shapes", "256x256", "--device", "cpu", "--json"])
    assert code == 0, out.getvalue()
    return volume, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def lora_dir(tiny_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    write_lora(tiny_volume_source, folder / "style.safetensors", seed=3)
    return folder


def start(volume: Path, **fields: object) -> Worker:
    worker = Worker.start(cpu_settings(volume, **fields))
    assert worker.pipe is not None, worker.startup_error
    worker.progress = lambda job, update: None
    return worker


def draw(worker: Worker, **fields: object) -> np.ndarray:
    reply = worker.handle({"id": "t", "input": {**SMALL, **fields}})
    assert "images" in reply, reply
    return np.asarray(decode(reply["images"][0]).convert("RGB")).astype(int)


def test_the_command_writes_one_package_and_removes_what_an_interrupted_run_left(compiled: tuple[Path, dict]) -> None:
    volume, summary = compiled
    packages = sorted(p.name for p in (volume / AOT_DIR).iterdir())
    assert packages == ["unet-b2-256x256-t77-cpu-float32", "vae_decoder-b1-256x256-cpu-float32"]
    assert summary["written"] == [f"{AOT_DIR}/{name}" for name in packages]
    assert summary["removed_leftovers"] == [f"{AOT_DIR}/.compiling-unet-512x512"]
    written = sum(p.stat().st_size for p in (volume / AOT_DIR).rglob("*") if p.is_file())
    assert summary["bytes_to_write"] == written > 1_000_000  # the libraries, said as written
    assert summary["volume_check"]["exit_code"] == 0


def test_a_worker_runs_its_size_through_the_package_and_draws_as_the_eager_worker(
        compiled: tuple[Path, dict], tiny_volume_source: Path, lora_dir: Path) -> None:
    volume, _ = compiled
    loras = LoraSettings(lora_dir=str(lora_dir))
    eager = start(tiny_volume_source, loras=loras)
    before, unpacked = tree_state(volume), set(Path("/tmp").iterdir())
    worker = start(volume, loras=loras)
    # The libraries are loaded where they lie: nothing written beside them, nothing unpacked into /tmp.
    assert tree_state(volume) == before
    assert not [p for p in set(Path("/tmp").iterdir()) - unpacked if (p / "package" / "data").exists()]
    assert "aot_packages=2" in worker.speed.labels() and eager.speed.aot_packages == 0
    forward, decoder = worker.pipe.unet.forward, worker.pipe.vae.decoder.forward
    assert isinstance(forward, AotForward) and isinstance(decoder, AotDecoder)
    calls, decodes = forward.calls, decoder.calls
    plain = draw(worker)
    assert forward.calls == calls + 2 and np.abs(plain - draw(eager)).max() <= 1  # 2 steps, batch 2 each
    assert decoder.calls == decodes + 1 and decoder.eager_calls == 0
    # A LoRA job: merged into the weights the package reads, within the merge's rounding of the eager worker's.
    styled = draw(worker, loras=STYLE)
    assert forward.calls == calls + 4 and np.abs(styled - draw(eager, loras=STYLE)).max() <= 2
    assert np.abs(styled - plain).mean() > 1 and np.array_equal(draw(worker), plain)  # the weights put back
    calls = forward.calls
    with plain_unet(worker.pipe):  # where a LoRA that cannot be merged runs: the package is bypassed
        draw(worker)
    assert forward.calls == calls
    eager_calls = forward.eager_calls
    wide = draw(worker, width=320)  # no package for 320x256: eager, the eager worker's image
    assert forward.eager_calls == eager_calls + 2 and np.abs(wide - draw(eager, width=320)).max() <= 1
    assert decoder.eager_calls == 1  # the 320x256 job's decode; the bypass is the UNet's alone


@pytest.mark.parametrize("damage", ["another torch", "not json"])
def test_a_package_built_for_anything_else_is_ignored_with_one_line(
        compiled: tuple[Path, dict], tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    volume = tmp_path / "photonicfusion-sdxl"
    shutil.copytree(compiled[0], volume)
    manifest = volume / AOT_DIR / "unet-b2-256x256-t77-cpu-float32" / MANIFEST
    if damage == "another torch":
        data = json.loads(manifest.read_text())
        data["key"]["torch"] = "2.0.0"
        manifest.write_text(json.dumps(data))
    else:
        manifest.write_text("{")
    with caplog.at_level("WARNING"):
        worker = start(volume)
    assert worker.speed.aot_packages == 1 and not isinstance(worker.pipe.unet.forward, AotForward)
    said = [r.getMessage() for r in caplog.records if "package" in r.getMessage()]
    expected = "it was compiled for torch '2.0.0', this worker has" if damage == "another torch" else \
        "is not a manifest this worker reads (JSONDecodeError)"
    assert len(said) == 1 and expected in said[0], said
    assert "images" in worker.handle({"id": "t", "input": SMALL})


def test_a_rerun_keeps_what_it_would_write_again_and_the_benchmark_says_so(compiled: tuple[Path, dict]) -> None:
    """The benchmark's stage runs the command as an operator does; on the compiled folder, it compiles nothing."""
    from benchmarks.report import render
    from benchmarks.results import Run
    from benchmarks.stages.aot import measure_aot_compile

    volume, _ = compiled
    before = tree_state(volume / AOT_DIR)
    result = measure_aot_compile(volume, "cpu", 256)
    assert result.packages == () and result.bytes_written == 0 and tree_state(volume / AOT_DIR) == before
    table = render(Run({"size": 256, "steps": 2, "suite": ["aot"], "device": "cpu"}, entries=[("ours aot", result)]))
    assert "| ours aot | " in table and "| there already | 0.0 MB |" in table
