"""Textual-inversion embeddings on the volume: where they are, and whether a file is an SDXL embedding at all.

Civitai's SDXL format (the one A1111 and ComfyUI read): a safetensors file holding `clip_l` (vectors x 768, for
the first text encoder) and `clip_g` (vectors x 1280, for the second), the same number of vectors in each. A prompt
uses one by its file's stem under EMBEDDINGS_DIR. Everything is decided from the header and the model's two
text-encoder widths, so the volume check lists the folder without importing torch; a resolved path must stay
inside the folder, as a LoRA's must.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from sdxl_worker.loras.files import FLOAT_DTYPES, available, confined, signature_of
from sdxl_worker.sentences import bounded
from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, SafetensorsInfo, read_safetensors_header

DEFAULT_EMBEDDINGS_DIR = "/runpod-volume/embeddings"
PARTS = ("clip_l", "clip_g")  # the tensors, in the order of SDXL's text encoders
SD15_MARKS = ("emb_params", "string_to_param", "string_to_token")  # SD 1.5's formats (one 768-wide tensor)
MAX_FILE_BYTES = 16 * 2**20  # 75 vectors of both widths in float32 are 0.6 MB


class EmbeddingSettings(BaseModel):
    """Where textual-inversion embeddings live and how many a job and the worker may use; README's environment rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    embeddings_dir: str = Field(DEFAULT_EMBEDDINGS_DIR, min_length=1, description=(
        "The folder of SDXL textual-inversion embeddings (`NAME.safetensors`, `clip_l` and `clip_g` tensors): a "
        "prompt's word equal to a NAME uses that embedding; nothing outside the folder is read."))
    embeddings_max_per_job: int = Field(8, ge=1, le=64, description="Embeddings one job's prompts may use.")
    embedding_max_vectors: int = Field(75, ge=1, le=225, description=(
        "Most vectors (tokens) one embedding may hold; 75 fill one of CLIP's windows."))
    embeddings_cache: int = Field(64, ge=0, le=1000, description=(
        "Embeddings kept loaded in the text encoders between jobs, the least recently used dropped first."))


class EmbeddingFileError(ValueError):
    """An embedding a prompt used that cannot be applied; str() is the one sentence to answer with."""


@dataclass(frozen=True)
class EmbeddingFile:
    """An SDXL embedding as its header describes it."""

    name: str
    path: Path
    vectors: int
    signature: tuple[int, int, int, int]  # see LoraFile.signature
    info: SafetensorsInfo


def names(folder: Path) -> list[str]:
    """The embedding names in `folder`: its visible `.safetensors` files' stems; [] if it cannot be read."""
    return available(folder)


def inspect(folder: Path, name: str, widths: tuple[int, int], max_vectors: int) -> EmbeddingFile:
    """Check `folder`/NAME.safetensors from its header against the text encoders' `widths` (first, second):
    EmbeddingFileError with the reason if it is not an SDXL embedding this model can use."""
    path = confined(folder, f"{name}.safetensors")
    if path is None:
        raise EmbeddingFileError(f"Embedding {name!r} links outside the embeddings folder; only files inside "
                                 f"{folder} are read.")
    signature = signature_of(path)
    if signature is None or not path.is_file():
        raise EmbeddingFileError(f"Embedding {name!r} cannot be read (it is no longer a file in {folder}).")
    if signature[0] > MAX_FILE_BYTES:
        raise EmbeddingFileError(f"Embedding {name!r} is {signature[0] / 1e6:,.0f} MB: an embedding is a few "
                                 "hundred KB; this is not one.")
    try:
        info = read_safetensors_header(path)
    except SafetensorsHeaderError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise EmbeddingFileError(f"Embedding {name!r} is not a readable safetensors file: {reason}.") from exc
    entries = info.entries
    if set(PARTS) - set(entries):
        if any(mark in key for key in entries for mark in SD15_MARKS) or (
                len(entries) == 1 and next(iter(entries.values())).shape[-1:] == (768,)):
            raise EmbeddingFileError(f"Embedding {name!r} is an SD 1.5 embedding (one 768-wide tensor); an SDXL "
                                     "embedding holds clip_l and clip_g tensors.")
        found = ", ".join(bounded(key, 40) for key in list(entries)[:3]) or "none"
        raise EmbeddingFileError(f"Embedding {name!r} holds no clip_l and clip_g tensors (Civitai's SDXL format); "
                                 f"its tensors: {found}.")
    shapes = [list(entries[part].shape) for part in PARTS]
    if any(entries[part].dtype not in FLOAT_DTYPES for part in PARTS):
        raise EmbeddingFileError(f"Embedding {name!r} holds tensors that are not floating point.")
    if any(len(shape) != 2 for shape in shapes) or shapes[0][0] != shapes[1][0] or shapes[0][0] < 1:
        raise EmbeddingFileError(f"Embedding {name!r} has clip_l {shapes[0]} and clip_g {shapes[1]}: each must be "
                                 "vectors x width, the same number of vectors in both.")
    if (shapes[0][1], shapes[1][1]) != widths:
        raise EmbeddingFileError(f"Embedding {name!r} is for text encoders {shapes[0][1]} and {shapes[1][1]} wide; "
                                 f"this model's are {widths[0]} and {widths[1]} (an embedding for another model).")
    if shapes[0][0] > max_vectors:
        raise EmbeddingFileError(f"Embedding {name!r} holds {shapes[0][0]} vectors, over this endpoint's limit of "
                                 f"{max_vectors} (EMBEDDING_MAX_VECTORS).")
    return EmbeddingFile(name, path, shapes[0][0], signature, info)


def scan(folder: Path, widths: tuple[int, int], max_vectors: int) -> tuple[list[EmbeddingFile], dict[str, str]]:
    """Every embedding in `folder`, checked: the usable ones, and each broken one's name with its reason."""
    good: list[EmbeddingFile] = []
    broken: dict[str, str] = {}
    for name in names(folder):
        try:
            good.append(inspect(folder, name, widths, max_vectors))
        except EmbeddingFileError as exc:
            broken[name] = str(exc)
    return good, broken
