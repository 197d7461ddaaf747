"""The test session's write guard: tests write only under their temp folders.

Before the session, HOME points at an empty temp folder and torch's compile caches at another; after it, the
guard lists what appeared in HOME, under /runpod-volume, or in the repository (git's view, ignored files
included), and the session fails if anything did. Interpreter and test-runner artifacts (__pycache__) are not
a test's writes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

NOT_TEST_WRITES = ("__pycache__/", ".venv/")


class WriteGuard:
    def __init__(self, repository: Path, home: Path, volume: Path = Path("/runpod-volume")) -> None:
        self.repository, self.volume = repository, volume
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.before = self._state()

    def violations(self) -> list[str]:
        """What appeared since the guard started, where no test may write."""
        after = self._state()
        return sorted(after - self.before)

    def _state(self) -> set[str]:
        state = {f"HOME/{path.relative_to(self.home)}" for path in self.home.rglob("*")}
        if self.volume.exists():
            state.add(f"{self.volume} exists")
            state.update(str(path) for path in self.volume.rglob("*"))
        status = subprocess.run(["git", "status", "--porcelain", "--ignored=matching", "--untracked-files=normal"],
                                cwd=self.repository, capture_output=True, text=True, check=True).stdout
        for line in status.splitlines():
            path = line[3:]
            if not any(part in path for part in NOT_TEST_WRITES):
                state.add(f"repository: {line}")
        return state


def isolate(guard: WriteGuard, caches: Path) -> None:
    """Point HOME and torch's compile caches at temp folders for this process and every process it starts."""
    os.environ["HOME"] = str(guard.home)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(caches / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(caches / "triton")
