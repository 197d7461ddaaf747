"""Make the loaded pipeline faster without changing what it draws (beyond stated float tolerance).

Each option is an environment switch with a default chosen by the benchmark (benchmark.py, figures
in README): serverless users pay for every second of generation, but an option that changes the
picture or costs minutes at every cold start is off by default.

- FUSE_QKV (default 1): one matmul for q/k/v in self-attention, k/v in cross-attention. diffusers keeps
  the unfused weights beside the fused ones (1.21 GiB more in SDXL's UNet, measured on its config), so the
  old q/k/v weights are turned into views of the fused tensor: same values, no second copy.
- CHANNELS_LAST (default 1): NHWC memory format for the UNet's convolutions on CUDA.
- VAE_DTYPE (default bf16 on CUDA): SDXL's VAE overflows in float16, so stock diffusers converts it to
  float32 and back around every decode and decodes in float32; bfloat16 has float32's range, so the
  decode runs in 16 bits without the conversions. `fp32` keeps the stock behaviour.
- CUDNN_BENCHMARK (default 0): let cuDNN time its convolution algorithms once per shape. Off: on an
  H200 its tuning made the warm-up 6.24 s (0.83-0.93 s without it, in later runs), and no gain has been
  shown (run 2's 1.685 s against 1.537 s had the autotuner on in both stages, through this process-wide
  flag: it is now set both ways). With it on, run 2's latents differed from stock's by up to 0.13;
  with it off (runs 3-4), not at all.
- COMPILE (default 0): torch.compile of the UNet and the VAE decoder, in COMPILE_MODE (default
  "default"; "reduce-overhead" adds CUDA graphs), for the warm-up's shape only. With COMPILE_CACHE_DIR
  (a folder on the network volume) inductor's and triton's caches live there, so a later cold start
  reuses the compiled kernels instead of compiling for minutes; without it they go where
  TORCHINDUCTOR_CACHE_DIR says (the image: the volume), else to the temp directory. Off: on an H200
  it brings 1024x1024 to 1.02-1.04 s (reduce-overhead; 1.06 s in "default" mode), but the first start
  compiles for ~100 s, and a start with a filled cache still spends ~22 s, 14 s of it in Dynamo
  tracing the Python code, which no on-disk cache of inductor's skips. A serverless cold start should
  not pay that blindly. The warm-up's shape is the one compiled; other shapes then run uncompiled
  (`freeze_compiled_shapes`) rather than compile inside a user's job. Every sampler uses the compiled
  UNet: its timestep comes in as float32 whatever the sampler (unet_timestep.py).
- COMPILE_SCOPE (default full): `blocks` compiles only the UNet's repeated transformer blocks
  (diffusers' regional compilation) instead of the whole UNet; the VAE decoder is compiled whole
  either way. It cuts the Dynamo tracing that a cached start repeats: UNet and VAE decoder 1.16 + 0.95 s
  instead of 13.18 + 1.11 s (`benchmark.py --tracing-only`: torch 2.11, meta device, this project's 2-core
  CPU host; tracing is CPU work). Its effect on generation speed is not yet measured on a GPU: the rest
  of the UNet then runs eager. Compiled with static shapes, SDXL's 70 blocks are two graphs, one per width.
- CUDA_GRAPHS (default 0): replay the UNet's eager forward as one CUDA graph, captured at the warm-up
  (cuda_graphs.py): no compiler, no compile time. Not measured on a GPU yet, hence off; an alternative
  to COMPILE, not an addition (COMPILE_MODE=reduce-overhead is compile with CUDA graphs).
- QUANTIZE (default none): `fp8` runs the UNet's transformer-block linear layers, 64% of its FLOPs, as
  fp8 products (fp8_linear.py, torchao), the UNet and text encoders then in bfloat16; on GPUs of compute
  capability 8.9 or later, skipped with the reason elsewhere. It changes the output by more than float
  rounding, so it is opt-in; meant with COMPILE=1, which fuses the per-row scaling into the neighbouring
  kernels. Not measured on a GPU yet.

Attention needs no option: PyTorch 2.11 already picks its cuDNN kernel for the UNet's attention on an
H200, the fastest of the three there (benchmark.py's attention stage).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdxl_worker.speed.cuda_graphs import freeze_graphs, graph_unet
from sdxl_worker.speed.fp8_linear import cast_for_fp8, fp8_unsupported_reason, quantize_unet_fp8
from sdxl_worker.speed.unet_timestep import timestep_as_float32

log = logging.getLogger(__name__)

VAE_DTYPES = ("auto", "bf16", "fp32")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
COMPILE_SCOPES = ("full", "blocks")
QUANTIZES = ("none", "fp8")


@dataclass(frozen=True)
class SpeedOptions:
    fuse_qkv: bool = True
    channels_last: bool = True
    vae_dtype: str = "auto"
    cudnn_benchmark: bool = False
    compile: bool = False
    compile_mode: str = "default"
    compile_scope: str = "full"
    compile_cache_dir: str | None = None
    cuda_graphs: bool = False
    quantize: str = "none"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SpeedOptions:
        """The options an operator set in the environment (or in `env`), defaults for the rest."""
        env = os.environ if env is None else env
        options = cls(
            fuse_qkv=_flag(env, "FUSE_QKV", True),
            channels_last=_flag(env, "CHANNELS_LAST", True),
            vae_dtype=_choice(env, "VAE_DTYPE", VAE_DTYPES),
            cudnn_benchmark=_flag(env, "CUDNN_BENCHMARK", False),
            compile=_flag(env, "COMPILE", False),
            compile_mode=_choice(env, "COMPILE_MODE", COMPILE_MODES),
            compile_scope=_choice(env, "COMPILE_SCOPE", COMPILE_SCOPES),
            compile_cache_dir=env.get("COMPILE_CACHE_DIR") or None,
            cuda_graphs=_flag(env, "CUDA_GRAPHS", False),
            quantize=_choice(env, "QUANTIZE", QUANTIZES),
        )
        if options.compile and options.cuda_graphs:
            raise ValueError("CUDA_GRAPHS=1 and COMPILE=1 exclude each other: for compiled code with CUDA graphs, "
                             "use COMPILE=1 COMPILE_MODE=reduce-overhead")
        return options


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """The variable's value among `choices`, the first of which is the default."""
    value = env.get(name, choices[0]).strip().lower()
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be 1 or 0, not {raw!r}")


def use_compile_cache(cache_dir: str) -> None:
    """Point inductor's and triton's caches at `cache_dir` (call before the first compile)."""
    root = Path(cache_dir)
    (root / "inductor").mkdir(parents=True, exist_ok=True)
    (root / "triton").mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(root / "triton")
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def apply_speedups(pipe: Any, options: SpeedOptions, device: str, attention: str = "sdpa") -> dict[str, Any]:
    """Apply `options` to `pipe` in place; return what was applied (reported with the load record)."""
    import torch

    on_cuda = device.startswith("cuda")
    applied: dict[str, Any] = {}
    if on_cuda:
        # Set both ways: a process-wide flag, which an earlier pipeline in the process may have turned on.
        torch.backends.cudnn.benchmark = options.cudnn_benchmark
        if options.cudnn_benchmark:
            applied["cudnn_benchmark"] = True
    fp8 = options.quantize == "fp8"
    if fp8 and (reason := fp8_unsupported_reason(device)):
        log.warning("QUANTIZE=fp8 skipped: %s", reason)
        applied["quantize_skipped"] = reason
        fp8 = False
    if fp8:
        cast_for_fp8(pipe)  # before fusing, like the VAE's cast below
    vae_bf16 = on_cuda and options.vae_dtype in ("auto", "bf16")
    if vae_bf16:
        # Before fusing: a dtype change after it would copy the shared q/k/v views apart again.
        pipe.vae.to(torch.bfloat16)
        applied["vae_dtype"] = "bf16"
    if vae_bf16 or fp8:
        # The pipeline hands the VAE latents in the UNet's dtype (bfloat16 with fp8, else float16), which
        # stock diffusers casts only for an upcast float16 VAE; cast them at the VAE's first layer.
        first = pipe.vae.post_quant_conv if pipe.vae.config.get("use_post_quant_conv", True) else pipe.vae.decoder
        first.register_forward_pre_hook(_cast_to_weight_dtype)
    if options.fuse_qkv and attention == "sdpa":
        pipe.fuse_qkv_projections(unet=True, vae=True)
        freed = share_fused_weights(pipe.unet) + share_fused_weights(pipe.vae)
        applied["fuse_qkv"] = True
        log.info("fused q/k/v projections; %.2f GiB of duplicate weights released", freed / 2**30)
    if options.channels_last and on_cuda:
        pipe.unet.to(memory_format=torch.channels_last)
        applied["channels_last"] = True
    if fp8:
        # After fusing (the fused layers are the ones converted) and before compiling or capturing.
        applied["quantize"] = "fp8"
        applied["fp8_layers"] = quantize_unet_fp8(pipe.unet)
    if options.cuda_graphs and on_cuda:
        graph_unet(pipe.unet)
        applied["cuda_graphs"] = True
    if options.compile:
        if options.compile_cache_dir:
            use_compile_cache(options.compile_cache_dir)
            applied["compile_cache_dir"] = options.compile_cache_dir
        elif os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
            applied["compile_cache_dir"] = os.environ["TORCHINDUCTOR_CACHE_DIR"]
            log.info("COMPILE_CACHE_DIR unset: compiled kernels go to TORCHINDUCTOR_CACHE_DIR=%s",
                     os.environ["TORCHINDUCTOR_CACHE_DIR"])
        else:
            log.warning("COMPILE=1 without COMPILE_CACHE_DIR: every cold start compiles from scratch (minutes)")
        compile_models(pipe, options.compile_mode, options.compile_scope)
        applied["compile"] = options.compile_mode
        applied["compile_scope"] = options.compile_scope
    return applied


def compile_models(pipe: Any, mode: str, scope: str, backend: Any = "inductor") -> None:
    """Compile the UNet (whole, or its repeated transformer blocks) and the VAE decoder, lazily at first call.

    Static shapes: the warm-up's shape is compiled, and with `blocks` each distinct block width gets its
    own graph, where Dynamo's default on a recompile would make the second one dynamic-shape (kernels for
    any size, not tuned to this one). `backend` is for tests: a counting backend shows what is traced.
    """
    import torch

    settings = {"mode": mode, "fullgraph": True, "dynamic": False, "backend": backend}
    if scope == "blocks":
        pipe.unet.compile_repeated_blocks(**settings)  # in place: pipe.unet stays the model itself
    else:
        pipe.unet = torch.compile(pipe.unet, **settings)
        # On the compiled wrapper, so the cast happens before Dynamo's guards see the timestep's dtype.
        # (The blocks never see the timestep.)
        timestep_as_float32(pipe.unet)
    pipe.vae.decoder = torch.compile(pipe.vae.decoder, **settings)


def freeze_compiled_shapes(pipe: Any = None) -> None:
    """Once the warm-up has compiled (or captured) the jobs' usual shape, run any other shape uncompiled.

    A job with another width, height or image count would otherwise compile again inside that job
    (the first compile took ~100 s on an H200) and then again for the next new shape; uncompiled it
    takes the eager time (1.5-2.4 s at 1024x1024 there). Shapes compiled before this keep their code,
    and `pipe`'s captured CUDA graph, if any, its graph.
    """
    import torch

    torch.compiler.set_stance("eager_on_recompile")
    if pipe is not None:
        freeze_graphs(pipe)


def share_fused_weights(model: Any) -> int:
    """Make each fused attention's separate q/k/v weights views of its fused weight; return the bytes freed.

    diffusers' `fuse_projections` copies q/k/v into one new Linear and keeps the old ones for
    `unfuse_qkv_projections`. Views keep that possible (and the state dict whole) without a second copy.
    """
    import torch

    freed = 0
    for module in model.modules():
        if not getattr(module, "fused_projections", False):
            continue
        fused = getattr(module, "to_qkv", None)
        parts = (module.to_q, module.to_k, module.to_v)
        if fused is None:  # cross-attention: only k and v are fused; q reads the other sequence
            fused, parts = module.to_kv, (module.to_k, module.to_v)
        start = 0
        for part in parts:
            end = start + part.out_features
            for name in ("weight", "bias"):
                old = getattr(part, name)
                if old is not None:
                    freed += old.numel() * old.element_size()
                    view = getattr(fused, name).detach()[start:end]
                    setattr(part, name, torch.nn.Parameter(view, requires_grad=False))
            start = end
    return freed


def _cast_to_weight_dtype(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    dtype = next(module.parameters()).dtype
    return (args[0].to(dtype), *args[1:])
