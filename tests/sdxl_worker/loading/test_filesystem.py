"""Which filesystem holds the model: the mount table read right, network filesystems told from local disks."""

from __future__ import annotations

from pathlib import Path

import pytest

from dev.netfs import Network, mounted, unavailable
from sdxl_worker.loading.filesystem import Mount, mount_of

MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 253:1 / / rw,relatime - ext4 /dev/vda1 rw
40 27 0:50 / /runpod-volume rw,relatime - fuse.mfs mfs#10.0.0.5:9421 rw,user_id=0
41 27 0:51 / /runpod-volume/local rw - ext4 /dev/nvme0n1 rw
42 27 0:52 / /mnt/nfs rw - nfs4 server:/export rw
43 27 0:53 / /mnt/usb rw - fuseblk /dev/sdb1 rw
44 27 0:54 / /mnt/my\\040disk rw - xfs /dev/sdc rw
45 27 0:55 / /runpod-volumes rw - ext4 /dev/sdd rw
"""


@pytest.fixture
def mountinfo(tmp_path: Path) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(MOUNTINFO)
    return path


@pytest.mark.parametrize(("path", "mount", "network"), [
    ("/runpod-volume/photonicfusion-sdxl", Mount("/runpod-volume", "fuse.mfs"), True),  # RunPod: MooseFS's client
    ("/runpod-volume", Mount("/runpod-volume", "fuse.mfs"), True),
    ("/runpod-volume/local/model", Mount("/runpod-volume/local", "ext4"), False),  # the deepest mount wins
    ("/runpod-volumes/model", Mount("/runpod-volumes", "ext4"), False),  # a prefix of the name is not a parent
    ("/mnt/nfs/sdxl", Mount("/mnt/nfs", "nfs4"), True),
    ("/mnt/usb/sdxl", Mount("/mnt/usb", "fuseblk"), False),  # FUSE over a local disk
    ("/mnt/my disk/sdxl", Mount("/mnt/my disk", "xfs"), False),  # escaped spaces
    ("/opt/models", Mount("/", "ext4"), False),
])
def test_the_mount_holding_a_path(mountinfo: Path, path: str, mount: Mount, network: bool) -> None:
    found = mount_of(path, mountinfo)
    assert found == mount and found.network is network


def test_an_unreadable_mount_table_is_no_answer(tmp_path: Path) -> None:
    assert mount_of("/runpod-volume", tmp_path / "absent") is None


def test_symlinks_are_followed_to_the_mount_they_land_on(tmp_path: Path) -> None:
    link = tmp_path / "model"
    link.symlink_to("/proc")
    assert mount_of(link) == Mount("/proc", "proc")


@pytest.mark.slow
@pytest.mark.skipif(unavailable() is not None, reason=f"no FUSE here: {unavailable()}")
def test_the_simulated_network_volume_is_a_network_filesystem(tmp_path: Path) -> None:
    (tmp_path / "source").mkdir()
    with mounted(tmp_path / "source", tmp_path / "mnt", Network()) as mnt:
        assert mount_of(mnt).network
    assert not mount_of(tmp_path).network
