"""The samplers, built from SDXL's own scheduler config as the worker builds them: the timesteps each 4-8-step
recipe names (the model cards of SDXL-Lightning, LCM-LoRA and TCD), and which take a job's own timesteps."""

from __future__ import annotations

import json
import logging

import pytest

from sdxl_worker.contract.job_schema import ETA_SCHEDULERS, SCHEDULERS
from sdxl_worker.contract.schedulers import build_schedulers, takes_timesteps
from sdxl_worker.prepare.pipeline_files import ASSETS


@pytest.fixture(scope="module")
def samplers() -> dict:
    import diffusers

    config = json.loads((ASSETS / "scheduler_config.json").read_text())  # SDXL base 1.0's, as published
    return build_schedulers(diffusers.EulerDiscreteScheduler.from_config(config))


def timesteps(scheduler, steps: int) -> list[int]:
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]


def test_every_name_of_the_contract_is_built(samplers: dict) -> None:
    assert set(samplers) == set(SCHEDULERS)


@pytest.mark.parametrize(("name", "steps", "expected"), [
    # SDXL-Lightning 4-step: Euler with trailing spacing. SDXL's own leading spacing never reaches 999.
    ("euler_trailing", 4, [999, 749, 499, 249]),
    ("euler_trailing", 8, [999, 874, 749, 624, 499, 374, 249, 124]),
    ("ddim_trailing", 4, [999, 749, 499, 249]),
    ("default", 4, [751, 501, 251, 1]),
    # LCM and TCD: their 50-step distillation schedule, subsampled.
    ("lcm", 4, [999, 759, 499, 259]),
    ("tcd", 4, [999, 759, 499, 259]),
])
def test_each_recipe_gets_the_timesteps_it_names(samplers: dict, name: str, steps: int, expected: list[int]) -> None:
    assert timesteps(samplers[name], steps) == expected


def test_the_samplers_keep_the_volumes_training_schedule(samplers: dict) -> None:
    for name in ("lcm", "tcd", "euler_trailing", "ddim_trailing"):
        config = samplers[name].config
        assert (config.beta_start, config.beta_end, config.beta_schedule, config.num_train_timesteps) == (
            0.00085, 0.012, "scaled_linear", 1000), name


def test_no_sampler_is_built_with_another_classs_options(caplog: pytest.LogCaptureFixture) -> None:
    """SDXL's config carries PNDM's `skip_prk_steps`: passed on, diffusers would log it as unexpected at every start."""
    import diffusers

    config = json.loads((ASSETS / "scheduler_config.json").read_text())
    with caplog.at_level(logging.WARNING):
        build_schedulers(diffusers.EulerDiscreteScheduler.from_config(config))
    assert not [record for record in caplog.records if "not expected" in record.getMessage()]


def test_which_samplers_take_a_jobs_timesteps(samplers: dict) -> None:
    taking = {name for name, scheduler in samplers.items() if takes_timesteps(scheduler)}
    assert taking == {"default", "euler", "euler_trailing", "dpmpp_2m", "lcm", "tcd"}
    samplers["lcm"].set_timesteps(timesteps=[999, 749, 499, 249])  # DMD2's recipe
    assert [int(t) for t in samplers["lcm"].timesteps] == [999, 749, 499, 249]


def test_the_samplers_a_job_may_give_an_eta_are_those_whose_step_takes_one(samplers: dict) -> None:
    import inspect

    takes_eta = {name for name, scheduler in samplers.items() if "eta" in inspect.signature(scheduler.step).parameters}
    assert takes_eta == set(ETA_SCHEDULERS)
