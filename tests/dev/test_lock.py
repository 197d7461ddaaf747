"""The image's lock, requirements.txt, the test tools' lock and the test venv in step: the tests run exactly the
packages the image ships, torch's CUDA build included, on its Python 3.12."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dev import lock


def test_the_requirements_and_both_locks_agree() -> None:
    assert lock.problems() == []
    locked = lock.pins(lock.LOCK.read_text())
    assert len(locked) > 100, "every package the image installs, transitive ones included"
    for floating in ("huggingface-hub", "tokenizers", "botocore", "triton", "torch"):
        assert floating in locked, floating
    tools = lock.pins(lock.DEV_LOCK.read_text())
    assert {"pytest", "pytest-xdist", "moto", "uv"} <= set(tools) and not set(tools) & set(locked)


def test_the_test_venv_is_exactly_the_two_locks_on_the_images_python() -> None:
    """Every installed package at its locked version, torch 2.11.0's CUDA build included, and nothing else; with
    setuptools imported first, as torch's C++ builds import it in any test before this one (it puts its vendored
    packages, other versions of some locked ones, on sys.path)."""
    import setuptools  # noqa: F401
    import torch

    assert any(path.endswith(("setuptools/_vendor", "setuptools\\_vendor")) for path in sys.path)
    assert lock.venv_drift() == [], "the venv differs from the locks: run bash scripts/setup_venv.sh"
    assert torch.__version__.split("+")[0] == lock.pins(lock.LOCK.read_text())["torch"] and torch.version.cuda


def test_the_venv_and_the_image_run_compiled_bytecode() -> None:
    """PYTHONDONTWRITEBYTECODE (the image sets it) caches nothing at run time: without bytecode compiled at install
    every process would compile torch and diffusers from source at each start."""
    import diffusers
    import torch

    for module in (torch, diffusers):
        assert Path(importlib.util.cache_from_source(module.__file__)).is_file(), module.__name__
    dockerfile = (lock.ROOT / "Dockerfile.volume_optimized").read_text()
    assert re.search(r"uv pip install [^\n]*--compile-bytecode", dockerfile)
    assert re.search(r"^RUN python -m compileall -q sdxl_worker ", dockerfile, re.M)


def test_the_venv_drift_names_each_kind(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    locked = tmp_path / "image.lock"
    locked.write_text(lock.LOCK.read_text().replace("\npeft==0.21.0", "\npeft==0.20.0")
                      + "no-such-package==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    dev_lock = tmp_path / "dev.lock"
    dev_lock.write_text(re.sub(r"^hypothesis==.*?(?=^\S)", "", lock.DEV_LOCK.read_text(), flags=re.S | re.M))
    monkeypatch.setattr(lock, "LOCK", locked)
    monkeypatch.setattr(lock, "DEV_LOCK", dev_lock)
    monkeypatch.setattr(sys, "version_info", (3, 11, 7))
    drift = lock.venv_drift()
    assert drift[0].startswith("Python ") and drift[0].endswith("not the image's 3.12")
    assert "peft is 0.21.0, the lock has 0.20.0" in drift
    assert "no-such-package==1.0 is locked but not installed" in drift
    assert any(line.startswith("hypothesis ") and line.endswith("installed but in neither lock") for line in drift)


@pytest.mark.parametrize("change", ["requirements", "lock pin", "hash", "dev requirements", "dev lock stale",
                                    "dev lock repeats"])
def test_each_kind_of_drift_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    files = {name: tmp_path / getattr(lock, name).name for name in ("REQUIREMENTS", "LOCK", "DEV_REQUIREMENTS",
                                                                      "DEV_LOCK")}
    for name, path in files.items():
        path.write_text(getattr(lock, name).read_text())
        monkeypatch.setattr(lock, name, path)
    if change == "requirements":
        files["REQUIREMENTS"].write_text(files["REQUIREMENTS"].read_text().replace("peft==0.21.0", "peft==0.22.0"))
        expected = ["requirements.lock was not made from this requirements.txt",
                    "requirements.txt pins peft==0.22.0, the lock has 0.21.0"]
    elif change == "lock pin":
        # The dev lock was resolved under the image's lock: changing that lock makes the dev lock stale too.
        files["LOCK"].write_text(files["LOCK"].read_text().replace("\npeft==0.21.0", "\npeft==0.20.0"))
        expected = ["requirements.txt pins peft==0.21.0, the lock has 0.20.0",
                    "requirements-dev.lock was not made from this requirements.lock"]
    elif change == "hash":
        text = files["LOCK"].read_text()
        start = text.index("\npeft==0.21.0")
        block_end = text.index("\n    # via", start)
        files["LOCK"].write_text(text[:start] + "\npeft==0.21.0" + text[block_end:])
        expected = ["requirements.lock has a package without a hash"]
    elif change == "dev requirements":
        files["DEV_REQUIREMENTS"].write_text(files["DEV_REQUIREMENTS"].read_text() + "pytest-sugar==1.0.0\n")
        expected = ["requirements-dev.lock was not made from this requirements-dev.txt",
                    "requirements-dev.txt pins pytest-sugar==1.0.0, the lock has nothing"]
    elif change == "dev lock stale":
        files["DEV_LOCK"].write_text(files["DEV_LOCK"].read_text().replace("\npytest==9.2.0", "\npytest==9.1.0"))
        expected = ["requirements-dev.txt pins pytest==9.2.0, the lock has 9.1.0"]
    else:
        files["DEV_LOCK"].write_text(files["DEV_LOCK"].read_text() + lock.blocks(files["LOCK"].read_text())["peft"])
        expected = ["requirements-dev.lock repeats the image's packages ['peft']"]
    found = lock.problems()
    assert all(any(problem.startswith(words) for problem in found) for words in expected), found


def test_the_dev_lock_keeps_only_what_the_image_lacks_and_refuses_a_moved_package() -> None:
    image = lock.LOCK.read_text()
    compiled = lock.blocks(image)["peft"] + lock.blocks(lock.DEV_LOCK.read_text())["pytest"]
    made = lock.dev_lock_text(compiled, image)
    assert set(lock.pins(made)) == {"pytest"} and lock.SOURCE_HASH.findall(made)
    with pytest.raises(ValueError, match=re.escape("other versions of the image's packages: {'peft': '0.20.0'}")):
        lock.dev_lock_text(compiled.replace("peft==0.21.0", "peft==0.20.0"), image)


def _dockerfile_install(lock_file: Path, venv: Path) -> subprocess.CompletedProcess:
    """The Dockerfile's own install command, on `lock_file`, resolved for the image's Python 3.12 on x86_64
    Linux in the clean venv `venv` without installing (Docker cannot run here: README, Deploy)."""
    dockerfile = (lock.ROOT / "Dockerfile.volume_optimized").read_text().replace("\\\n", " ")
    (command,) = [part.strip() for line in dockerfile.splitlines() if line.startswith("RUN ")
                  for part in line[4:].split("&&") if "uv pip install" in part]
    args = shlex.split(command.replace('"$WORKER_LOCK"', shlex.quote(str(lock_file))))
    uv = lock.ROOT / ".venv" / "bin" / "uv"
    return subprocess.run([str(uv), *args[1:], "--dry-run", "--python", str(venv), "--python-version", "3.12",
                           "--python-platform", "x86_64-manylinux_2_28"], capture_output=True, text=True, timeout=300,
                          env=_uv_env(venv.parent))


def _uv_env(tmp_path: Path) -> dict[str, str]:
    """uv's caches (interpreters, indexes) in the test's folder, not HOME."""
    return {**os.environ, "UV_CACHE_DIR": str(tmp_path / "uv-cache")}


def test_the_images_install_step_takes_the_whole_lock_in_a_clean_venv(tmp_path: Path) -> None:
    dockerfile = (lock.ROOT / "Dockerfile.volume_optimized").read_text()
    uv = lock.ROOT / ".venv" / "bin" / "uv"
    image_uv = re.search(r"^FROM ghcr\.io/astral-sh/uv:(\S+) AS uv$", dockerfile, re.M).group(1)
    assert subprocess.run([str(uv), "--version"], capture_output=True, text=True,
                          env=_uv_env(tmp_path)).stdout.split()[1] == image_uv
    venv = tmp_path / "clean"
    subprocess.run([str(uv), "venv", "-q", str(venv)], check=True, timeout=120, env=_uv_env(tmp_path))
    run = _dockerfile_install(lock.LOCK, venv)
    assert run.returncode == 0, f"the image's install step fails (it needs PyPI): {run.stderr[-2000:]}"
    assert f"Would install {len(lock.pins(lock.LOCK.read_text()))} packages" in run.stderr, run.stderr[-2000:]

    # A lock missing one transitive package (tokenizers, which transformers needs) is refused, naming it.
    missing = re.sub(r"^tokenizers==.*?(?=^\S)", "", lock.LOCK.read_text(), flags=re.S | re.M)
    (tmp_path / "missing.lock").write_text(missing)
    run = _dockerfile_install(tmp_path / "missing.lock", venv)
    assert run.returncode != 0 and "no trusted hash was provided for: `tokenizers`" in " ".join(run.stderr.split())


def test_the_gpu_checks_carry_is_the_lock_without_what_the_machine_brings() -> None:
    text = lock.LOCK.read_text()
    carried = lock.carried_lock(text)
    kept = lock.pins(carried)
    assert {"diffusers", "transformers", "huggingface-hub", "tokenizers", "safetensors", "peft", "compel"} <= set(kept)
    assert not {"torch", "triton", "nvidia-cublas", "numpy", "botocore"} & set(kept)
    assert all(version == lock.pins(text)[name] for name, version in kept.items())
    assert carried.count("==") == len(kept) and all(f"{name}==" in carried for name in kept)
    assert all("--hash=sha256:" in block for block in lock.blocks(carried).values())  # pip's --require-hashes


def test_the_version_table_marks_what_differs_from_the_lock() -> None:
    import importlib.metadata

    pydantic = importlib.metadata.version("pydantic")
    fake = f"pydantic=={pydantic}\nsafetensors==0.0.1\nno-such-package==1.0\n"
    rows = {name: running for name, _, running, _ in lock.version_rows(fake)}
    assert rows == {"pydantic": pydantic, "safetensors": f"{importlib.metadata.version('safetensors')} DIFFERS",
                    "no-such-package": "missing"}


def test_without_python_312_the_venv_script_says_how_to_get_it(tmp_path: Path) -> None:
    """The tests run the image's Python: on a machine without one, one sentence naming what to install, no venv."""
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    script = tmp_path / "repo" / "scripts" / "setup_venv.sh"
    script.write_text((lock.ROOT / "scripts" / "setup_venv.sh").read_text())
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home")}
    if any(Path(folder, "python3.12").exists() for folder in env["PATH"].split(":")):
        pytest.skip("this machine has python3.12 in /usr/bin")
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.startswith("The tests run the image's Python 3.12 and none was found") and \
        "pyenv install 3.12" in run.stderr and run.stderr.count("\n") == 1
    assert not (tmp_path / "repo" / ".venv").exists()
