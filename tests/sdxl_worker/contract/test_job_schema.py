"""Every rule of the job contract: what passes, and the one sentence each breach gets."""

from __future__ import annotations

import pytest

from sdxl_worker.contract.job_schema import (
    DEFAULT_MAX_PIXELS,
    SCHEDULERS,
    JobInput,
    JobInputError,
    parse_job_input,
)


def refused(raw: object, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    with pytest.raises(JobInputError) as caught:
        parse_job_input(raw, max_pixels)
    message = str(caught.value)
    assert message.startswith("Invalid input: ") or message.startswith("input must be")
    assert "\n" not in message and "Traceback" not in message
    return message


def test_defaults() -> None:
    job = parse_job_input({"prompt": "a cat"})
    assert job == JobInput(prompt="a cat")
    assert (job.width, job.height, job.num_inference_steps, job.guidance_scale) == (1024, 1024, 30, 7.0)
    assert (job.seed, job.num_images, job.scheduler, job.output_format, job.encode_quality) == (None, 1, "default",
                                                                                                "png", 90)


def test_full_valid_job() -> None:
    job = parse_job_input({
        "prompt": "a cat", "negative_prompt": "blurry", "width": 1536, "height": 768, "num_inference_steps": 100,
        "guidance_scale": 30.0, "seed": 2**32 - 1, "num_images": 4, "scheduler": "dpmpp_2m_karras",
        "output_format": "webp", "quality": 1,
    })
    assert (job.width, job.height, job.seed, job.guidance_scale, job.encode_quality) == (1536, 768, 2**32 - 1, 30.0,
                                                                                          1)


def test_without_guidance_a_negative_prompt_is_refused_not_ignored() -> None:
    """At guidance_scale <= 1 diffusers runs no negative branch: a negative prompt would silently do nothing."""
    assert parse_job_input({"prompt": "a cat", "guidance_scale": 0}).guidance_scale == 0.0
    assert parse_job_input({"prompt": "a cat", "negative_prompt": "", "guidance_scale": 1.0}).negative_prompt == ""
    with pytest.raises(JobInputError, match=r"negative_prompt has no effect at guidance_scale 1 \(at most 1 runs "
                                            r"one UNet pass a step, with no negative branch\): drop it, or raise "
                                            r"guidance_scale above 1"):
        parse_job_input({"prompt": "a cat", "negative_prompt": "blurry", "guidance_scale": 1.0})


def test_timesteps_name_the_steps_of_a_distilled_recipe() -> None:
    job = parse_job_input({"prompt": "a cat", "scheduler": "lcm", "guidance_scale": 0, "timesteps": [999, 749, 499,
                                                                                                      249]})
    assert (job.timesteps, job.steps) == ([999, 749, 499, 249], 4)
    assert parse_job_input({"prompt": "a cat", "timesteps": [999, 499], "num_inference_steps": 2}).steps == 2
    assert parse_job_input({"prompt": "a cat", "num_inference_steps": 8}).steps == 8


@pytest.mark.parametrize(("timesteps", "extra", "words"), [
    ([999, 999, 499], {}, "timesteps must be strictly descending, each 0-999 (SDXL's training range), e.g. [999, 749, "
                          "499, 249]; got [999, 999, 499]"),
    ([249, 499], {}, "strictly descending"),
    ([1000, 500], {}, "each 0-999"),
    ([999, -1], {}, "each 0-999"),
    ([], {}, "timesteps"),
    (list(range(999, 939, -1)), {}, "timesteps"),
    ([999, 499], {"num_inference_steps": 4}, "num_inference_steps 4 and 2 timesteps disagree: give the timesteps "
                                              "alone"),
    ([999, 499], {"image": "aGk="}, "timesteps apply to text to image only"),
])
def test_bad_timesteps_are_one_sentence(timesteps: list[int], extra: dict, words: str) -> None:
    with pytest.raises(JobInputError) as refused:
        parse_job_input({"prompt": "a cat", "timesteps": timesteps, **extra})
    assert words in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_name_accepted(scheduler: str) -> None:
    assert parse_job_input({"prompt": "x", "scheduler": scheduler}).scheduler == scheduler


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("width", 1000 + 4, "width: Input should be a multiple of 8 (got 1004)"),
        ("width", 248, "width: Input should be greater than or equal to 256"),
        ("height", 2056, "height: Input should be less than or equal to 2048"),
        ("num_inference_steps", 0, "num_inference_steps: Input should be greater than or equal to 1"),
        ("num_inference_steps", 101, "num_inference_steps: Input should be less than or equal to 100"),
        ("guidance_scale", -0.1, "guidance_scale: Input should be greater than or equal to 0"),
        ("guidance_scale", 30.5, "guidance_scale: Input should be less than or equal to 30"),
        ("guidance_scale", float("nan"), "guidance_scale: Input should be a finite number"),
        ("guidance_scale", float("inf"), "guidance_scale: Input should be a finite number"),
        ("seed", -1, "seed: Input should be greater than or equal to 0"),
        ("seed", 2**32, "seed: Input should be less than or equal to 4294967295"),
        ("num_images", 5, "num_images: Input should be less than or equal to 4"),
        ("num_images", 0, "num_images: Input should be greater than or equal to 1"),
        ("scheduler", "k_lms", "scheduler: Input should be 'default', 'euler'"),
        ("output_format", "gif", "output_format: Input should be 'png', 'jpeg' or 'webp'"),
        ("quality", 0, "quality: Input should be greater than or equal to 1"),
        ("prompt", "x" * 2001, "prompt: String should have at most 2000 characters"),
        ("negative_prompt", "x" * 2001, "negative_prompt: String should have at most 2000 characters"),
    ],
)
def test_each_bound(field: str, value: object, words: str) -> None:
    job = {"prompt": "a cat", "output_format": "jpeg", field: value}
    assert words in refused(job)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("width", "1024", "width: Input should be a valid integer"),
        ("width", 1024.0, "width: Input should be a valid integer"),
        ("num_images", True, "num_images: Input should be a valid integer"),
        ("guidance_scale", "7", "guidance_scale: Input should be a valid number"),
        ("prompt", 42, "prompt: Input should be a valid string"),
        ("seed", [1], "seed: Input should be a valid integer"),
    ],
)
def test_wrong_types_are_not_coerced(field: str, value: object, words: str) -> None:
    assert words in refused({"prompt": "a cat", field: value})


def test_guidance_accepts_integers() -> None:
    assert parse_job_input({"prompt": "x", "guidance_scale": 5}).guidance_scale == 5.0


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt(prompt: str) -> None:
    message = refused({"prompt": prompt})
    assert message.startswith("Invalid input: prompt: ")


def test_missing_prompt() -> None:
    assert refused({"width": 512}) == "Invalid input: prompt is required."


def test_unknown_key_named_with_allowed_fields() -> None:
    message = refused({"prompt": "x", "steps": 20})
    assert "unknown field 'steps' (allowed: prompt, negative_prompt, width" in message


def test_a_near_miss_of_a_field_is_named() -> None:
    message = refused({"prompt": "x", "num_inference_step": 20})
    assert "unknown field 'num_inference_step' (did you mean 'num_inference_steps'? allowed: prompt, " in message
    nested = refused({"prompt": "x", "loras": [{"name": "style", "scael": 0.5}]})
    assert "unknown field 'scael' in a LoRA (did you mean 'scale'? allowed: name, scale)" in nested


@pytest.mark.parametrize("raw", [None, [], "a cat", 3])
def test_non_object_input(raw: object) -> None:
    assert refused(raw).startswith(f"input must be a JSON object with at least a prompt, got {type(raw).__name__}")


def test_max_pixels_limit() -> None:
    assert parse_job_input({"prompt": "x", "width": 1024, "height": 1024}, max_pixels=1024 * 1024)
    message = refused({"prompt": "x", "width": 1024, "height": 1032}, max_pixels=1024 * 1024)
    assert "1024x1032 = 1,056,768 pixels, over this endpoint's limit of 1,048,576 (MAX_PIXELS)" in message
    # Image to image generates at the image's size: the default 1024x1024 is not held against a smaller limit.
    assert parse_job_input({"prompt": "x", "image": "aGk="}, max_pixels=512 * 512).mode == "img2img"


def test_quality_only_for_lossy_formats() -> None:
    assert "quality applies to jpeg and webp only" in refused({"prompt": "x", "quality": 80})
    assert parse_job_input({"prompt": "x", "output_format": "jpeg", "quality": 80}).encode_quality == 80


def test_several_errors_in_one_sentence() -> None:
    message = refused({"prompt": "x", "width": 7, "num_images": 9})
    assert message.count(";") >= 1 and message.endswith(".")
    assert "width:" in message and "num_images:" in message
