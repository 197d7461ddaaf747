"""The UNet's FLOPs by op, counted from shapes on the meta device: exact, and the same on any machine.

What bounds each option's gain (fp8 can only speed up the linear layers it converts), and the work behind a
profile's kernel times. On the meta device attention counts as its two bmm products.
"""

from __future__ import annotations

from typing import Any

from benchmarks.results import FlopsResult


def meta_model(cls: Any, config: dict[str, Any], dtype: Any) -> Any:
    """A diffusers model on the meta device in `dtype`, q/k/v fused as the worker does: shapes only."""
    import torch

    from sdxl_worker.speed.options import share_fused_weights

    with torch.device("meta"):
        model = cls.from_config(config).to(dtype)
    model.fuse_qkv_projections()
    share_fused_weights(model)
    return model


def unet_flops(unet_config: dict[str, Any], size: int) -> FlopsResult:
    """FLOPs of one UNet call (batch 2: one image with CFG), by aten op, and QUANTIZE=fp8's share of them."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from dev.unet_inputs import unet_call_inputs
    from sdxl_worker.speed.fp8_linear import is_fp8_layer

    unet = meta_model(UNet2DConditionModel, unet_config, torch.float16)
    args, kwargs = unet_call_inputs(unet_config, size, dtype=torch.float16, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(*args, **kwargs)
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    by_op = {str(op).removeprefix("aten."): flops for op, flops in counts["Global"].items()}
    linear = by_op.get("addmm", 0) + by_op.get("mm", 0)
    fp8_layers = {f"{type(unet).__name__}.{fqn}" for fqn, module in unet.named_modules() if is_fp8_layer(module, fqn)}
    fp8 = sum(sum(ops.values()) for name, ops in counts.items() if name in fp8_layers)
    return FlopsResult(per_call_tflop=round(total / 1e12, 3),
                       share_by_op={op: round(f / total, 4) for op, f in sorted(by_op.items(), key=lambda i: -i[1])},
                       linear_share=round(linear / total, 4), fp8_layers_share_of_linear=round(fp8 / linear, 5))
