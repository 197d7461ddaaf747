"""QUANTIZE=fp8: run the UNet's transformer-block linear layers as fp8 matrix products (torchao).

Why these layers: linear layers are about two thirds of an SDXL UNet call's FLOPs, nearly all of them in
the transformer blocks (counted: benchmarks/RESULTS.md), and fp8 tensor cores do twice the 16-bit rate on
Ada and Hopper GPUs: the option that would speed up the arithmetic itself rather than its launching. The
time and add embeddings' linears multiply 2 rows: nothing to gain, so they stay.

It changes the numbers: e4m3 keeps 3 mantissa bits, with each activation row and each weight row scaled to
its own maximum (torchao's dynamic row-wise scheme). Hence opt-in; on an H200 it was measured slower than
16 bits, its per-row scaling running as separate kernels, and its output far from stock's (RESULTS.md).

torchao's row-wise scheme takes bfloat16 weights (and torch's row-wise fp8 product writes only bfloat16
outside Hopper), so with this option the UNet runs in bfloat16, and so do the text encoders: the pipeline
makes its embeddings and latents in the second text encoder's dtype. Same speed as float16 on these GPUs;
bfloat16's coarser rounding is well inside fp8's.

torchao needs compute capability 8.9 or later (Ada, Hopper, Blackwell). On any other device the option is
skipped, with the reason logged and reported, so an endpoint that allows several GPU types keeps serving.
"""

from __future__ import annotations

from typing import Any

# torch's fp8 matrix product needs both dimensions of the weight to be multiples of 16.
_ALIGNMENT = 16
# A row's scale is its largest magnitude / 448; an all-zero row would get scale 0 and quantize to 0/0 = NaN.
# SDXL has such rows in every job without a negative prompt: its negative text embedding is all zeros
# (force_zeros_for_empty_prompt), and it is the cross-attention's k/v input. The floor makes them 0.
_SMALLEST_ROW_MAX = 1e-12


def fp8_unsupported_reason(device: str) -> str | None:
    """Why fp8 linear layers cannot run on `device`, or None when they can."""
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        return f"fp8 linear layers need an NVIDIA GPU of compute capability 8.9 or later; the device is {device}"
    capability = torch.cuda.get_device_capability(device)
    if capability < (8, 9):
        return (f"fp8 linear layers need compute capability 8.9 or later (L4, L40S, RTX 4090, H100, H200); "
                f"{torch.cuda.get_device_name(device)} is {capability[0]}.{capability[1]}")
    return None


def cast_for_fp8(pipe: Any) -> None:
    """The UNet and both text encoders to bfloat16: call before fusing, which a later cast would undo."""
    import torch

    for name in ("text_encoder", "text_encoder_2", "unet"):
        component = getattr(pipe, name, None)
        if component is not None:
            component.to(torch.bfloat16)


def is_fp8_layer(module: Any, fqn: str) -> bool:
    """Whether `module` (named `fqn` in the UNet) becomes an fp8 layer.

    A linear layer in a transformer block whose weight is its own: after fusing, the separate q/k/v
    layers hold views of the fused weight (speed.share_fused_weights) and are never called, so converting
    them would only add a second copy of their weights.
    """
    import torch

    if not isinstance(module, torch.nn.Linear) or ".attentions." not in f".{fqn}.":
        return False
    weight = module.weight
    owns_weight = weight.untyped_storage().nbytes() == weight.numel() * weight.element_size()
    return owns_weight and module.in_features % _ALIGNMENT == 0 and module.out_features % _ALIGNMENT == 0


def quantize_unet_fp8(unet: Any) -> int:
    """Convert the UNet's transformer-block linear layers in place; return how many were converted.

    The activations' row maximum is floored (`_SMALLEST_ROW_MAX`) so that zero rows stay zero.
    torchao's inductor settings are left alone (`set_inductor_config=False`): they are process-wide, and
    would change every later compile in the process, the benchmark's other stages included.
    """
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    selected = {fqn for fqn, module in unet.named_modules() if is_fp8_layer(module, fqn)}
    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), activation_value_lb=_SMALLEST_ROW_MAX,
                                                       set_inductor_config=False)
    quantize_(unet, config, filter_fn=lambda module, fqn: fqn in selected)
    return len(selected)
