"""The simulated network volume: the folder's own bytes, read-only, every byte read counted, and the network's
latency and bandwidth felt by whoever reads through it."""

from __future__ import annotations

import errno
import time
from pathlib import Path

import pytest

from dev.netfs import Network, mounted, read_stats, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None, reason=f"no FUSE here: {unavailable()}")]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "source"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "weights.bin").write_bytes(bytes(range(256)) * 16384)  # 4 MiB
    (folder / "model_index.json").write_text("{}")
    return folder


def test_serves_the_folder_read_only_and_counts_every_byte(source: Path, tmp_path: Path) -> None:
    with mounted(source, tmp_path / "mnt", Network()) as mnt:
        assert sorted(p.name for p in mnt.iterdir()) == [".netfs-stats", "model_index.json", "unet"]
        assert (mnt / "unet" / "weights.bin").read_bytes() == (source / "unet" / "weights.bin").read_bytes()
        with pytest.raises(OSError) as refused:
            (mnt / "model_index.json").write_text("changed")
        assert refused.value.errno == errno.EROFS and (source / "model_index.json").read_text() == "{}"
        # Opened again, the file is read again: FUSE's default caching drops its pages at every open.
        (mnt / "unet" / "weights.bin").read_bytes()
        stats = read_stats(mnt)
    assert stats["files"] == {"unet/weights.bin": 2 * 4 * 2**20}
    assert stats["streams"] == {"unet/weights.bin": 2}


def test_direct_io_reads_reach_the_network_every_time(source: Path, tmp_path: Path) -> None:
    with mounted(source, tmp_path / "mnt", Network(direct_io=True)) as mnt, \
            (mnt / "unet" / "weights.bin").open("rb") as handle:
        handle.read(1 << 20)
        handle.seek(0)
        handle.read(1 << 20)
        assert read_stats(mnt)["files"] == {"unet/weights.bin": 2 << 20}


def test_latency_and_bandwidth_are_felt(source: Path, tmp_path: Path) -> None:
    with mounted(source, tmp_path / "mnt", Network(latency_s=0.05, direct_io=True)) as mnt, \
            (mnt / "model_index.json").open("rb") as handle:
        started = time.monotonic()
        handle.read()
        assert time.monotonic() - started >= 0.05  # one round trip
    with mounted(source, tmp_path / "mnt2", Network(total_bytes_s=20e6)) as mnt:
        started = time.monotonic()
        (mnt / "unet" / "weights.bin").read_bytes()
        assert time.monotonic() - started >= 4 * 2**20 / 20e6 * 0.95  # 4 MiB at 20 MB/s
