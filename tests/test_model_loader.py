"""model_loader.py: the one-call load for users' scripts, and its command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import model_loader
from tests.helpers import ROOT


def test_the_command_loads_and_says_how(tiny_volume_source: Path) -> None:
    run = subprocess.run([sys.executable, "model_loader.py", str(tiny_volume_source), "--device", "cpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    record = json.loads(run.stdout)
    assert (record["device"], record["dtype"], record["variant"], record["streams"]) == ("cpu", "float32",
                                                                                         "standard", 16)


def test_an_unservable_folder_is_one_sentence(tmp_path: Path, capsys) -> None:
    assert model_loader.main([str(tmp_path / "missing")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("❌ model at ") and "does not exist" in error and len(error.splitlines()) == 1
