"""Make the Hugging Face libraries unable to reach a hub, before they are imported.

The worker this project replaces filled its container disk with a download fallback. Here every
load is local: these variables make huggingface_hub, transformers and diffusers refuse any network
call (huggingface_hub reads HF_HUB_OFFLINE once, at import, so the order matters). A Hub id is never handed to
a library: sdxl_worker/sources resolves it to a cached snapshot folder first, or refuses it.
"""

from __future__ import annotations

import os
import sys

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DISABLE_TELEMETRY": "1",
}


def enforce_offline() -> None:
    """Set the offline switches; also flip huggingface_hub's constant if it was imported already."""
    os.environ.update(OFFLINE_ENV)
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
