"""The test cache is huggingface_hub's own layout: its scanner and its offline resolution read it as theirs."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from huggingface_hub import get_cached_repo_tree, scan_cache_dir, snapshot_download, try_to_load_from_cache

from dev.hf_cache import cache_repo

REPO = "Baileyy/photonicfusion-sdxl"


def test_huggingface_hub_reads_the_cache_as_one_it_wrote(tmp_path: Path, tiny_volume_source: Path) -> None:
    cache = tmp_path / "hub"
    first = cache_repo(tiny_volume_source, cache, REPO)
    changed = tmp_path / "changed"
    shutil.copytree(tiny_volume_source, changed)
    (changed / "model_index.json").write_text((changed / "model_index.json").read_text() + "\n")
    second = cache_repo(changed, cache, REPO, revision="v2")
    scan = scan_cache_dir(cache)
    assert scan.warnings == []
    (repo,) = scan.repos
    files = sorted(p.relative_to(tiny_volume_source).as_posix() for p in tiny_volume_source.rglob("*") if p.is_file())
    assert {(r.commit_hash, frozenset(r.refs), r.nb_files) for r in repo.revisions} == {
        (first.name, frozenset({"main"}), len(files)), (second.name, frozenset({"v2"}), len(files))}
    assert sorted(f.path for f in get_cached_repo_tree(REPO, cache_dir=cache)) == files
    assert snapshot_download(REPO, cache_dir=cache, local_files_only=True) == str(first.resolve())
    unet = try_to_load_from_cache(REPO, "unet/diffusion_pytorch_model.safetensors", cache_dir=cache, revision="v2")
    weights = (tiny_volume_source / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert Path(os.path.realpath(unet)).name == hashlib.sha256(weights).hexdigest(), "LFS blobs: SHA-256"
    blobs = {os.path.realpath(path) for path in first.rglob("*") if path.is_file()}
    first_blobs = sum(Path(blob).stat().st_size for blob in blobs)
    assert repo.size_on_disk == first_blobs + (changed / "model_index.json").stat().st_size, \
        "the second revision adds one blob: the unchanged files' blobs are shared"
