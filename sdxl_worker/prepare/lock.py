"""One prepare_volume writer per model folder at a time.

Every file is written under a temporary name and renamed, so a reader never sees a partial file; two writers of the
same folder would still replace each other's files (and each report "the volume is as before"). A lock file next to
the model folder, created with O_EXCL (atomic on local disks, NFS and FUSE network volumes alike), says which run
holds it; a second run is refused with one sentence. A lock left by a run that died on this machine (its process
gone) is taken over; one from another machine is named with the way to clear it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdxl_worker.prepare.fp16_set import PrepareError
from sdxl_worker.sentences import bounded
from sdxl_worker.weights.files import read_text_bounded


def lock_path(model_path: Path) -> Path:
    return model_path.parent / f".{model_path.name}.prepare-lock"


@contextmanager
def writer_lock(model_path: Path) -> Iterator[Path]:
    """Hold the model folder's writer lock for the block; PrepareError if another run holds it."""
    path = lock_path(model_path)
    host = socket.gethostname()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and holder[0] == host and not _alive(holder[1]):
                path.unlink(missing_ok=True)  # its run died here: nothing holds it
                continue
            who = f"process {holder[1]} on {bounded(holder[0], 60)} since {holder[2]}" if holder else "another run"
            raise PrepareError(f"{model_path} is being written by {who} (lock {path}): wait for it to finish, or "
                               "delete the lock if no prepare_volume run is active") from None
        except OSError as error:  # a read-only volume, a folder this user may not write
            raise PrepareError(f"cannot write next to {model_path} ({error.strerror}): prepare_volume writes the "
                               "new files on the volume itself; run it where the volume is mounted read-write "
                               "(a pod's /workspace)") from None
    else:
        raise PrepareError(f"{model_path}: the lock {path} could not be taken")
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{host} {os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _holder(path: Path) -> tuple[str, int, str] | None:
    """The host, process id and start time a lock file records; None if it cannot be read as one."""
    try:
        host, pid, since = read_text_bounded(path, 4096).split()
        return host, int(pid), since
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
