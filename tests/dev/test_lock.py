"""The image's lock, requirements.txt and the CPU test venv in step: the tests run the image's versions of every
package the two share (torch's CPU build aside)."""

from __future__ import annotations

import importlib.metadata
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
