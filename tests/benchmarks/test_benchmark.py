"""The benchmark: its suites are valid worker settings, its report and chart show every kind of result, and
every stage kind runs at tiny scale on the CPU (no timing asserted: the figures are the benchmark's output)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.chart import draw_chart
from benchmarks.report import render
from benchmarks.results import Failure, GenerationResult, Run, Spread, StockGeneration
from benchmarks.scenarios import SUITES
from sdxl_worker.settings import Settings
from tests.helpers import ROOT, decode


def generation(stock: tuple[float, ...], ours: tuple[float, ...], **fields: object) -> GenerationResult:
    values = dict(applied=("fuse_qkv",), start_s=2.9, warm_up_s=0.9, first_job_s=1.8, stock=Spread(stock),
                  ours=Spread(ours), ours_total=Spread(tuple(o + 0.15 for o in ours)), peak_vram_gib=8.95,
                  peak_reserved_gib=12.39, latents_max_abs_diff=0.0, image_psnr_db=50.77)
    return GenerationResult(**{**values, **fields})


RUN_SETTINGS = {"size": 1024, "steps": 30, "suite": ["gpu-check"], "device": "cuda"}


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_every_scenario_is_a_valid_worker_setting(suite: str) -> None:
    """A typo in a scenario would otherwise surface as a failed stage on a GPU, costing device time."""
    for scenario in SUITES[suite]:
        assert scenario.stages, scenario
        Settings.from_env(dict(scenario.settings))


def test_a_ratio_is_called_only_when_every_interleaved_pair_agrees() -> None:
    assert generation((1.80, 1.75, 1.74), (1.45, 1.44, 1.46)).verdict == "faster"
    assert generation((1.00, 1.00, 1.00), (1.10, 1.20, 1.05)).verdict == "slower"
    # A host whose load came and went: stock's own runs spread 22.9-75.1 s, ours in between.
    noisy = generation((22.9, 75.1, 30.0), (60.1, 24.0, 31.0))
    assert noisy.verdict == "inconclusive"
    assert "| inconclusive |" in render(Run(RUN_SETTINGS, entries=[("ours", noisy)]))


def test_the_report_has_a_row_per_scenario_and_keeps_failures() -> None:
    """A stage that fails on a GPU run is a finding: the table must say so, not drop the row."""
    run = Run(RUN_SETTINGS, entries=[
        ("stock diffusers", StockGeneration(2.48, 11.52, 15.51)),
        ("ours", generation((1.74, 1.75, 1.76), (1.44, 1.45, 1.46))),
        ("ours compiled blocks", Failure("generation", "BackendCompilerFailed: no kernel\ntraceback")),
    ])
    text = render(run)
    assert "| stock diffusers | | | | | | 2.48 s | | 11.52 GiB (15.51) | |" in text
    assert ("| ours | fuse_qkv | 1.750 s (1.740-1.760) | 1.450 s (1.440-1.460) | 0.83 (0.83-0.83) | faster | 1.8 s | "
            "2.9 s | 8.95 GiB (12.39) | 0.0 / 50.77 dB |") in text
    assert "| ours compiled blocks | generation | BackendCompilerFailed: no kernel |" in text


def test_the_chart_draws_each_scenario(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    run = Run(RUN_SETTINGS, entries=[("ours", generation((1.75,), (1.45,))), ("eager", generation((1.75,), (1.7,)))])
    assert draw_chart(run, tmp_path / "chart.png")
    pixels = np.asarray(Image.open(tmp_path / "chart.png").convert("RGB"))
    blue = int((pixels == (32, 110, 200)).all(axis=-1).sum())
    assert blue > 2 * 18 * 100  # two bars of ours, each 18 pixels high and longer than 100
    assert not draw_chart(Run(RUN_SETTINGS), tmp_path / "empty.png")


# The smoke suite in runs that the two test processes share out, each of its scenarios in exactly one: a suite and
# the scenarios of it to run (none: all). Its FLOPs and Dynamo tracing are the meta suite.
SMOKE_PARTS = {
    "jobs": ("smoke", ("loads", "attention kernels", "ours", "ours nofuse", "ours fp8")),
    "compiled": ("smoke", ("ours compiled blocks",)),
    "prepare": ("smoke", ("add-fp16", "two models")),
    "meta": ("meta", ()),
}


def test_the_smoke_parts_hold_every_scenario_of_the_suite_once() -> None:
    parts = [name for suite, names in SMOKE_PARTS.values()
             for name in (names or [scenario.name for scenario in SUITES[suite]])]
    assert sorted(parts) == sorted(scenario.name for scenario in SUITES["smoke"])
    assert {s.name for s in SUITES["meta"]} <= {s.name for s in SUITES["smoke"]}


def run_smoke(tmp_path: Path, part: str) -> tuple[dict[tuple[str, str], dict], str, str]:
    """One part of the smoke suite through the benchmark's command, at tiny scale on the CPU: its results by
    (scenario, kind), its table, and what it printed."""
    suite, names = SMOKE_PARTS[part]
    scenarios = [arg for name in names for arg in ("--scenario", name)]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--scale", "tiny", "--device", "cpu", "--suite", suite, "--runs", "2",
         "--no-drop-caches", "--out", str(tmp_path / "out"), "--volume-dir", str(tmp_path / "vol"), *scenarios],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "benchmark.json").read_text())["results"]
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert table in run.stdout
    return {(r["scenario"], r["kind"]): r for r in results}, table, run.stdout


@pytest.mark.slow
def test_smoke_jobs_loads_and_kernels_at_tiny_scale(tmp_path: Path) -> None:
    by_name, table, _ = run_smoke(tmp_path, "jobs")
    assert {("loads: fp16", "LoadResult"), ("loads: standard", "LoadResult"), ("attention kernels", "AttentionResult"),
            ("stock diffusers", "StockGeneration"), ("ours", "GenerationResult"),
            ("ours", "FeaturesResult"), ("ours nofuse", "GenerationResult"),
            ("ours fp8", "GenerationResult")} == set(by_name)
    ours = by_name["ours", "GenerationResult"]
    assert ours["profile"]["top"] and ours["profile"]["busy_s"] > 0
    assert len(ours["ours"]["runs"]) == len(ours["stock"]["runs"]) == 2  # interleaved, one each per round
    assert ours["image_psnr_db"] is None or ours["image_psnr_db"] > 40
    # What each scenario ran with; an option the device cannot run says so instead of passing for measured.
    assert by_name["ours nofuse", "GenerationResult"]["applied"] == []
    assert by_name["ours fp8", "GenerationResult"]["applied"] == ["fuse_qkv", "QUANTIZE skipped"]
    features = {job["job"]: job for job in by_name["ours", "FeaturesResult"]["jobs"]}
    assert [job["mode"] for job in features.values()] == ["txt2img", "img2img", "inpaint"] + ["txt2img"] * 9
    # The same text-to-image job after the others, and with previews (of either kind), draws the same image.
    plain = features["text to image"]["image_sha"]
    assert [job["job"] for job in features.values() if job["image_sha"] == plain] == [
        "text to image", "a preview every step, tiny decoder", "a preview every step, linear map",
        "text to image after the others"]
    assert len({job["image_sha"] for job in features.values()}) == 9  # each other feature drew its own image
    assert features["LoRA (rank 32, UNet and text encoders)"]["image_sha"] != features["text to image"]["image_sha"]
    assert features["long weighted prompt"]["prompt_tokens"] > 77 and all(
        job["image_std"] > 0 and len(job["warm"]["runs"]) == 2 for job in features.values())
    assert "| image to image, strength 0.6 | img2img | 15 |" in table
    loads = by_name["loads: fp16", "LoadResult"]
    assert loads["cache_drop"] == "fadvise DONTNEED" and loads["streamed_cold_s"] > 0
    assert loads["ours_streams"] == 16  # on the CPU LOAD_STREAMS=auto is the read-once loader
    assert "| ours nofuse | none |" in table and "| ours fp8 | fuse_qkv, QUANTIZE skipped |" in table
    assert "One warm job under the profiler (ours): CPU ops (self time) busy" in table
    assert "| self 640ch |" in table
    assert decode(__import__("base64").b64encode((tmp_path / "out" / "benchmark.png").read_bytes())).size[0] == 900


@pytest.mark.slow
def test_smoke_compiled_blocks_and_their_cached_start_at_tiny_scale(tmp_path: Path) -> None:
    by_name, table, _ = run_smoke(tmp_path, "compiled")
    assert {("stock diffusers", "StockGeneration"), ("ours compiled blocks", "GenerationResult"),
            ("ours compiled blocks", "CachedStart")} == set(by_name)
    compiled = by_name["ours compiled blocks", "GenerationResult"]
    assert "compile=default, compile_scope=blocks" in compiled["applied"]
    cached = by_name["ours compiled blocks", "CachedStart"]
    assert cached["first_call_s"] > cached["second_call_s"]
    # The compile before it wrote the whole cache here (torch 2.11, CPU): the first fresh process was measured.
    assert cached["priming_compile_s"] is None and "| none: the cache was whole |" in table


def test_a_cached_start_that_wrote_into_the_cache_is_run_again_and_the_second_measured(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first fresh process that filled what the compiling process kept in memory is not a later cold start."""
    from benchmarks.stages import compile_cache

    cache = tmp_path / "cache"
    (cache / "inductor").mkdir(parents=True)
    firsts = iter([5.0, 2.0])

    def fresh_process(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        first = next(firsts)
        if first == 5.0:
            (cache / "inductor" / "header.gch").write_bytes(b"precompiled")
        result = {"load_s": 1.0, "first_call_s": first, "second_call_s": 0.5, "compile_times": ""}
        return subprocess.CompletedProcess(command, 0, f"RESULT {json.dumps(result)}\n", "")

    monkeypatch.setattr(compile_cache.subprocess, "run", fresh_process)
    settings = Settings.from_env({"MODEL_PATH": str(tmp_path), "DEVICE": "cpu", "COMPILE_CACHE_DIR": str(cache)})
    cached = compile_cache.measure_cached_start(settings, 256, 4)
    assert (cached.priming_compile_s, cached.first_call_s) == (4.5, 2.0)
    assert "| 4.5 s |" in render(Run(RUN_SETTINGS, entries=[("ours compiled", cached)]))
    # Without a cache folder of its own nothing tells a whole cache from a filled one: always primed.
    firsts = iter([5.0, 2.0])
    unset = Settings.from_env({"MODEL_PATH": str(tmp_path), "DEVICE": "cpu"})
    assert compile_cache.measure_cached_start(unset, 256, 4).priming_compile_s == 4.5


@pytest.mark.slow
def test_smoke_prepare_at_tiny_scale(tmp_path: Path) -> None:
    by_name, table, _ = run_smoke(tmp_path, "prepare")
    assert set(by_name) == {("add-fp16", "PrepareResult"), ("two models", "SwitchResult")}
    prepared = by_name["add-fp16", "PrepareResult"]
    assert prepared["bytes_written"] * 2 == pytest.approx(prepared["bytes_read"], rel=0.01)
    assert prepared["peak_rss_gib"] > 0 and "| add-fp16 (cache: fadvise DONTNEED) |" in table
    # The fine-tune beside its base holds its own UNet only; each of the 2 runs is a switch there and back.
    switch = by_name["two models", "SwitchResult"]
    assert switch["shared"] == ["text_encoder", "text_encoder_2", "vae"] and 0 < switch["host_gib"] < \
        switch["model_gib"]
    assert len(switch["switch"]["runs"]) == len(switch["next_job"]["runs"]) == 4 and "| two models | " in table


@pytest.mark.slow
def test_meta_suite_needs_no_volume(tmp_path: Path) -> None:
    """FLOPs and Dynamo tracing from the configs on the meta device: no volume built, no weights."""
    by_name, table, stdout = run_smoke(tmp_path, "meta")
    assert not (tmp_path / "vol").exists()
    assert set(by_name) == {("UNet FLOPs", "FlopsResult"), ("Dynamo tracing", "TracingResult")}
    tracing = by_name["Dynamo tracing", "TracingResult"]["scopes"]
    assert tracing["blocks"]["traced_nodes"] < tracing["full"]["traced_nodes"]
    flops = by_name["UNet FLOPs", "FlopsResult"]
    assert sum(flops["share_by_op"].values()) == pytest.approx(1, abs=1e-3)
    assert "UNet FLOPs per call, batch 2" in stdout and "| full |" in table and "| blocks |" in table


def test_sdxl_unet_flops_match_the_published_count_and_fp8_covers_its_linear_work() -> None:
    """At SDXL's size (its published configs, meta device): 405.7 TFLOP for 30 steps at 1024x1024 with CFG,
    the compute floor's figure in the reference README; QUANTIZE=fp8 converts the layers doing the linear work."""
    from benchmarks.stages.flops import unet_flops
    from dev.synthetic_volume import component_config

    flops = unet_flops(component_config("full", "unet"), 1024)
    assert flops.per_call_tflop * 30 == pytest.approx(405.7, abs=0.1)
    assert flops.linear_share == pytest.approx(0.644, abs=0.001)
    assert flops.fp8_layers_share_of_linear > 0.9999


def test_a_stage_that_cannot_run_here_fails_the_run_saying_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The netfs suite where FUSE is missing: the report keeps the failure, and the exit status says it too."""
    import dev.netfs
    from benchmarks.cli import main

    monkeypatch.setattr(dev.netfs, "unavailable", lambda: "no fusermount3 (Debian package fuse3)")
    assert main(["--scale", "tiny", "--device", "cpu", "--suite", "netfs", "--no-drop-caches", "--out",
                 str(tmp_path / "out"), "--volume-dir", str(tmp_path / "vol")]) == 1
    out, err = capsys.readouterr()
    assert err.endswith("1 stage(s) failed on this machine (the report's last table): network volume: RuntimeError: "
                        "no simulated network volume here: no fusermount3 (Debian package fuse3)\n")
    assert "Tiny scale: a model of a few MB at 256 pixels" in out, "tiny-scale times are said to be overheads"


@pytest.mark.slow
@pytest.mark.skipif(__import__("dev.netfs").netfs.unavailable() is not None, reason="no FUSE here")
def test_netfs_suite_counts_the_bytes_each_loader_had_served(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--scale", "tiny", "--device", "cpu", "--suite", "netfs",
         "--no-drop-caches", "--out", str(tmp_path / "out"), "--volume-dir", str(tmp_path / "vol")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    [cell] = [r for r in json.loads((tmp_path / "out" / "benchmark.json").read_text())["results"]
              if r["kind"] == "NetworkLoadResult"]
    assert cell["plan"] == "fp16" and cell["raw_bytes"] == cell["plan_bytes"]
    # Every load of ours (16 streams, 2 streams) read each byte once: the pages that straddle a header's end or two
    # streams' requests may cross twice.
    assert cell["plan_bytes"] <= cell["ours_bytes"] <= cell["ours_bytes_most"] <= 1.01 * cell["plan_bytes"]
    assert set(cell["ours_by_streams"]) == {"2", "16"} and cell["stock_bytes"] > 0
    assert "| 0.5 ms, 100 MB/s a stream, 400 MB/s in all" in (tmp_path / "out" / "benchmark.md").read_text()
