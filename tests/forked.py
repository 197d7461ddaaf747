"""prepare_volume.py in a process of its own, forked from a server that imported it and torch once.

A kill mid-write or a second writer needs a process other than the test's, and a fresh interpreter pays torch's
import each time (about 8 s of a core here). The forked process is as separate (its own pid, files and locks, a
SIGKILL ends it where it stands); what it does not repeat is the import, so no test that asserts what importing
prints or reads (the environment, sitecustomize) may use it. The server is started once a test process, with
that process's environment, and ends with it (its input closes).

    python tests/forked.py     # the server: one JSON request a line in, its exit status a line out
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KILLABLE_CALLS = ("pwrite", "replace")
_server: subprocess.Popen | None = None


def run_prepare(argv: list[str], kill_at: tuple[str, int] | None = None) -> tuple[int, str]:
    """`prepare_volume.main(argv)` in a forked process: its exit status and what it printed. With
    `kill_at=(call, n)` the process SIGKILLs itself at its n-th `os.pwrite` or `os.replace` (status -9)."""
    global _server
    if _server is None or _server.poll() is not None:
        _server = subprocess.Popen([sys.executable, __file__], cwd=ROOT, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
    assert _server.stdin is not None and _server.stdout is not None
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "output"
        _server.stdin.write(json.dumps({"argv": argv, "log": str(log), "kill_at": kill_at}) + "\n")
        _server.stdin.flush()
        # A status for another log is a reply to a request whose test was interrupted: not this one's.
        while (reply := _server.stdout.readline()) and json.loads(reply)["log"] != str(log):
            pass
        assert reply, f"the prepare server exited with {_server.wait()}"
        return json.loads(reply)["status"], log.read_text() if log.exists() else ""


def _serve() -> None:
    """Import once, then fork a process per request; one thread, so the fork copies no lock held elsewhere."""
    # What every request imports: prepare_volume, and the volume check's models built on the meta device (a tiny
    # volume's configs are not SDXL base 1.0's, whose tensors the check knows without them).
    import diffusers
    import transformers
    from transformers import conversion_mapping, core_model_loading  # noqa: F401

    import prepare_volume  # noqa: F401

    for library, names in ((diffusers, ("UNet2DConditionModel", "AutoencoderKL")),
                           (transformers, ("CLIPTextModel", "CLIPTextModelWithProjection"))):
        for name in names:
            getattr(library, name)

    for line in sys.stdin:
        request = json.loads(line)
        child = os.fork()
        if child == 0:
            _child(request["argv"], request["log"], request["kill_at"])
        _, wait_status = os.waitpid(child, 0)
        print(json.dumps({"log": request["log"], "status": os.waitstatus_to_exitcode(wait_status)}), flush=True)


def _child(argv: list[str], log: str, kill_at: list | None) -> None:
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(output, 1)
    os.dup2(output, 2)
    try:
        if kill_at is not None:
            _kill_at(*kill_at)
        import prepare_volume

        code = prepare_volume.main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _kill_at(call: str, number: int) -> None:
    assert call in KILLABLE_CALLS, call
    real = getattr(os, call)
    count = 0

    def counted(*args: object) -> object:
        nonlocal count
        count += 1
        if count == number:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)

    setattr(os, call, counted)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    _serve()
