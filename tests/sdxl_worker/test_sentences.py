"""The entrypoints' one line for a Python without the worker's packages (a pod's system Python, say)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.mark.parametrize(("command", "args", "package"), [
    ("prepare_volume.py", ["plan", "/runpod-volume/photonicfusion-sdxl"], "tqdm"),
    ("volume_check.py", [], "pydantic"),
    ("handler_volume_optimized.py", ["--test"], "pydantic"),
])
def test_an_entrypoint_without_the_workers_packages_says_how_to_run_it(command: str, args: list[str], package: str,
                                                                       tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(f"import sys\nsys.modules[{package!r}] = None\n")
    run = subprocess.run([sys.executable, command, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(blocker)})
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr == (f"❌ {command} needs the worker's packages, and {package} is not installed for "
                          f"{sys.executable}: run it with .venv/bin/python (bash scripts/setup_venv.sh makes .venv) or "
                          "inside the worker's image, whose python has them\n")
