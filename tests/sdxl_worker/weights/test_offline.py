"""Offline switches and the refusal of hub ids."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdxl_worker.weights.offline import HubIdRefused, enforce_offline, require_local_path


@pytest.mark.parametrize("reference", ["stabilityai/stable-diffusion-xl-base-1.0", "someone/PhotonicFusion_SDXL"])
def test_hub_ids_refused(reference: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HubIdRefused, match="Set MODEL_PATH to the model folder"):
        require_local_path(reference)


def test_local_paths_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models" / "sdxl").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert require_local_path("models/sdxl") == Path("models/sdxl")
    assert require_local_path("models/sdxll") == Path("models/sdxll"), "a typo inside a folder here is a path"
    assert require_local_path("/runpod-volume/photonicfusion-sdxl") == Path("/runpod-volume/photonicfusion-sdxl")


def test_enforce_offline_also_flips_an_imported_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    enforce_offline()
    assert constants.HF_HUB_OFFLINE is True
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
