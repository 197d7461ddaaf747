"""Long and weighted prompts: A1111's syntax read as written, every token encoded, plain prompts untouched."""

from __future__ import annotations

import pytest
import torch

from sdxl_worker.contract.prompts import CHUNK_TOKENS, PromptEncoder, weighted_fragments
from sdxl_worker.serving.worker import Worker

LONG = ", ".join(f"ornament {i} of the tower" for i in range(60))  # about 300 tokens


@pytest.mark.parametrize(("prompt", "fragments"), [
    ("a (red:1.5) car", [("a ", 1.0), ("red", 1.5), (" car", 1.0)]),
    ("a (red) car", [("a ", 1.0), ("red", 1.1), (" car", 1.0)]),
    ("a [red] car", [("a ", 1.0), ("red", 1 / 1.1), (" car", 1.0)]),
    ("((red)) car", [("red", 1.1 * 1.1), (" car", 1.0)]),
    ("(a (b:2) c:0.5) d", [("a ", 0.5), ("b", 1.0), (" c", 0.5), (" d", 1.0)]),
    (r"a \(literal\) paren", [("a (literal) paren", 1.0)]),
    ("open (unclosed", [("open ", 1.0), ("unclosed", 1.1)]),
    ("stray ) and ] and : stay text", [("stray ) and ] and : stay text", 1.0)]),
])
def test_a1111_syntax_becomes_weighted_fragments(prompt: str, fragments: list) -> None:
    found = weighted_fragments(prompt)
    assert [t for t, _ in found] == [t for t, _ in fragments]
    assert [w for _, w in found] == pytest.approx([w for _, w in fragments])


@pytest.fixture(scope="module")
def encoder(worker: Worker) -> PromptEncoder:
    return worker.prompt_encoder


def test_a_plain_prompt_under_77_tokens_goes_to_the_pipeline_as_text(encoder: PromptEncoder) -> None:
    encoded = encoder.encode("a lighthouse at dusk", "blurry", weighting=True)
    assert encoded.kwargs == {"prompt": "a lighthouse at dusk", "negative_prompt": "blurry", "clip_skip": None}
    assert encoded.tokens == {"prompt": 4, "negative_prompt": 1}


def test_every_token_of_a_long_prompt_is_encoded(encoder: PromptEncoder) -> None:
    encoded = encoder.encode(LONG, None, weighting=True)
    tokens = encoded.tokens["prompt"]
    assert tokens > 4 * CHUNK_TOKENS - 10
    chunks = -(-tokens // CHUNK_TOKENS)
    assert encoded.kwargs["prompt_embeds"].shape[1] == 77 * chunks
    assert encoded.kwargs["pooled_prompt_embeds"].shape[0] == 1


def test_the_tail_of_a_long_prompt_changes_the_image(worker: Worker) -> None:
    """What stock diffusers would cut off (everything after CLIP's first 77 tokens) reaches the image here."""
    head = worker.prompt_encoder.pipe.tokenizer.decode(
        worker.prompt_encoder.pipe.tokenizer(LONG, add_special_tokens=False).input_ids[:CHUNK_TOKENS])
    job = {"width": 256, "height": 256, "num_inference_steps": 2, "seed": 5}
    full = worker.handle({"id": "long", "input": {"prompt": LONG, **job}})
    cut = worker.handle({"id": "cut", "input": {"prompt": head, **job}})
    assert full["prompt_tokens"]["prompt"] > 250 and full["prompt_tokens"]["dropped"] == 0
    assert cut["prompt_tokens"]["prompt"] <= CHUNK_TOKENS
    assert full["images"] != cut["images"]


def test_weights_move_the_embedding_further_the_further_they_are_from_1(encoder: PromptEncoder) -> None:
    def embeds(prompt: str) -> torch.Tensor:
        return encoder.encode(prompt, None, weighting=True).kwargs.get("prompt_embeds")

    plain = encoder.encode("a red car", "x", weighting=True)
    assert "prompt" in plain.kwargs  # no weights: text, as before
    base = embeds("a (red:1.0001) car")
    small, large, down = embeds("a (red:1.2) car"), embeds("a (red:1.6) car"), embeds("a [red] car")
    assert 0 < (small - base).norm() < (large - base).norm()
    assert torch.dot((small - base).flatten(), (large - base).flatten()) > 0
    assert (down - base).norm() > 0


def test_weighting_off_keeps_parentheses_as_text(encoder: PromptEncoder) -> None:
    encoded = encoder.encode("a (red:1.5) car", None, weighting=False)
    assert encoded.kwargs == {"prompt": "a (red:1.5) car", "negative_prompt": None, "clip_skip": None}
    assert encoded.tokens["prompt"] > encoder.encode("a (red:1.5) car", None, weighting=True).tokens["prompt"]


def test_a_long_negative_prompt_and_a_short_prompt_pad_to_one_length(encoder: PromptEncoder) -> None:
    encoded = encoder.encode("a lighthouse", LONG, weighting=True)
    assert encoded.kwargs["prompt_embeds"].shape == encoded.kwargs["negative_prompt_embeds"].shape
    assert encoded.kwargs["negative_pooled_prompt_embeds"].shape == encoded.kwargs["pooled_prompt_embeds"].shape


ABSENT = object()
PROMPTS = [LONG, "a cat", "a (red:1.3) cat", "()"]
NEGATIVES = [ABSENT, None, "", "  ", "blurry", "[]", LONG, "(grain:1.4)"]


@pytest.mark.parametrize("negative", NEGATIVES)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_every_prompt_and_negative_prompt_combination_generates(worker: Worker, prompt: str,
                                                                negative: object) -> None:
    """Long, short, weighted, empty or absent (an empty negative prompt with a long prompt once failed with an
    IndexError; `()` and `[]` weigh nothing and leave no text)."""
    job = {"prompt": prompt, "width": 256, "height": 256, "num_inference_steps": 1, "seed": 1}
    if negative is not ABSENT:
        job["negative_prompt"] = negative
    reply = worker.handle({"id": "combination", "input": job})
    assert "error" not in reply and len(reply["images"]) == 1, reply


@pytest.mark.parametrize("negative", [n for n in NEGATIVES if n is not ABSENT])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_every_combination_encodes_to_one_length_without_weighting(encoder: PromptEncoder, prompt: str,
                                                                   negative: str | None) -> None:
    encoded = encoder.encode(prompt, negative, weighting=False)
    if "prompt_embeds" in encoded.kwargs and negative is not None:
        assert encoded.kwargs["prompt_embeds"].shape == encoded.kwargs["negative_prompt_embeds"].shape
    else:
        assert encoded.kwargs.get("prompt", prompt) == prompt


def _diffusers_embeds(worker: Worker, prompt: str, clip_skip: int | None) -> torch.Tensor:
    with torch.inference_mode():
        return worker.pipe.encode_prompt(prompt, do_classifier_free_guidance=False, clip_skip=clip_skip)[0]


@pytest.mark.parametrize("clip_skip", [None, 1, 2])
def test_clip_skip_through_compel_is_diffusers_own(worker: Worker, encoder: PromptEncoder, clip_skip: int | None,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A weighted or long prompt goes through compel, which has no clip_skip: the layers it reads must be the ones
    diffusers' SDXL pipeline reads for the same clip_skip, on both encoders."""
    monkeypatch.setattr("sdxl_worker.contract.prompts.CHUNK_TOKENS", 0)  # this short prompt through compel too
    prompt = "a lighthouse at dusk"
    embeds = encoder.encode(prompt, None, weighting=True, clip_skip=clip_skip).kwargs["prompt_embeds"]
    torch.testing.assert_close(embeds, _diffusers_embeds(worker, prompt, clip_skip))


def test_clip_skip_changes_a_long_prompt_and_leaves_the_next_job_as_it_was(encoder: PromptEncoder) -> None:
    before = encoder.encode(f"(a lighthouse:1.3), {LONG}", None, weighting=True).kwargs
    skipped = encoder.encode(f"(a lighthouse:1.3), {LONG}", None, weighting=True, clip_skip=2).kwargs
    after = encoder.encode(f"(a lighthouse:1.3), {LONG}", None, weighting=True).kwargs
    assert skipped["prompt_embeds"].shape == before["prompt_embeds"].shape
    assert (skipped["prompt_embeds"] - before["prompt_embeds"]).abs().mean() > 1e-3
    torch.testing.assert_close(skipped["pooled_prompt_embeds"], before["pooled_prompt_embeds"])  # the last layer's
    torch.testing.assert_close(after["prompt_embeds"], before["prompt_embeds"], rtol=0, atol=0)


def test_clip_skip_reaches_the_pipeline_for_a_plain_prompt_and_changes_the_image(worker: Worker) -> None:
    job = {"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 4}
    plain, skipped = (worker.handle({"id": "t", "input": {**job, **extra}}) for extra in ({}, {"clip_skip": 1}))
    assert plain["images"] != skipped["images"]
    assert worker.prompt_encoder.encode(job["prompt"], None, weighting=True, clip_skip=1).kwargs["clip_skip"] == 1


def test_clip_skip_past_the_model_s_layers_is_one_sentence(worker: Worker) -> None:
    reply = worker.handle({"id": "t", "input": {"prompt": "a lighthouse", "clip_skip": 3}})
    assert reply == {"error": "Invalid input: input: clip_skip 3 is past this model's text encoders: at most 2 "
                              "(their layers less 2)."}
    over = worker.handle({"id": "t", "input": {"prompt": "a lighthouse", "clip_skip": 11}})
    assert over["error"].startswith("Invalid input: clip_skip: Input should be less than or equal to 10")
