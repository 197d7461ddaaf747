"""Which filesystem a path lives on, from the kernel's mount table: a network volume is read differently.

RunPod mounts network volumes through FUSE (MooseFS's client); other hosts use NFS, SMB, Ceph and the like. On
those every request crosses the network and one stream moves at a fraction of the volume's bandwidth, so the
loader reads the weights once, in parallel streams (loading/streamed.py); on a local disk the libraries' own loader
with the prefetch readers measured within 1.1x of a raw read (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
# fuseblk is FUSE over a local block device (ntfs-3g, exfat): a local disk.
NETWORK_TYPES = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "9p", "afs",
                           "beegfs", "gpfs", "ocfs2", "gfs2"})


@dataclass(frozen=True)
class Mount:
    """The mount holding a path: where it is mounted and its filesystem type as the kernel names it."""

    mount_point: str
    fs_type: str

    @property
    def network(self) -> bool:
        base = self.fs_type.split(".")[0]
        return (base == "fuse" and self.fs_type != "fuseblk") or base in NETWORK_TYPES


def mount_of(path: str | os.PathLike[str], mountinfo: Path = MOUNTINFO) -> Mount | None:
    """The mount `path` lives on (symlinks resolved), or None where the mount table cannot be read."""
    target = os.path.realpath(path)
    try:
        lines = mountinfo.read_text(errors="replace").splitlines()
    except OSError:
        return None
    best: Mount | None = None
    for line in lines:
        fields, _, after = line.partition(" - ")
        parts, rest = fields.split(), after.split()
        if len(parts) < 5 or not rest:
            continue
        point = _unescape(parts[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = Mount(point, rest[0])
    return best


def _unescape(field: str) -> str:
    """Mount points in mountinfo write space, tab, newline and backslash as octal escapes."""
    for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, char)
    return field
