"""Put a model folder into a Hugging Face cache the way huggingface_hub's downloads lay it out, offline.

RunPod's cached models are Hugging Face repos that the platform downloads into `/runpod-volume/huggingface-cache/hub`
before a worker starts; tests and the demo need such a cache without a network. The layout is the library's:
`models--ORG--NAME/blobs/<id>` holds each file once (git's blob id for small files, the SHA-256 for LFS ones, as
the Hub names them), `snapshots/<commit>/<path>` are relative symbolic links into `blobs/`, `refs/<revision>`
holds the commit, and `trees/<commit>.json` is the file listing huggingface_hub 2 keeps to tell a complete
snapshot from a cut one. tests/dev/test_hf_cache.py checks huggingface_hub's own scanner and offline resolution
read it as theirs.

    python -m dev.hf_cache MODEL_FOLDER CACHE ORG/NAME [--revision main] [--commit HEX40]

prints the snapshot folder. A second revision of the same repo shares the blobs that did not change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".msgpack")


def blob_id(path: Path) -> str:
    """The name the Hub gives a file's blob: the SHA-256 of an LFS file, else git's blob SHA-1."""
    if path.suffix in LFS_SUFFIXES:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    return _git_blob(path.read_bytes())


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    """What git stores for an LFS file: the Hub's tree listing gives this pointer's blob id."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def commit_of(folder: Path, revision: str) -> str:
    """A stable 40-hex commit for a folder's contents at a revision (a real repo's commit is as opaque)."""
    digest = hashlib.sha1(revision.encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + str(path.stat().st_size).encode())
    return digest.hexdigest()


def cache_repo(folder: Path, cache: Path, repo_id: str, revision: str = "main", commit: str | None = None,
               listing: bool = True) -> Path:
    """Put every file under `folder` into `cache` as revision `revision` of `repo_id`; the snapshot folder.

    `listing=False` leaves out `trees/<commit>.json`, as a cache written by huggingface_hub < 2 or by hand.
    """
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    commit = commit or commit_of(folder, revision)
    snapshot = storage / "snapshots" / commit
    entries: dict[str, dict[str, object]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        blob = blob_id(path)
        target = storage / "blobs" / blob
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():  # the same folder cached again: its links made anew
            link.unlink()
        link.symlink_to(os.path.relpath(target, link.parent))
        size = path.stat().st_size
        entries[name] = ({"size": size, "blob_id": _git_blob(_lfs_pointer(blob, size)), "lfs_sha256": blob,
                          "lfs_size": size} if path.suffix in LFS_SUFFIXES else {"size": size, "blob_id": blob})
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    if listing:
        (storage / "trees").mkdir(exist_ok=True)
        (storage / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": entries}))
    return snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the model folder to cache")
    parser.add_argument("cache", type=Path, help="the hub cache folder (RunPod's: "
                        "/runpod-volume/huggingface-cache/hub)")
    parser.add_argument("repo_id", help="ORG/NAME")
    parser.add_argument("--revision", default="main")
    parser.add_argument("--commit", help="40 hex digits (default: derived from the files)")
    args = parser.parse_args(argv)
    print(cache_repo(args.folder, args.cache, args.repo_id, args.revision, args.commit))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
