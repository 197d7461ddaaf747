"""A network volume on this machine: a read-only FUSE view of a local folder that answers like a network filesystem.

RunPod's network volumes are network filesystems: every read request pays a round trip, one stream moves at a
fraction of the volume's aggregate bandwidth, and many mount through FUSE, whose default caching drops a file's
pages when it is opened again. A loader tuned on local NVMe can read every byte twice there, or crawl through
small memory-map faults, and nothing on a local disk shows it. This filesystem serves the folder's real bytes
with a settable latency per request, bandwidth per open file (a stream) and in all, largest request, and the
kernel's page cache on or off (direct I/O), and counts the bytes read from each file: `MOUNT/.netfs-stats` (JSON,
read fresh at every open) says how many times a load read its weights.

    python -m dev.netfs SOURCE MOUNTPOINT [--latency-ms 3] [--stream-mbps 100] [--total-mbps 400]
                        [--max-request-kb 1024] [--direct-io]

runs it in the foreground until unmounted (`fusermount3 -u MOUNTPOINT`); `mounted()` does both for a test or a
benchmark. It needs /dev/fuse, fusermount3 (Debian's fuse3) and mfusepy (requirements-dev.txt); `unavailable()`
says which is missing.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATS = ".netfs-stats"
STAT_KEYS = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime_ns", "st_mtime_ns", "st_ctime_ns")


@dataclass(frozen=True)
class Network:
    """How the simulated volume answers. Zero bandwidth means unlimited."""

    latency_s: float = 0.0
    stream_bytes_s: float = 0.0
    total_bytes_s: float = 0.0
    max_request: int = 1 << 20
    direct_io: bool = False

    def describe(self) -> str:
        cache = "direct I/O" if self.direct_io else "page cache"
        return (f"{self.latency_s * 1e3:g} ms, {self.stream_bytes_s / 1e6:g} MB/s a stream, "
                f"{self.total_bytes_s / 1e6:g} MB/s in all, {self.max_request >> 10} KiB requests, {cache}")


def _operations_class() -> type:
    import mfusepy

    class NetworkVolume(mfusepy.Operations):
        use_ns = True

        def __init__(self, root: Path, network: Network) -> None:
            self.root = root
            self.network = network
            self.mutex = threading.Lock()  # not `lock`: that name is FUSE's file-locking operation
            self.link_free = 0.0  # when the shared link has sent everything reserved so far
            self.stream_free: dict[int, float] = {}  # the same, per open file
            self.bytes_read: Counter[str] = Counter()
            self.handles: dict[str, set[int]] = {}  # the opens each file was read through: its streams
            self.opens = 0
            self.open_number: dict[int, int] = {}  # descriptor -> which open it is (descriptors are reused)
            self.requests = 0

        def _path(self, path: str) -> str:
            return os.path.join(self.root, path.lstrip("/"))

        def _stats(self) -> bytes:
            with self.mutex:
                files = dict(sorted(self.bytes_read.items()))
                streams = {name: len(handles) for name, handles in sorted(self.handles.items())}
                return json.dumps({"bytes": sum(files.values()), "requests": self.requests, "files": files,
                                   "streams": streams}).encode()

        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            if path == f"/{STATS}":
                return {"st_mode": 0o100444, "st_nlink": 1, "st_size": 0}
            try:
                st = os.lstat(self._path(path))
            except OSError as exc:
                raise mfusepy.FuseOSError(exc.errno or errno.EIO) from exc
            return {key: getattr(st, key) for key in STAT_KEYS}

        def readdir(self, path: str, fh: Any) -> list[str]:
            extra = [STATS] if path == "/" else []
            return [".", "..", *os.listdir(self._path(path)), *extra]

        def readlink(self, path: str) -> str:
            return os.readlink(self._path(path))

        def open(self, path: str, fi: Any) -> int:
            if fi.flags & (os.O_WRONLY | os.O_RDWR):
                raise mfusepy.FuseOSError(errno.EROFS)
            if path == f"/{STATS}":
                fi.fh, fi.direct_io = 0, True
                return 0
            fi.fh = os.open(self._path(path), os.O_RDONLY)
            fi.direct_io = self.network.direct_io
            with self.mutex:
                self.opens += 1
                self.open_number[fi.fh] = self.opens
            return 0

        def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
            if fi.fh == 0:
                return self._stats()[offset:offset + size]
            data = os.pread(fi.fh, size, offset)
            # The kernel's requests are at most 128 KiB here; larger ones would be cut to the volume's largest.
            for start in range(0, max(len(data), 1), self.network.max_request):
                self._pace(fi.fh, min(self.network.max_request, len(data) - start))
            with self.mutex:
                self.bytes_read[path.lstrip("/")] += len(data)
                self.handles.setdefault(path.lstrip("/"), set()).add(self.open_number[fi.fh])
                self.requests += 1
            return data

        def _pace(self, stream: int, size: int) -> None:
            """Hold a request as the network would: a round trip, then its turn on its stream and on the link
            (requests of one open file share its stream's rate; all share the link's)."""
            net = self.network
            now = time.monotonic()
            done = now + net.latency_s
            with self.mutex:
                if net.stream_bytes_s:
                    self.stream_free[stream] = max(self.stream_free.get(stream, 0.0), now) + size / net.stream_bytes_s
                    done = max(done, self.stream_free[stream])
                if net.total_bytes_s:
                    self.link_free = max(self.link_free, now) + size / net.total_bytes_s
                    done = max(done, self.link_free)
            if done > now:
                time.sleep(done - now)

        def release(self, path: str, fi: Any) -> int:
            if fi.fh:
                with self.mutex:
                    self.stream_free.pop(fi.fh, None)
                os.close(fi.fh)
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            st = os.statvfs(self.root)
            return {key: getattr(st, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                                                     "f_files", "f_ffree", "f_namemax")}

    return NetworkVolume


def serve(source: Path, mountpoint: Path, network: Network) -> None:
    """Mount and serve until unmounted (blocks)."""
    import mfusepy

    operations = _operations_class()(source.resolve(), network)
    # max_threads: parallel requests, as a network volume serves them; libfuse 3.14 fails its loop without it.
    mfusepy.FUSE(operations, str(mountpoint), raw_fi=True, foreground=True, ro=True, max_threads=32,
                 fsname="netfs")


def unavailable() -> str | None:
    """Why a FUSE mount cannot be made here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: mfusepy found no libfuse
        return f"mfusepy unusable: {exc}"
    return None


@contextmanager
def mounted(source: Path, mountpoint: Path, network: Network, timeout_s: float = 20.0) -> Iterator[Path]:
    """`source` served at `mountpoint` by a separate process for the duration; unmounted after."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "dev.netfs", str(source), str(mountpoint),
               "--latency-ms", str(network.latency_s * 1e3), "--stream-mbps", str(network.stream_bytes_s / 1e6),
               "--total-mbps", str(network.total_bytes_s / 1e6), "--max-request-kb", str(network.max_request >> 10)]
    if network.direct_io:
        command.append("--direct-io")
    # The server's messages go to a file: a pipe nobody reads fills up and stops the server mid-request.
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], stderr=log, text=True)
        deadline = time.monotonic() + timeout_s
        while not os.path.ismount(mountpoint):
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                server.wait()
                log.seek(0)
                raise RuntimeError(f"netfs did not mount {mountpoint}: {log.read().strip()[-500:]}")
            time.sleep(0.05)
        try:
            yield mountpoint
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False, capture_output=True)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def read_stats(mountpoint: Path) -> dict[str, Any]:
    """Bytes read so far through the mount, in all and per file (paths relative to the source), and per file how
    many opens read it (the simulator's streams)."""
    return json.loads((mountpoint / STATS).read_bytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--stream-mbps", type=float, default=0.0, help="MB/s per open file; 0: unlimited")
    parser.add_argument("--total-mbps", type=float, default=0.0, help="MB/s for all files together; 0: unlimited")
    parser.add_argument("--max-request-kb", type=int, default=1024)
    parser.add_argument("--direct-io", action="store_true", help="no page cache: every read reaches the network")
    args = parser.parse_args(argv)
    network = Network(args.latency_ms / 1e3, args.stream_mbps * 1e6, args.total_mbps * 1e6, args.max_request_kb << 10,
                      args.direct_io)
    serve(args.source, args.mountpoint, network)
    return 0


if __name__ == "__main__":
    sys.exit(main())
