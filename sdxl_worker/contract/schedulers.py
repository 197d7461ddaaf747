"""The samplers a job may choose, each built once from the volume's own scheduler config.

Building from the volume's config keeps the fine-tune's training schedule (betas, timestep
spacing, prediction type) whatever sampler is picked; building them all at start means a missing
dependency (torchsde for the SDE sampler) fails the start, not a caller's job.
"""

from __future__ import annotations

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
}


def build_schedulers(default: Any) -> dict[str, Any]:
    """Every scheduler the contract names, keyed by name; "default" is the volume's own instance."""
    import diffusers

    schedulers = {"default": default}
    for name, (class_name, overrides) in SCHEDULER_SPECS.items():
        schedulers[name] = getattr(diffusers, class_name).from_config(default.config, **overrides)
    missing = set(SCHEDULERS) - set(schedulers)
    if missing:
        raise RuntimeError(f"no scheduler built for {sorted(missing)}")
    return schedulers
