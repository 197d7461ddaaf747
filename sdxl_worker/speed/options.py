"""Make the loaded pipeline faster without changing what it draws beyond stated float tolerance.

Each option is a setting (sdxl_worker/settings.py reads it from the environment) whose default the benchmark
decided (`python -m benchmarks`, figures in benchmarks/RESULTS.md): users pay for every second of generation,
but an option that changes the picture, or costs minutes at every cold start, is off by default. Each
option's effect is one line in its field's description (README's environment table is built from them).

`apply_speedups` applies them in an order that matters: dtype casts before fusing q/k/v (a later cast would
copy the fused views apart again), fusing before fp8 (the fused layers are the ones converted), and both
before CUDA graph capture or compilation, which record whatever the modules are by then.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sdxl_worker.speed.aot import use_packages
from sdxl_worker.speed.attention import configure_attention
from sdxl_worker.speed.cuda_graphs import graph_unet
from sdxl_worker.speed.fp8_linear import cast_for_fp8, fp8_unsupported_reason, quantize_unet_fp8
from sdxl_worker.speed.unet_timestep import timestep_as_float32
from sdxl_worker.volume.sdxl import TRAINED_SIZES

log = logging.getLogger(__name__)

CompileMode = Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"]
CompileScope = Literal["full", "blocks"]
GRAPH_SHAPE = r"\d{3,4}x\d{3,4}(x[1-4])?"  # WIDTHxHEIGHT, or WIDTHxHEIGHTxIMAGES


class SpeedOptions(BaseModel):
    """The speed settings; the descriptions are README's environment table rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    attention_backend: Literal["sdpa", "xformers"] = Field("sdpa", description=(
        "`xformers` only where installed and working, else SDPA with a warning (not in the image: no faster)."))
    fuse_qkv: bool = Field(True, description="One matrix product for attention's q/k/v.")
    channels_last: bool = Field(True, description="NHWC memory format for the UNet on CUDA.")
    vae_dtype: Literal["auto", "bf16", "fp32"] = Field("auto", description=(
        "`auto`: bf16 on CUDA (no overflow, 16-bit speed); `fp32`: stock diffusers' float32 decode."))
    cudnn_benchmark: bool = Field(False, description=(
        "cuDNN times its convolution algorithms: seconds more warm-up, no gain measured."))
    cuda_graphs: bool | None = Field(None, description=(
        "Replay the UNet as CUDA graphs, one per job shape (size, image count, prompt length), each captured at "
        "its first job (the warm-up's at the start); `auto`: on with CUDA unless `COMPILE=1`."))
    cuda_graph_max: int = Field(12, ge=0, le=64, description=(
        "Most CUDA graphs kept, the least recently used dropped first; they share one memory pool, so memory grows "
        "with the largest shape, not the count. 0: every call eager."))
    cuda_graph_shapes: str | None = Field(None, examples=[
        "sdxl", "832x1216,1216x832x2"], description=(
        "Job shapes whose CUDA graphs the start captures, beside the warm-up's: `WxH` or `WxHxN` (N images) "
        "separated by commas, or `sdxl` for SDXL's nine trained sizes; then no job of these shapes pays a capture."))
    compile: bool = Field(False, description=(
        "`torch.compile` the UNet and VAE decoder for the warm-up's shape; the first start compiles for minutes."))
    compile_mode: CompileMode = Field("default", description=(
        "`reduce-overhead` adds CUDA graphs: the fastest warm job measured, with `COMPILE_SCOPE=full`."))
    compile_scope: CompileScope = Field("full", description=(
        "`blocks`: only the UNet's repeated blocks, so a start with a filled cache traces far less."))
    compile_cache_dir: str | None = Field(None, description=(
        "A folder on the volume for the compiled kernels, reused by later starts (the image sets one)."))
    torchinductor_cache_dir: str | None = Field(None, description=(
        "torch's own: the kernels' folder when `COMPILE_CACHE_DIR` is unset; with neither, every start compiles."))
    aot: Literal["auto", "off"] = Field("auto", description=(
        "`auto`: the model folder's compiled UNet and VAE decoder packages (`prepare_volume.py compile`) built for "
        "this worker's torch, device, dtype and weights run their sizes, with no compiling at start; `off`: never."))
    quantize: Literal["none", "fp8"] = Field("none", description=(
        "`fp8` linear layers in the UNet's blocks (compute capability 8.9+, else skipped): measured slower, "
        "and it changes the output."))

    @field_validator("cuda_graph_shapes", mode="before")
    @classmethod
    def _shapes_listed(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        value = value.replace(" ", "").lower()
        if not re.fullmatch(rf"sdxl|{GRAPH_SHAPE}(,{GRAPH_SHAPE})*", value):
            raise ValueError("must be `sdxl` or shapes WIDTHxHEIGHT or WIDTHxHEIGHTxIMAGES (1-4 images) separated by "
                             "commas, e.g. 832x1216,1216x832x2")
        return value

    @model_validator(mode="after")
    def _compatible(self) -> SpeedOptions:
        if len(self.graph_shapes) > self.cuda_graph_max:
            raise ValueError(f"CUDA_GRAPH_SHAPES lists {len(self.graph_shapes)} shapes but CUDA_GRAPH_MAX keeps "
                             f"{self.cuda_graph_max} graphs: raise CUDA_GRAPH_MAX or list fewer shapes")
        if self.compile and self.cuda_graphs:
            raise ValueError("CUDA_GRAPHS=1 and COMPILE=1 exclude each other: for compiled code with CUDA graphs, "
                             "use COMPILE=1 COMPILE_MODE=reduce-overhead")
        if self.compile and self.compile_scope == "blocks" and self.compile_mode == "reduce-overhead":
            raise ValueError("COMPILE_SCOPE=blocks does not work with COMPILE_MODE=reduce-overhead: the repeated "
                             "blocks share one CUDA graph, and each overwrites the output the next one reads; use "
                             "COMPILE_MODE=default with COMPILE_SCOPE=blocks")
        return self

    @property
    def graph_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """CUDA_GRAPH_SHAPES as (width, height, images), in the order given, each once."""
        if self.cuda_graph_shapes is None:
            return ()
        if self.cuda_graph_shapes == "sdxl":
            return tuple((width, height, 1) for width, height in TRAINED_SIZES)
        shapes = []
        for item in self.cuda_graph_shapes.split(","):
            width, height, *images = (int(part) for part in item.split("x"))
            shapes.append((width, height, images[0] if images else 1))
        return tuple(dict.fromkeys(shapes))

    @property
    def use_cuda_graphs(self) -> bool:
        """CUDA_GRAPHS as set, or `auto`: on unless the UNet is compiled (a compiled UNet brings its own)."""
        return self.cuda_graphs if self.cuda_graphs is not None else not self.compile


@dataclass(frozen=True)
class SpeedReport:
    """What `apply_speedups` did, and what it skipped and why: logged, and shown by the benchmark."""

    attention: str = "sdpa"
    vae_bf16: bool = False
    fuse_qkv: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = False
    fp8_layers: int = 0
    cuda_graphs: bool = False
    compile_mode: str | None = None
    compile_scope: str | None = None
    compile_cache_dir: str | None = None
    aot_packages: int = 0
    skipped: tuple[tuple[str, str], ...] = ()  # (setting, why)

    @property
    def shapes_frozen_after_warm_up(self) -> bool:
        """Whether code was compiled for the warm-up's shape (and other shapes must then run uncompiled): CUDA
        graphs are not frozen, a new shape captures its own in its first job."""
        return self.compile_mode is not None

    def labels(self) -> list[str]:
        """Short names of what was applied, then of what was skipped: "fuse_qkv", "compile=default", ..."""
        flags = {"vae_dtype=bf16": self.vae_bf16, "fuse_qkv": self.fuse_qkv, "channels_last": self.channels_last,
                 "cudnn_benchmark": self.cudnn_benchmark, f"attention={self.attention}": self.attention != "sdpa",
                 f"quantize=fp8, fp8_layers={self.fp8_layers}": self.fp8_layers > 0, "cuda_graphs": self.cuda_graphs,
                 f"compile={self.compile_mode}, compile_scope={self.compile_scope}": self.compile_mode is not None,
                 f"aot_packages={self.aot_packages}": self.aot_packages > 0}
        return [label for label, on in flags.items() if on] + [f"{setting} skipped" for setting, _ in self.skipped]


def use_compile_cache(cache_dir: str) -> None:
    """Point inductor's and triton's caches at `cache_dir` (call before the first compile)."""
    root = Path(cache_dir)
    (root / "inductor").mkdir(parents=True, exist_ok=True)
    (root / "triton").mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(root / "triton")
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def apply_speedups(pipe: Any, options: SpeedOptions, device: str, model_dir: Path | None = None) -> SpeedReport:
    """Apply `options` to `pipe` in place, in the order the module's docstring explains; say what was done."""
    import torch

    on_cuda = device.startswith("cuda")
    done: dict[str, Any] = {"attention": configure_attention(pipe, options.attention_backend)}
    skipped: list[tuple[str, str]] = []
    if on_cuda:
        # Set both ways: a process-wide flag, which an earlier pipeline in the process may have turned on.
        torch.backends.cudnn.benchmark = options.cudnn_benchmark
        done["cudnn_benchmark"] = options.cudnn_benchmark
    fp8 = options.quantize == "fp8"
    if fp8 and (reason := fp8_unsupported_reason(device)):
        log.warning("QUANTIZE=fp8 skipped: %s", reason)
        skipped.append(("QUANTIZE", reason))
        fp8 = False
    if fp8:
        cast_for_fp8(pipe)
    vae_bf16 = on_cuda and options.vae_dtype in ("auto", "bf16")
    if vae_bf16:
        pipe.vae.to(torch.bfloat16)
        done["vae_bf16"] = True
    if vae_bf16 or fp8:
        # The pipeline hands the VAE latents in the UNet's dtype (bfloat16 with fp8, else float16), which
        # stock diffusers casts only for an upcast float16 VAE; cast them at the VAE's first layer.
        first = pipe.vae.post_quant_conv if pipe.vae.config.get("use_post_quant_conv", True) else pipe.vae.decoder
        first.register_forward_pre_hook(_cast_to_weight_dtype)
        # Image to image encodes its input in the UNet's dtype too.
        pipe.vae.encoder.register_forward_pre_hook(_cast_to_weight_dtype)
    if options.fuse_qkv and done["attention"] == "sdpa":
        pipe.fuse_qkv_projections(unet=True, vae=True)
        freed = share_fused_weights(pipe.unet) + share_fused_weights(pipe.vae)
        done["fuse_qkv"] = True
        log.info("fused q/k/v projections; %.2f GiB of duplicate weights released", freed / 2**30)
    if options.channels_last and on_cuda:
        pipe.unet.to(memory_format=torch.channels_last)
        done["channels_last"] = True
    if fp8:
        done["fp8_layers"] = quantize_unet_fp8(pipe.unet)
    # The fused layers are new parameters. Compiled code records requires_grad, which loading a LoRA turns off
    # on every parameter: off from the start, a LoRA job leaves the guards of the code compiled before it intact.
    for model in (pipe.unet, pipe.vae):
        model.requires_grad_(False)
    if options.aot == "auto" and not options.compile and not fp8 and model_dir is not None:
        # Under the CUDA graphs, which then capture the package's kernels.
        done["aot_packages"] = sum(use_packages(pipe, model_dir, device).values())
    if options.use_cuda_graphs and on_cuda:
        graph_unet(pipe.unet, max_graphs=options.cuda_graph_max)
        done["cuda_graphs"] = True
    if options.compile:
        done["compile_cache_dir"] = _compile_cache(options)
        compile_models(pipe, options.compile_mode, options.compile_scope)
        done["compile_mode"], done["compile_scope"] = options.compile_mode, options.compile_scope
    return SpeedReport(**done, skipped=tuple(skipped))


def _compile_cache(options: SpeedOptions) -> str | None:
    """Where compiled kernels will be cached, set up and said; None (with a warning) when nowhere lasting."""
    if options.compile_cache_dir:
        use_compile_cache(options.compile_cache_dir)
        return options.compile_cache_dir
    if options.torchinductor_cache_dir:
        log.info("COMPILE_CACHE_DIR unset: compiled kernels go to TORCHINDUCTOR_CACHE_DIR=%s",
                 options.torchinductor_cache_dir)
        return options.torchinductor_cache_dir
    log.warning("COMPILE=1 without COMPILE_CACHE_DIR: every cold start compiles from scratch (minutes)")
    return None


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


def freeze_compiled_shapes() -> None:
    """Once the warm-up has compiled the jobs' usual shape, run any other shape uncompiled.

    A job with another width, height or image count would otherwise compile again inside that job, for
    minutes (benchmarks/RESULTS.md), and again for the next new shape; uncompiled it takes the eager time.
    Shapes compiled before this keep their code.
    """
    import torch

    torch.compiler.set_stance("eager_on_recompile")


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
