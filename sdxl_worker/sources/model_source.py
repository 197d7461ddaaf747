"""MODEL_PATH resolved to the folder the volume check and the loader read, offline.

A folder is itself (a network volume, or a model baked into the image). A Hub id `ORG/NAME` or `ORG/NAME@REVISION`
is looked for in RunPod's model cache (the platform downloads the endpoint's "Model" there, onto the host, before
the worker starts), then in HF_HOME's cache, with huggingface_hub's own offline resolution (refs, snapshots, the
cached file listing that tells a complete snapshot from a cut one). Never a download: a repo in no cache is one
sentence naming where it looked and what to set. A snapshot's files are links into the repo's `blobs/`; a link
that leaves the repo's cache folder is refused, so a cache cannot point the worker at files elsewhere.
"""

from __future__ import annotations

import difflib
import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from sdxl_worker.loras.files import confined
from sdxl_worker.sentences import bounded

DEFAULT_MODEL_CACHE = "/runpod-volume/huggingface-cache/hub"
DEFAULT_REVISION = "main"
# A pipeline snapshot holds a few dozen files; a cache that lists far more is not walked for minutes at start.
MAX_SNAPSHOT_ENTRIES = 10_000
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w.][\w./-]*))?$")


class SourceError(ValueError):
    """MODEL_PATH names a Hub repo that no cache here serves; str() is the one sentence to log and reply with."""


@dataclass(frozen=True)
class ModelSource:
    """What served the model: `folder` is what the check and the loader read."""

    reference: str
    folder: Path
    kind: Literal["folder", "cache"]
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    cache_label: str | None = None  # "RunPod's model cache"
    cache_dir: Path | None = None  # the hub cache the snapshot was found in

    def describe(self) -> str:
        """The startup log's phrase for where the model is read from."""
        if self.kind == "folder":
            return f"the folder {self.folder}"
        return (f"Hugging Face repo {self.repo_id} (revision {self.revision}, commit {(self.commit or '?')[:12]}) "
                f"from {self.cache_label} {self.cache_dir}, snapshot {self.folder}")

    @property
    def label(self) -> str:
        """The reply's `model.source`: the folder, or `ORG/NAME@COMMIT`."""
        return str(self.folder) if self.kind == "folder" else f"{self.repo_id}@{self.commit}"

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "folder": str(self.folder), "cache_dir": self.cache_dir and str(self.cache_dir),
                "label": self.label}


def hub_reference(reference: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when `reference` names a Hub repo rather than a folder here, else None.

    `demo-volume/photonicfusion` with a typo is a path when a folder `demo-volume` is here: the check then names
    what that folder holds.
    """
    if os.path.isabs(reference) or os.path.exists(reference):
        return None
    match = _HUB_ID.match(reference)
    if match is None or os.path.isdir(reference.split("/", 1)[0]):
        return None
    return match["repo"], match["revision"]


def cache_refusal(folder: str | os.PathLike[str]) -> str | None:
    """Why prepare_volume must not write to `folder`: a Hub id, or a folder inside a hub cache's snapshots (the
    platform's cache, shared by every worker on the host); else None."""
    if hub_reference(str(folder)) is not None:
        return (f"{bounded(str(folder))} is a Hugging Face repo id, not a folder: prepare_volume writes folders, "
                "never into a model cache; name a folder on the network volume (e.g. /workspace/photonicfusion-sdxl "
                "on a pod)")
    parts = Path(os.path.realpath(folder)).parts
    if any(a.startswith("models--") and b in ("snapshots", "blobs") for a, b in itertools.pairwise(parts)):
        return (f"{bounded(str(folder))} is inside a Hugging Face cache (models--.../snapshots): prepare_volume never "
                "writes into a model cache, whose files are shared links; copy it out first (`cp -rL`) and prepare "
                "the copy")
    return None


def hf_home_cache(env: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache the libraries use here: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache's."""
    env = os.environ if env is None else env
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                              "huggingface")
    return Path(home).expanduser() / "hub"


def model_caches(model_cache: str, env: Mapping[str, str] | None = None) -> list[tuple[str, Path]]:
    """(label, folder) of each cache a Hub id is looked for in, in order."""
    caches = [("RunPod's model cache", Path(model_cache)), ("HF_HOME's cache", hf_home_cache(env))]
    return [(label, path) for i, (label, path) in enumerate(caches) if path not in [p for _, p in caches[:i]]]


def resolve_source(reference: str, model_cache: str = DEFAULT_MODEL_CACHE,
                   env: Mapping[str, str] | None = None) -> ModelSource:
    """Where `reference` (MODEL_PATH) is read from; SourceError for a Hub id that no cache here serves."""
    hub = hub_reference(reference)
    if hub is None:
        return ModelSource(reference, Path(reference), "folder")
    repo_id, revision = hub
    held = holding_cache(repo_id, model_cache, env)
    if held is not None:
        return _cached(reference, repo_id, revision, *held)
    looked = "; ".join(_looked(label, cache, repo_id) for label, cache in model_caches(model_cache, env))
    raise SourceError(f"Hugging Face repo {bounded(repo_id)} is in no model cache here ({looked}), and this worker "
                      f"never downloads: on RunPod set the endpoint's Model (cached models) to {bounded(repo_id)}, "
                      "or set MODEL_PATH to a model folder (a network volume's, or one baked into the image)")


def holding_cache(repo_id: str, model_cache: str,
                  env: Mapping[str, str] | None = None) -> tuple[str, Path, Path] | None:
    """(label, cache, the repo's folder in it) of the first cache holding `repo_id`, in model_caches' order."""
    for label, cache in model_caches(model_cache, env):
        storage = cached_repo(cache, repo_id)
        if storage.is_dir():
            return label, cache, storage
    return None


def cached_repo(cache: Path, repo_id: str) -> Path:
    """The folder a hub cache keeps `repo_id` in (huggingface_hub's name for it: models--ORG--NAME)."""
    from huggingface_hub.file_download import repo_folder_name

    return cache / repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_repo_ids(cache: Path) -> list[str] | None:
    """The model repos a hub cache holds, as `ORG/NAME`; None when there is no such folder."""
    try:
        held = sorted(entry.name for entry in os.scandir(cache) if entry.name.startswith("models--"))
    except OSError:
        return None
    return [name.removeprefix("models--").replace("--", "/") for name in held]


def _looked(label: str, cache: Path, repo_id: str) -> str:
    """Where a repo was looked for, with what that cache holds, and the likely repo when only the case differs."""
    names = cached_repo_ids(cache)
    if names is None:
        return f"{label} {cache}: no such folder"
    hint = difflib.get_close_matches(repo_id, names, n=1, cutoff=0.8)
    listing = ", ".join(bounded(name) for name in names[:10]) + (f", ... ({len(names)})" if len(names) > 10 else "")
    return (f"{label} {cache} holds {listing or 'no repo'}" + (f" (did you mean {hint[0]}?)" if hint else ""))


def _cached(reference: str, repo_id: str, revision: str | None, label: str, cache: Path,
            storage: Path) -> ModelSource:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError, LocalEntryNotFoundError

    wanted = revision or DEFAULT_REVISION
    where = f"{label} {cache}"
    try:
        folder = Path(snapshot_download(repo_id, revision=wanted, cache_dir=cache, local_files_only=True))
    except IncompleteSnapshotError:
        raise SourceError(f"{where} holds an incomplete snapshot of {repo_id} at revision {wanted}: "
                          f"{_missing(repo_id, wanted, cache, storage)}; the platform's download did not finish "
                          "(a new worker gets a fresh cache)") from None
    except LocalEntryNotFoundError:
        folder = _only_snapshot(storage) if revision is None else None
        if folder is None:
            refs = _listing(storage / "refs")
            raise SourceError(f"{where} holds {repo_id} but not its revision {wanted!r}: refs "
                              f"{', '.join(refs) or 'none'}; snapshots "
                              f"{', '.join(s[:12] for s in _listing(storage / 'snapshots')) or 'none'}") from None
    problem = _snapshot_problem(folder, storage)
    if problem:
        raise SourceError(f"{where}: {repo_id}'s snapshot {folder.name[:12]} {problem}")
    return ModelSource(reference, folder, "cache", repo_id, wanted, folder.name, label, cache)


def _only_snapshot(storage: Path) -> Path | None:
    """A cache copied without its refs/ holding one snapshot: that snapshot is the repo's only revision here."""
    snapshots = _listing(storage / "snapshots")
    return storage / "snapshots" / snapshots[0] if len(snapshots) == 1 and not _listing(storage / "refs") else None


def _listing(folder: Path) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(folder))
    except OSError:
        return []


def _missing(repo_id: str, revision: str, cache: Path, storage: Path) -> str:
    """The files the cached listing of the repo names that its snapshot lacks, a few of them by name."""
    from huggingface_hub import get_cached_repo_tree

    commit = (storage / "refs" / revision).read_text().strip() if (storage / "refs" / revision).is_file() else revision
    names = [item.path for item in get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache)]
    missing = [name for name in names if not (storage / "snapshots" / commit / name).is_file()]
    return f"{len(missing)} of its {len(names)} files are missing, e.g. {', '.join(map(bounded, missing[:3]))}"


def _snapshot_problem(folder: Path, storage: Path) -> str | None:
    """Why the snapshot cannot be served as it is: a link out of the repo's cache folder, or to a missing blob."""
    seen = 0
    for directory, subfolders, files in os.walk(folder):
        for name in subfolders + files:
            seen += 1
            if seen > MAX_SNAPSHOT_ENTRIES:
                return f"holds over {MAX_SNAPSHOT_ENTRIES:,} files, far more than a pipeline"
            path = Path(directory, name)
            if not path.is_symlink():
                continue
            inside = path.relative_to(folder)
            shown = bounded(str(inside))
            real = confined(storage, str(Path("snapshots", folder.name, inside)))
            if real is None:
                return (f"links {shown} to {bounded(os.path.realpath(path), 200)}, outside the repo's cache folder: "
                        "refused")
            if not real.exists():
                return (f"links {shown} to {bounded(str(real.relative_to(os.path.realpath(storage))))}, which is "
                        "missing: the platform's download did not finish (a new worker gets a fresh cache)")
    return None
