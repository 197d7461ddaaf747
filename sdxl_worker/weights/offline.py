"""Make the Hugging Face libraries unable to reach a hub, before they are imported.

The worker this project replaces filled its container disk with a download fallback. Here every
load is local: these variables make huggingface_hub, transformers and diffusers refuse any network
call (huggingface_hub reads HF_HUB_OFFLINE once, at import, so the order matters), and a model
reference that is not an existing local folder is refused before any library sees it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DISABLE_TELEMETRY": "1",
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubIdRefused(ValueError):
    """A model reference that names a hub repository instead of a local folder."""


def enforce_offline() -> None:
    """Set the offline switches; also flip huggingface_hub's constant if it was imported already."""
    os.environ.update(OFFLINE_ENV)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def hub_id_refusal(reference: str) -> str | None:
    """Why `reference` is refused when it looks like a hub repository id rather than a folder here; else None."""
    if os.path.isabs(reference) or os.path.exists(reference) or not _HUB_ID.match(reference):
        return None
    # `demo-volume/photonicfusion` with a typo: a folder here holds it, so it is a path (the check then names
    # what that folder holds), not a hub repository.
    if os.path.isdir(reference.split("/", 1)[0]):
        return None
    return (f"{reference!r} looks like a Hugging Face Hub id and is no folder here; hub ids are not accepted: this "
            "worker never downloads. Set MODEL_PATH to the model folder on the network volume, e.g. "
            "/runpod-volume/photonicfusion-sdxl")


def require_local_path(reference: str | os.PathLike[str]) -> Path:
    """Return `reference` as a Path, refusing what looks like a hub id rather than a folder here."""
    refusal = hub_id_refusal(str(reference))
    if refusal:
        raise HubIdRefused(refusal)
    return Path(reference)
