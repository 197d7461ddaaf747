"""The session's write guard sees a test's write into HOME, into the repository, or onto /runpod-volume."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.write_guard import WriteGuard


def test_the_guard_names_what_appeared(tmp_path: Path) -> None:
    repository, volume = tmp_path / "repo", tmp_path / "runpod-volume"
    repository.mkdir()
    subprocess.run(["git", "init", "-q", str(repository)], check=True)
    (repository / ".gitignore").write_text("bench-out/\n")
    guard = WriteGuard(repository, tmp_path / "home", volume)
    assert guard.violations() == []
    (guard.home / ".cache").mkdir()
    (repository / "bench-out").mkdir()
    (repository / "bench-out" / "x.json").write_text("{}")
    (repository / "stray.txt").write_text("x")
    (repository / "__pycache__").mkdir()
    (repository / "__pycache__" / "m.pyc").write_text("x")
    (volume / ".cache").mkdir(parents=True)
    assert guard.violations() == sorted(["HOME/.cache", "repository: !! bench-out/", "repository: ?? stray.txt",
                                         f"{volume} exists", f"{volume / '.cache'}"])
