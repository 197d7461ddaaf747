"""The prefetch readers read every byte, in chunks, and stop when the loader is done."""

from __future__ import annotations

from pathlib import Path

from sdxl_worker.loading.prefetch import Prefetcher


def test_reads_every_byte_of_every_file(tmp_path: Path) -> None:
    files = []
    for n, size in enumerate((0, 1, 5_000_000, 123_457)):
        path = tmp_path / f"f{n}"
        path.write_bytes(bytes(size))
        files.append(path)
    with Prefetcher(files, readers=3, chunk_bytes=1_000_000) as prefetcher:
        prefetcher.wait()
    assert prefetcher.bytes_read == 5_123_458
    assert len(prefetcher.chunks) == 1 + 5 + 1


def test_missing_file_is_left_to_the_loader(tmp_path: Path) -> None:
    present = tmp_path / "present"
    present.write_bytes(b"x" * 10)
    with Prefetcher([tmp_path / "absent", present]) as prefetcher:
        prefetcher.wait()
    assert prefetcher.bytes_read == 10


def test_exit_stops_the_readers(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(bytes(64_000_000))
    with Prefetcher([big], readers=1, chunk_bytes=1_000_000) as prefetcher:
        pass
    assert prefetcher.bytes_read <= 64_000_000
    assert not any(thread.is_alive() for thread in prefetcher._threads)
