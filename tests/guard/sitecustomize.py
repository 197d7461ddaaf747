"""Imported by every Python process of the guarantee tests (they put this folder on PYTHONPATH).

Two tripwires that the worker must never touch: any connection or name lookup beyond loopback fails
with an error and is recorded, and every file opened for writing, folder made or file renamed
outside GUARD_ALLOWED is recorded. The test reads GUARD_LOG afterwards. (strace, where the tests use
it, also sees writes made by C code, which this audit hook cannot.)
"""

from __future__ import annotations

import os
import socket
import sys

_LOG = os.environ.get("GUARD_LOG")
_ALLOWED = (*(p for p in os.environ.get("GUARD_ALLOWED", "").split(os.pathsep) if p), "/dev/", "/proc/")
_ALLOWED = (*_ALLOWED, os.path.abspath(_LOG)) if _LOG else _ALLOWED
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_LOOPBACK = ("127.", "::1", "localhost", "0.0.0.0")


def _record(kind: str, detail: str) -> None:
    if not _LOG:
        return
    # os.open/os.write, not open(): open() would re-enter the audit hook.
    fd = os.open(_LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{kind}\t{os.getpid()}\t{detail}\n".encode())
    finally:
        os.close(fd)


def _is_loopback(address: object) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    return not isinstance(host, str) or host.startswith(_LOOPBACK) or host == ""


_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _guarded_connect(self: socket.socket, address: object) -> None:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        _record("connect", repr(address))
        raise OSError(101, f"guard: outbound connection to {address!r} refused")
    return _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        _record("connect", repr(address))
        return 101
    return _connect_ex(self, address)


def _guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
    if isinstance(host, (str, bytes)) and not _is_loopback(host.decode() if isinstance(host, bytes) else host):
        _record("resolve", repr(host))
        raise socket.gaierror(-2, f"guard: name lookup of {host!r} refused")
    return _getaddrinfo(host, *args, **kwargs)


def _audit(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
    elif event in ("os.mkdir", "os.rename"):
        path, writing = args[0], True
    else:
        return
    path = os.fsdecode(path)
    if writing and not os.path.abspath(path).startswith(_ALLOWED):
        _record("write", os.path.abspath(path))


if _LOG:
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    socket.getaddrinfo = _guarded_getaddrinfo
    sys.addaudithook(_audit)
