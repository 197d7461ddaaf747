"""MODEL_PATH as a Hub id, resolved offline in caches laid out as huggingface_hub lays them out (dev/hf_cache.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dev.hf_cache import cache_repo
from sdxl_worker.sources import SourceError, hub_reference, resolve_source

REPO = "Baileyy/photonicfusion-sdxl"


@pytest.fixture
def caches(tmp_path: Path, tiny_volume_source: Path) -> tuple[Path, Path, dict[str, str]]:
    """RunPod's model cache holding the tiny model as REPO's main, and an empty HF_HOME."""
    runpod = tmp_path / "runpod-volume" / "huggingface-cache" / "hub"
    cache_repo(tiny_volume_source, runpod, REPO)
    return runpod, tmp_path / "hf-home", {"HF_HOME": str(tmp_path / "hf-home")}


def storage(cache: Path, repo: str = REPO) -> Path:
    return cache / f"models--{repo.replace('/', '--')}"


def test_a_hub_id_resolves_to_the_snapshot_that_refs_main_names(caches: tuple[Path, Path, dict[str, str]],
                                                                tiny_volume_source: Path) -> None:
    runpod, _, env = caches
    source = resolve_source(REPO, str(runpod), env)
    commit = (storage(runpod) / "refs" / "main").read_text()
    assert (source.kind, source.repo_id, source.revision, source.commit) == ("cache", REPO, "main", commit)
    assert source.folder == (storage(runpod) / "snapshots" / commit).resolve()
    assert (source.folder / "unet" / "config.json").read_bytes() == \
        (tiny_volume_source / "unet" / "config.json").read_bytes()
    assert "RunPod's model cache" in source.describe() and commit[:12] in source.describe()


def test_a_revision_picks_its_own_snapshot_and_blobs_are_shared(caches: tuple[Path, Path, dict[str, str]],
                                                               tmp_path: Path, tiny_volume_source: Path) -> None:
    runpod, _, env = caches
    newer = tmp_path / "newer"
    shutil.copytree(tiny_volume_source, newer)
    (newer / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "EulerDiscreteScheduler"}')
    new_commit = cache_repo(newer, runpod, REPO, revision="v2").name
    old = resolve_source(REPO, str(runpod), env)
    new = resolve_source(f"{REPO}@v2", str(runpod), env)
    assert new.commit == new_commit != old.commit and new.revision == "v2"
    assert "EulerDiscrete" in (new.folder / "scheduler" / "scheduler_config.json").read_text()
    assert resolve_source(f"{REPO}@{old.commit}", str(runpod), env).folder == old.folder, "a commit is a revision"
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert os.path.realpath(new.folder / unet) == os.path.realpath(old.folder / unet), "an unchanged file: one blob"


def test_hf_homes_cache_serves_when_runpods_lacks_the_repo(tmp_path: Path, tiny_volume_source: Path) -> None:
    home = tmp_path / "hf-home"
    cache_repo(tiny_volume_source, home / "hub", REPO)
    source = resolve_source(REPO, str(tmp_path / "no-runpod-cache"), {"HF_HOME": str(home)})
    assert (source.cache_label, source.cache_dir) == ("HF_HOME's cache", home / "hub")
    assert resolve_source(REPO, str(tmp_path / "none"), {"HF_HUB_CACHE": str(home / "hub")}).folder == source.folder


def test_a_repo_in_no_cache_is_one_sentence_saying_where_it_looked_and_what_to_set(
        caches: tuple[Path, Path, dict[str, str]]) -> None:
    runpod, home, env = caches
    with pytest.raises(SourceError) as refused:
        resolve_source("Baileyy/photonicfusion-sdxl-v2", str(runpod), env)
    sentence = str(refused.value)
    for needed in (str(runpod), f"{home / 'hub'}: no such folder", f"holds {REPO}", "never downloads",
                   "endpoint's Model"):
        assert needed in sentence
    assert "\n" not in sentence and len(sentence) < 800
    with pytest.raises(SourceError, match=f"did you mean {REPO}"):
        resolve_source(REPO.lower(), str(runpod), env)


def test_a_missing_revision_names_the_revisions_the_cache_has(caches: tuple[Path, Path, dict[str, str]]) -> None:
    runpod, _, env = caches
    with pytest.raises(SourceError, match=r"holds Baileyy/photonicfusion-sdxl but not its revision 'v9': refs main"):
        resolve_source(f"{REPO}@v9", str(runpod), env)


def test_an_incomplete_snapshot_names_the_files_it_lacks(caches: tuple[Path, Path, dict[str, str]]) -> None:
    runpod, _, env = caches
    source = resolve_source(REPO, str(runpod), env)
    (source.folder / "vae" / "config.json").unlink()  # an interrupted download: the listing names it, no link
    with pytest.raises(SourceError, match=r"incomplete snapshot .* 1 of its \d+ files are missing, e\.g\. "
                                          r"vae/config\.json; the platform's download did not finish"):
        resolve_source(REPO, str(runpod), env)


def test_a_link_to_a_missing_blob_is_an_unfinished_download(tmp_path: Path, tiny_volume_source: Path) -> None:
    cache = tmp_path / "cache"
    snapshot = cache_repo(tiny_volume_source, cache, REPO, listing=False)  # no listing to tell it by
    os.unlink(os.path.realpath(snapshot / "unet" / "config.json"))
    with pytest.raises(SourceError, match=r"links unet/config\.json to blobs/\w+, which is missing"):
        resolve_source(REPO, str(cache), {"HF_HOME": str(tmp_path / "h")})


def test_a_link_leaving_the_repos_cache_folder_is_refused(caches: tuple[Path, Path, dict[str, str]],
                                                          tmp_path: Path) -> None:
    runpod, _, env = caches
    source = resolve_source(REPO, str(runpod), env)
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    link = source.folder / "scheduler" / "scheduler_config.json"
    link.unlink()
    link.symlink_to(outside)
    with pytest.raises(SourceError, match=r"links scheduler/scheduler_config\.json to .*elsewhere\.json, outside the "
                                          r"repo's cache folder: refused"):
        resolve_source(REPO, str(runpod), env)


def test_a_cache_without_refs_serves_its_only_snapshot_but_not_a_named_revision(
        caches: tuple[Path, Path, dict[str, str]]) -> None:
    runpod, _, env = caches
    shutil.rmtree(storage(runpod) / "refs")
    assert resolve_source(REPO, str(runpod), env).kind == "cache"
    with pytest.raises(SourceError, match="refs none"):
        resolve_source(f"{REPO}@main", str(runpod), env)


@pytest.mark.parametrize(("reference", "expected"), [
    (REPO, (REPO, None)), (f"{REPO}@v1.0", (REPO, "v1.0")), ("/runpod-volume/photonicfusion-sdxl", None),
    ("photonicfusion-sdxl", None), ("a/b/c", None)])
def test_what_counts_as_a_hub_id(reference: str, expected: tuple[str, str | None] | None) -> None:
    assert hub_reference(reference) == expected


def test_a_folder_is_itself(tiny_volume_source: Path) -> None:
    source = resolve_source(str(tiny_volume_source), "/nonexistent", {})
    assert (source.kind, source.folder) == ("folder", tiny_volume_source)
