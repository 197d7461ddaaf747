"""Stopping one running job from outside its thread: RunPod's stop signal (a cancelled, expired or timed-out
request) or the worker's own JOB_TIMEOUT_S, seen at the end of each sampling step."""

from __future__ import annotations

import threading
import time


class JobStopped(Exception):
    """The job was stopped between two sampling steps; str() is the reply's sentence."""

    def __init__(self, reason: str, step: int, total: int) -> None:
        super().__init__(f"stopped after step {step} of {total}: {reason}")
        self.reason, self.step, self.total = reason, step, total


class JobControl:
    """One job's stop flag (set from any thread) and its deadline, checked by the sampling loop at each step."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self._stop = threading.Event()
        self._reason = ""
        self.timeout_s = timeout_s
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._reason = reason
            self._stop.set()

    def check(self, step: int, total: int) -> None:
        """Raise JobStopped when the job was stopped or ran past its bound; `step` of `total` are done."""
        if not self._stop.is_set() and self.deadline is not None and time.monotonic() > self.deadline:
            self.stop(f"it ran past JOB_TIMEOUT_S ({self.timeout_s:g} s)")
        if self._stop.is_set():
            raise JobStopped(self._reason, step, total)
