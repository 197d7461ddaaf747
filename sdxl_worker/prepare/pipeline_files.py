"""The files of an SDXL diffusers folder other than weights: model_index.json, the scheduler's config, both
tokenizers and each model's config.json, from SDXL base 1.0's (shipped in sdxl_worker/assets) or another folder.

PhotonicFusion SDXL, like most SDXL fine-tunes, keeps SDXL base 1.0's configs and tokenizers, so a single-file
checkpoint becomes a diffusers folder with these and its own weights, with nothing fetched from the hub.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sdxl_worker.volume.sdxl import MODEL_COMPONENTS
from sdxl_worker.weights.files import read_text_bounded

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "sdxl-base-1.0"
TOKENIZERS = ("tokenizer", "tokenizer_2")


class ConfigFolderError(ValueError):
    """A --config folder lacks a file the diffusers folder needs; the message names it."""


def model_config(component: str, config_dir: Path | None = None) -> dict[str, object]:
    """A model component's config.json: SDXL base 1.0's, or `config_dir`'s."""
    path = ASSETS / f"{component}.config.json" if config_dir is None else config_dir / component / "config.json"
    return json.loads(read_text_bounded(path))


def write_pipeline_files(folder: Path, config_dir: Path | None = None) -> None:
    """Write everything but the weights into `folder` (which exists): each model's config.json included."""
    if config_dir is not None:
        _check_config_folder(config_dir)
    source = ASSETS if config_dir is None else config_dir
    shutil.copyfile(source / "model_index.json", folder / "model_index.json")
    (folder / "scheduler").mkdir()
    scheduler = Path("scheduler_config.json") if config_dir is None else Path("scheduler/scheduler_config.json")
    shutil.copyfile(source / scheduler, folder / "scheduler" / "scheduler_config.json")
    for tokenizer in TOKENIZERS:
        target = folder / tokenizer
        if config_dir is None:
            shutil.copytree(ASSETS / tokenizer, target)
            for name in ("vocab.json", "merges.txt"):
                shutil.copyfile(ASSETS / "clip_tokenizer" / name, target / name)
        else:
            target.mkdir()
            for path in sorted((config_dir / tokenizer).iterdir()):
                if path.is_file():
                    shutil.copyfile(path, target / path.name)
    for component in MODEL_COMPONENTS:
        (folder / component).mkdir()
        config = model_config(component, config_dir)
        (folder / component / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _check_config_folder(config_dir: Path) -> None:
    needed = [Path("model_index.json"), Path("scheduler/scheduler_config.json"),
              *(Path(c) / "config.json" for c in MODEL_COMPONENTS), *(Path(t) for t in TOKENIZERS)]
    missing = [str(p) for p in needed if not (config_dir / p).exists()]
    if missing:
        raise ConfigFolderError(f"--config {config_dir} is not a diffusers SDXL folder: it lacks {', '.join(missing)}")
