"""The samplers a job may choose, each built once from the volume's own scheduler config.

Building from the volume's config keeps the fine-tune's training schedule (betas, timestep
spacing, prediction type) whatever sampler is picked; building them all at start means a missing
dependency (torchsde for the SDE sampler) fails the start, not a caller's job.
"""

from __future__ import annotations

import inspect
from typing import Any

from sdxl_worker.contract.job_schema import SCHEDULERS

# name -> (diffusers class, config overrides)
SCHEDULER_SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_sde_karras": ("DPMSolverSDEScheduler", {"use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    # Step-distilled SDXL's samplers (docs/fast-sampling.md): their model cards' recipes, 4-8 steps. Trailing
    # spacing starts at the last training timestep (Lightning 4 steps: 999, 749, 499, 249) where SDXL's own
    # leading spacing never reaches it.
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "ddim_trailing": ("DDIMScheduler", {"timestep_spacing": "trailing"}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}


def build_schedulers(default: Any) -> dict[str, Any]:
    """Every scheduler the contract names, keyed by name; "default" is the volume's own instance."""
    import diffusers

    schedulers = {"default": default}
    for name, (class_name, overrides) in SCHEDULER_SPECS.items():
        cls = getattr(diffusers, class_name)
        # Only the options this class takes: another class's (PNDM's skip_prk_steps in SDXL's config) would be
        # logged as unexpected at every start.
        accepted = inspect.signature(cls.__init__).parameters
        config = {key: value for key, value in default.config.items() if key in accepted or key.startswith("_")}
        schedulers[name] = cls.from_config(config, **overrides)
    missing = set(SCHEDULERS) - set(schedulers)
    if missing:
        raise RuntimeError(f"no scheduler built for {sorted(missing)}")
    return schedulers


def takes_timesteps(scheduler: Any) -> bool:
    """Whether a job may name this sampler's timesteps itself: its set_timesteps accepts a list, which diffusers
    refuses with Karras sigmas."""
    return ("timesteps" in inspect.signature(scheduler.set_timesteps).parameters
            and not scheduler.config.get("use_karras_sigmas", False))
