"""Hand the UNet its timestep as float32 whatever the sampler: one compiled graph or CUDA graph serves all.

Samplers give the timestep in different dtypes (Euler float32; DPM++, DDIM and UniPC int64; DPM++ SDE
float64). A graph captured or compiled for one dtype would see the others as a new input and run them
uncompiled. The UNet (diffusers 0.42, UNet2DConditionModel) uses the timestep in one place, its time
embedding, which converts it to float32 with `.float()` first; casting before the call is the same
operation done earlier, so the result is bit-identical (tested against the eager UNet).
"""

from __future__ import annotations

from typing import Any


def timestep_as_float32(module: Any) -> Any:
    """Register the cast as a forward pre-hook of `module` (the UNet, or its compiled wrapper)."""
    return module.register_forward_pre_hook(_cast, with_kwargs=True)


def _cast(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    import torch

    def cast(value: Any) -> Any:
        is_scalar = isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex()
        return value.float() if is_scalar and value.dtype != torch.float32 else value

    if len(args) > 1:
        return (args[0], cast(args[1]), *args[2:]), kwargs
    if "timestep" in kwargs:
        return args, {**kwargs, "timestep": cast(kwargs["timestep"])}
    return args, kwargs
