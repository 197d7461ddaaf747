"""Textual-inversion embeddings from EMBEDDINGS_DIR: a prompt's word that names one draws with it, weighting around it
applies, anything else is the plain job bit for bit, and every bad file is one sentence while the worker keeps
serving."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dev.embedding import write_embedding
from sdxl_worker.embeddings import runtime
from sdxl_worker.embeddings.files import EmbeddingSettings
from sdxl_worker.serving.worker import Worker
from tests.helpers import cpu_settings, decode

JOB = {"width": 256, "height": 256, "num_inference_steps": 2, "seed": 7}


@pytest.fixture(scope="module")
def folder(tiny_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("embeddings")
    write_embedding(tiny_volume_source, folder / "grainy.safetensors", vectors=3, seed=1)
    write_embedding(tiny_volume_source, folder / "bad-hands.safetensors", vectors=1, seed=2)
    write_embedding(tiny_volume_source, folder / "wide.safetensors", vectors=75, seed=4)
    save_file({"emb_params": torch.randn(2, 768)}, folder / "sd15.safetensors")
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, folder / "full-size.safetensors")
    save_file({"clip_l": torch.full((1, 16), float("nan")), "clip_g": torch.zeros(1, 32)}, folder / "nan.safetensors")
    (folder / "cut.safetensors").write_bytes((folder / "grainy.safetensors").read_bytes()[:100])
    outside = tmp_path_factory.mktemp("outside") / "elsewhere.safetensors"
    write_embedding(tiny_volume_source, outside, seed=3)
    os.symlink(outside, folder / "escape.safetensors")
    return folder


@pytest.fixture(scope="module")
def served(tiny_volume_source: Path, folder: Path) -> Worker:
    worker = Worker.start(cpu_settings(tiny_volume_source, embeddings=EmbeddingSettings(
        embeddings_dir=str(folder), embeddings_max_per_job=2)), warmup=False)
    assert worker.pipe is not None, worker.startup_error
    return worker


def run(worker: Worker, prompt: str, **fields: object) -> dict:
    return worker.handle({"id": "ti", "input": {**JOB, "prompt": prompt, **fields}})


def pixels(reply: dict) -> np.ndarray:
    assert "images" in reply, reply
    return np.asarray(decode(reply["images"][0]).convert("RGB")).astype(int)


def test_a_word_naming_an_embedding_draws_with_it_and_the_reply_says_so(served: Worker, worker: Worker) -> None:
    plain = run(worker, "a lighthouse, grainy")  # a worker with no embeddings folder: the word is text
    styled = run(served, "a lighthouse, grainy")
    assert styled["embeddings"] == ["grainy"] and plain["embeddings"] == []
    assert np.abs(pixels(styled) - pixels(plain)).mean() > 1
    assert styled["prompt_tokens"]["prompt"] == served.prompt_encoder.count_tokens("a lighthouse,") + 3  # 3 vectors
    off = run(served, "a lighthouse, grainy", embeddings=False)
    assert off["embeddings"] == [] and off["images"] == plain["images"]  # the word as text, bit for bit
    assert run(served, "a lighthouse")["images"] == run(worker, "a lighthouse")["images"]  # nothing named: plain


def test_the_placeholders_are_unreachable_from_a_prompts_text(served: Worker, worker: Worker) -> None:
    """A job that spells the worker's own placeholders draws what a worker that never loaded an embedding draws:
    the same job does not depend on earlier jobs."""
    assert run(served, "a lighthouse, grainy")["embeddings"] == ["grainy"]  # loaded: its placeholders exist
    token = served.embeddings.loaded["grainy"].token
    spelled = f"a lighthouse, {token} {token.upper()}_1 ({token}_2:1.3)"
    plain = run(worker, spelled)
    in_negative = run(worker, "a lighthouse", negative_prompt=spelled)
    for prompt, fields, reference in ((spelled, {"embeddings": False}, plain), (spelled, {}, plain),
                                      ("a lighthouse", {"negative_prompt": spelled}, in_negative)):
        reply = run(served, prompt, **fields)
        assert reply["embeddings"] == [] and reply["images"] == reference["images"], fields
        assert reply["prompt_tokens"] == reference["prompt_tokens"]


def test_a_prompt_expanded_past_its_character_cap_in_tokens_is_refused(served: Worker) -> None:
    """One 75-vector embedding repeated: 2,025 tokens from a 135-character prompt would be a job many times the
    plain one's time. Refused in one sentence, and the worker serves the next job."""
    reply = run(served, "wide " * 27)
    assert reply == {"error": "The prompt is 2,025 tokens with its embeddings expanded (wide: 75 tokens each), over "
                              "the 2,000 a prompt may have: use them fewer times, or send embeddings: false."}
    assert run(served, "a lighthouse", negative_prompt="wide " * 27)["error"].startswith("The negative prompt is ")
    assert run(served, "wide " * 26)["prompt_tokens"]["prompt"] == 1950  # under the cap: served
    assert run(served, "wide " * 27, embeddings=False)["prompt_tokens"]["prompt"] == 27


def test_only_a_whole_word_uses_it_and_weighting_around_it_applies(served: Worker) -> None:
    assert run(served, "a lighthouse, ungrainy grainyness")["embeddings"] == []
    assert run(served, "a lighthouse. grainy.")["embeddings"] == ["grainy"]  # a sentence's full stop is no part
    weighted, unweighted = run(served, "a lighthouse, (grainy:1.6)"), run(served, "a lighthouse, grainy")
    assert weighted["embeddings"] == ["grainy"]
    assert np.abs(pixels(weighted) - pixels(unweighted)).mean() > 0.1
    both = run(served, "a lighthouse, grainy", negative_prompt="bad-hands, blurry")
    assert both["embeddings"] == ["bad-hands", "grainy"]
    long = run(served, ", ".join(["a lighthouse on a cliff at dusk"] * 12) + ", grainy", clip_skip=1)
    assert long["embeddings"] == ["grainy"] and long["prompt_tokens"]["prompt"] > 77


def test_the_next_plain_job_is_bit_for_bit_the_one_before(served: Worker) -> None:
    before = run(served, "a lighthouse, (fog:1.2)")
    run(served, "a lighthouse, grainy, bad-hands")
    assert run(served, "a lighthouse, (fog:1.2)")["images"] == before["images"]


def test_an_embedding_changed_on_the_volume_is_loaded_again(served: Worker, tiny_volume_source: Path,
                                                           folder: Path) -> None:
    write_embedding(tiny_volume_source, folder / "changing.safetensors", seed=4)
    first = run(served, "a lighthouse, changing")
    write_embedding(tiny_volume_source, folder / "changing.safetensors", seed=5, vectors=2)
    second = run(served, "a lighthouse, changing")
    assert first["embeddings"] == second["embeddings"] == ["changing"]
    assert first["images"] != second["images"]


@pytest.mark.parametrize(("word", "sentence"), [
    ("sd15", "Embedding 'sd15' is an SD 1.5 embedding (one 768-wide tensor); an SDXL embedding holds clip_l and "
             "clip_g tensors."),
    ("full-size", "Embedding 'full-size' is for text encoders 768 and 1280 wide; this model's are 16 and 32 (an "
                  "embedding for another model)."),
    ("nan", "Embedding 'nan' holds vectors that are not finite (NaN or Inf)."),
    ("escape", "Embedding 'escape' links outside the embeddings folder; only files inside"),
    ("cut", "Embedding 'cut' is not a readable safetensors file"),
])
def test_a_bad_embedding_is_one_sentence_and_the_worker_keeps_serving(served: Worker, word: str,
                                                                      sentence: str) -> None:
    reply = run(served, f"a lighthouse, {word}")
    assert set(reply) == {"error"} and reply["error"].startswith(sentence) and len(reply["error"]) < 300
    assert "images" in run(served, "a lighthouse, grainy")


def test_more_embeddings_than_a_job_may_use_is_refused(served: Worker, tiny_volume_source: Path,
                                                      folder: Path) -> None:
    write_embedding(tiny_volume_source, folder / "film.safetensors", seed=6)
    reply = run(served, "grainy, bad-hands", negative_prompt="film")
    assert reply == {"error": "The prompts use 3 embeddings (bad-hands, film, grainy), over this endpoint's limit "
                              "of 2 per job (EMBEDDINGS_MAX_PER_JOB); send embeddings: false to use the words as "
                              "text."}


def test_a_file_added_within_the_folders_time_tick_is_found(served: Worker, tiny_volume_source: Path,
                                                           folder: Path) -> None:
    """A folder's modification time moves in ticks (up to seconds on some network filesystems): a file added in
    the same tick as the one before leaves it as it was, and the next job still finds the file."""
    write_embedding(tiny_volume_source, folder / "tick-a.safetensors", seed=7)
    assert run(served, "a lighthouse, tick-a").get("embeddings") == ["tick-a"]
    stamp = folder.stat().st_mtime_ns
    write_embedding(tiny_volume_source, folder / "tick-b.safetensors", seed=8)
    os.utime(folder, ns=(folder.stat().st_atime_ns, stamp))  # the same tick
    assert run(served, "a lighthouse, tick-b").get("embeddings") == ["tick-b"]


def test_a_settled_folder_is_listed_once_not_at_every_job(tiny_volume_source: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    write_embedding(tiny_volume_source, tmp_path / "grainy.safetensors", seed=1)
    listed: list[Path] = []
    real_names = runtime.names

    def counted(folder: Path) -> list[str]:
        listed.append(folder)
        return real_names(folder)

    monkeypatch.setattr(runtime, "names", counted)
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr(runtime, "time", SimpleNamespace(monotonic=lambda: clock.now))
    embeddings = runtime.PromptEmbeddings(EmbeddingSettings(embeddings_dir=str(tmp_path)))
    assert embeddings._names() == {"grainy"} and embeddings._names() == {"grainy"}
    assert len(listed) == 2  # within the tick the folder's time was first seen in: listed at each job
    clock.now += runtime.STAMP_TICK_S
    for _ in range(3):
        embeddings._names()
    assert len(listed) == 3  # one listing past the tick settles it
    write_embedding(tiny_volume_source, tmp_path / "bad-hands.safetensors", seed=2)
    os.utime(tmp_path, ns=(tmp_path.stat().st_atime_ns, tmp_path.stat().st_mtime_ns + 10**9))  # a later tick
    assert embeddings._names() == {"grainy", "bad-hands"} and len(listed) == 4
