"""The benchmark's smoke run at tiny scale on CPU: every stage runs and the table is printed (no timing asserts).

The compile stages run with COMPILE_SCOPE=blocks only: the whole-UNet compile takes about a minute on a
2-core CPU, and it is the same stage code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_tiny_benchmark_runs_every_stage(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "benchmark.py", "--scale", "tiny", "--device", "cpu", "--size", "256", "--steps", "2",
         "--runs", "1", "--no-drop-caches", "--out", str(tmp_path / "out"), "--volume-dir", str(tmp_path / "vol"),
         "--ours", "nofuse:FUSE_QKV=0", "--ours", "fp8:QUANTIZE=fp8", "--compile", "--compile-scope", "blocks",
         "--profile"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    for key in ("environment", "volume", "load_fp16", "load_standard", "generation_stock", "generation_ours",
                "generation_ours_nofuse", "attention_kernels"):
        assert key in results
    profiled = results["generation_ours"]["profile"]
    assert profiled["top"] and profiled["busy_s"] > 0 and sum(k["share"] for k in profiled["top"]) <= 1.001
    compiled, cached = results["generation_ours_compiled_blocks"], results["compile_warm_cache_blocks"]
    assert "error" not in compiled and "error" not in cached, (compiled, cached)
    assert compiled["speedups"]["compile_scope"] == "blocks"
    assert cached["compile_s_estimate"] > 0 and cached["priming_process_compile_s_estimate"] > 0
    assert results["load_fp16"]["cache_drop"] == "fadvise DONTNEED"
    assert results["generation_ours_nofuse"]["speedups"] == {}
    assert results["generation_ours"]["image_psnr_db_vs_stock"] == "identical" or \
        results["generation_ours"]["image_psnr_db_vs_stock"] > 40
    table = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| load cold, fp16 variant |" in table and "| warm generation (ours; inference) |" in table
    assert "| compile at a cold start with the cache on the volume (blocks;" in table
    assert "One warm job under the profiler (ours): CPU ops (self time) busy" in table
    assert "| self 640ch |" in table  # the SDPA kernel timings, one row per UNet attention shape
    # What each stage ran with; an option the device cannot run says so instead of passing for measured.
    assert "| options applied (ours nofuse) | n/a | none |" in table
    assert "| options applied (ours fp8) | n/a | fuse_qkv, QUANTIZE skipped |" in table
    assert table in run.stdout


def test_a_failed_stage_shows_in_the_table() -> None:
    """A compile that fails on a GPU run is a finding: the table must say so, not drop the row."""
    from benchmark import table

    results = {"settings": {"size": 1024, "steps": 30}, "environment": {"gpu": "H200"},
               "generation_stock": {"warm_median_s": 2.0, "first_call_s": 6.0, "peak_vram_gib": 11.5},
               "generation_ours_compiled_blocks": {"error": "BackendCompilerFailed: no kernel\ntraceback"},
               "compile_warm_cache": {"error": "Traceback (most recent call last):\nRuntimeError: cache broke\n"}}
    text = table(results)
    assert "| ours compiled blocks: failed | | BackendCompilerFailed: no kernel | |" in text
    assert "(full; first call - second call): failed | | RuntimeError: cache broke | |" in text


@pytest.mark.slow
def test_tracing_only_compares_the_compile_scopes(tmp_path: Path) -> None:
    """`--tracing-only`: Dynamo's tracing per COMPILE_SCOPE and the UNet's FLOPs, on the meta device, no volume
    built, no weights."""
    run = subprocess.run(
        [sys.executable, "benchmark.py", "--tracing-only", "--scale", "tiny", "--size", "256", "--out",
         str(tmp_path / "out"), "--volume-dir", str(tmp_path / "vol")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    tracing = results["dynamo_tracing"]
    assert tracing["blocks"]["traced_nodes"] < tracing["full"]["traced_nodes"]
    assert tracing["full"]["unet_graphs"] == 1 and tracing["blocks"]["unet_graphs"] >= 1
    assert not (tmp_path / "vol").exists()
    assert "| Dynamo tracing at a start, COMPILE_SCOPE=blocks" in run.stdout
    flops = results["unet_flops"]
    assert flops["per_call_tflop"] > 0 and sum(flops["share_by_op"].values()) == pytest.approx(1, abs=1e-3)
    assert {"addmm", "convolution"} <= set(flops["share_by_op"])
    assert "| UNet FLOPs per call, batch 2" in run.stdout


def test_sdxl_unet_flops_match_the_published_count_and_fp8_covers_its_linear_work() -> None:
    """At SDXL's size (its published configs, meta device): 405.7 TFLOP for 30 steps at 1024x1024 with CFG,
    the compute floor's figure in the reference README; QUANTIZE=fp8 converts the layers doing the linear work."""
    from benchmark import unet_flops
    from dev.synthetic_volume import component_config

    flops = unet_flops(component_config("full", "unet"), 1024)
    assert flops["per_call_tflop"] * 30 == pytest.approx(405.7, abs=0.1)
    assert flops["linear_share"] == pytest.approx(0.644, abs=0.001)
    assert flops["fp8_layers_share_of_linear"] > 0.9999
