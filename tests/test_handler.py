"""The entrypoint: the self-test, --test_input, runpod's flags, what reaches the output, a broken environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import handler_volume_optimized as handler_module
from handler_volume_optimized import main
from tests.helpers import ROOT, decode


def test_self_test_cli(tiny_volume_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("MODEL_PATH", str(tiny_volume_source))
    out = tmp_path / "self-test.png"
    assert main(["--test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "✅ generation: 256x256, 4 steps" in printed and f"saved to {out}" in printed
    assert "by 16 parallel streams (LOAD_STREAMS=auto: on the CPU the weights are copied into memory" in printed
    # The load's own seconds (the read), then the start's in all (imports and the check too).
    load_s, start_s = map(float, re.search(r"GB in (\d+\.\d\d) s by .*; start (\d+\.\d\d) s in all",
                                           printed).groups())
    assert load_s < start_s
    assert decode(__import__("base64").b64encode(out.read_bytes()).decode()).size == (256, 256)
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "nothing-here"))
    assert main(["--test"]) == 1
    assert "❌ volume check: model at" in capsys.readouterr().out


def test_the_self_test_serves_every_layout_with_default_settings(layout_volume_source: Path, monkeypatch,
                                                                 capsys) -> None:
    """Published SDXL files (transformers 4 text encoders, a sharded UNet) and older conversions, with no setting
    but MODEL_PATH: the read-once loader the CPU and every network volume get."""
    monkeypatch.setenv("MODEL_PATH", str(layout_volume_source))
    for name in ("LOAD_STREAMS", "DEVICE"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--test"]) == 0
    printed = capsys.readouterr().out
    assert "✅ generation: 256x256, 4 steps" in printed and "by 16 parallel streams (LOAD_STREAMS=auto" in printed










def test_help_lists_runpods_flags_too(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--test" in text and "--rp_serve_api" in text and "--test_input" in text and "--rp_api_port" in text


def test_test_input_prints_the_reply_with_images_summarised() -> None:
    reply = {"images": ["iVBOR" * 1000], "format": "png", "width": 256, "height": 320, "seed": 1}
    assert handler_module.summarise(reply) == {**reply, "images": ["<png 256x320, 5,000 base64 characters>"]}
    assert handler_module.summarise({"error": "x"}) == {"error": "x"}


def _run_worker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The worker as RunPod runs it, in a process of its own: its real stdout and stderr."""
    return subprocess.run([sys.executable, "handler_volume_optimized.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "DEVICE": "cpu", **env})


TAIL_WORDS = ("zyxwvutsr", "qwertyuiop", "asdfghjklm", "mnbvcxzlkj", "poiuytrewq", "secretword")
LOCAL_JOB = {"input": {"prompt": "a lighthouse on a cliff at dusk, volumet" + " ".join(TAIL_WORDS * 12),
                       "negative_prompt": "blurry secretword", "width": 256, "height": 256, "num_inference_steps": 1,
                       "seed": 2}}


@pytest.fixture(scope="module")
def local_run(tiny_volume_source: Path) -> subprocess.CompletedProcess:
    """One `--test_input` run, shared by the tests of what it prints: a prompt past CLIP's 77 tokens."""
    return _run_worker("--test_input", json.dumps(LOCAL_JOB), env={"MODEL_PATH": str(tiny_volume_source)})


@pytest.mark.slow
def test_no_job_text_beyond_the_prefix_reaches_the_output(local_run: subprocess.CompletedProcess) -> None:
    """diffusers quotes the part of the prompt that CLIP cuts in a warning; none of it may be printed."""
    output = (local_run.stdout + local_run.stderr).lower()
    assert local_run.returncode == 0, output[-2000:]
    assert "prompt 'a lighthouse on a cliff at dusk, volumet'" in output
    assert [word for word in TAIL_WORDS if word in output] == []
    summary = json.loads(next(line for line in local_run.stdout.splitlines() if line.startswith('{"images"')))
    assert summary["images"][0].startswith("<png 256x256, ")


@pytest.mark.slow
def test_a_log_level_logging_does_not_know_leaves_the_worker_up(tiny_volume_source: Path) -> None:
    run = _run_worker("--test", env={"MODEL_PATH": str(tiny_volume_source), "LOG_LEVEL": "LOUD"})
    assert run.returncode == 1 and "Traceback" not in run.stdout + run.stderr
    assert "❌ settings: bad setting: LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, not 'LOUD'" in run.stdout


@pytest.mark.slow
def test_without_torch_or_diffusers_the_self_test_says_so(tiny_volume_source: Path, tmp_path: Path) -> None:
    """A broken image (no torch, no diffusers): one ❌ line naming what is missing, never a chained traceback."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules.update(torch=None, diffusers=None)\n")
    run = _run_worker("--test", env={"MODEL_PATH": str(tiny_volume_source), "PYTHONPATH": str(blocker)})
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert "❌" in run.stdout and "torch" in run.stdout


@pytest.mark.slow
def test_a_local_run_prints_the_reply_alone_on_stdout(local_run: subprocess.CompletedProcess,
                                                      tiny_volume_source: Path, tmp_path: Path) -> None:
    """`--test_input ... | jq` works: the logs go to stderr. With no arguments off RunPod, runpod runs
    ./test_input.json: said on stderr, and its reply printed too."""
    assert local_run.returncode == 0, local_run.stderr[-2000:]
    reply = json.loads(local_run.stdout)
    assert reply["images"][0].startswith("<png 256x256, ") and reply["seed"] == 2
    assert "job local_test: txt2img 256x256" in local_run.stderr
    job = {"input": {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 1, "seed": 2}}
    (tmp_path / "test_input.json").write_text(json.dumps(job))
    bare = subprocess.run([sys.executable, str(ROOT / "handler_volume_optimized.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DEVICE": "cpu", "MODEL_PATH": str(tiny_volume_source),
                               "PYTHONPATH": str(ROOT)})
    assert bare.returncode == 0, bare.stderr[-2000:]
    assert json.loads(bare.stdout)["seed"] == 2
    assert ("Not on RunPod and no --test_input: runpod runs ./test_input.json once (256x256, 1 steps)"
            in bare.stderr)

