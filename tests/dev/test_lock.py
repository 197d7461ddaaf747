"""The image's lock, requirements.txt and the CPU test venv in step: the tests run the image's versions of every
package the two share (torch's CPU build aside)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from dev import lock


def test_requirements_lock_and_constraints_agree() -> None:
    assert lock.problems() == []
    locked = lock.pins(lock.LOCK.read_text())
    assert len(locked) > 100, "every package the image installs, transitive ones included"
    for floating in ("huggingface-hub", "tokenizers", "botocore", "triton"):
        assert floating in locked, floating


def test_the_test_venv_runs_the_images_versions() -> None:
    wanted = lock.pins(lock.CONSTRAINTS.read_text())
    cpu = lock.pins((lock.ROOT / "requirements-cpu.txt").read_text())
    assert {name: version for name, version in cpu.items() if name != "torch"} == \
        {name: wanted[name] for name in cpu if name != "torch"}, "requirements-cpu.txt pins what the image locks"
    drift = {}
    for name, version in wanted.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # needed only on the image's Python (a marker), or by a part the tests do not install
        if installed != version:
            drift[name] = (version, installed)
    assert drift == {}, f"the venv differs from the lock (locked, installed): {drift}; run bash scripts/setup_venv.sh"


@pytest.mark.parametrize("change", ["requirements", "lock pin", "hash", "constraints"])
def test_each_kind_of_drift_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    files = {name: tmp_path / path.name for name, path in
             (("REQUIREMENTS", lock.REQUIREMENTS), ("LOCK", lock.LOCK), ("CONSTRAINTS", lock.CONSTRAINTS))}
    for name, path in files.items():
        path.write_text(getattr(lock, name).read_text())
        monkeypatch.setattr(lock, name, path)
    if change == "requirements":
        files["REQUIREMENTS"].write_text(files["REQUIREMENTS"].read_text().replace("peft==0.21.0", "peft==0.22.0"))
        expected = ["requirements.lock was not made from this requirements.txt",
                    "requirements.txt pins peft==0.22.0, the lock has 0.21.0"]
    elif change == "lock pin":
        text = files["LOCK"].read_text().replace("\npeft==0.21.0", "\npeft==0.20.0")
        files["LOCK"].write_text(text)
        expected = ["requirements.txt pins peft==0.21.0, the lock has 0.20.0", "constraints-cpu.txt differs"]
    elif change == "hash":
        text = files["LOCK"].read_text()
        start = text.index("\npeft==0.21.0")
        block_end = text.index("\n    # via", start)
        files["LOCK"].write_text(text[:start] + "\npeft==0.21.0" + text[block_end:])
        expected = ["requirements.lock has a package without a hash"]
    else:
        files["CONSTRAINTS"].write_text(files["CONSTRAINTS"].read_text().replace("peft==0.21.0", "peft==0.20.0"))
        expected = ["constraints-cpu.txt differs from requirements.lock"]
    found = lock.problems()
    assert all(any(problem.startswith(words) for problem in found) for words in expected), found


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
