"""Ahead-of-time compiled UNet and VAE decoder (AOTInductor): compiled once by `prepare_volume.py compile`, loaded
at start with no compiler, fed the worker's own weights.

A package holds the compiled code of one module (the UNet, or the VAE's decoder) for one call shape (batch, latent
sides, and the prompt's tokens for the UNet) and none of the weights: at load, the package is handed the worker's
own tensors (`user_managed`), so an in-place LoRA merge, or a write through the fused q/k/v views, is what the next
call reads. What a package was built for is in its manifest, the key a worker must match: torch's version, the
device (the CPU's instruction set or the GPU's architecture), the dtype, and the module structure (every weight's
name, shape and dtype, which fusing q/k/v changes). A package whose key differs is ignored with one log line.

The package checks none of its inputs: a call of another shape or dtype would run and return garbage. So the
forwards standing in for the modules' own (AotForward, AotDecoder) compare each call with the packages' shapes and
run the eager forward for any other. Calling a package before its weights are loaded ends the process, so loading
and handing over the weights is one step (load_package).

torch's own package loader unpacks a `.pt2` archive into /tmp at every load (the container disk; TMPDIR is not
read), so the compile step unpacks the compiled library once, next to the manifest, and the worker loads it where
it is: a start writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Next to the model, one folder a package: its manifest, and its compiled library (with a GPU's kernel binaries)
# in LIBRARY_DIR.
AOT_DIR = "aot"
MANIFEST = "manifest.json"
LIBRARY_DIR = "library"
MODULES = ("unet", "vae_decoder")
# Weights stay outside the code (the worker hands its own); without always_keep_tensor_constants, parameters of a
# few elements (SDXL's conv_out.bias) are baked into the code and a later change to them is silently ignored.
INDUCTOR_CONFIGS = {"aot_inductor.package_constants_in_so": False, "always_keep_tensor_constants": True}


@dataclass(frozen=True)
class Shape:
    """One call shape: the batch (the UNet's 2 with guidance; the decoder's, the images), the latents' sides and
    the prompt's tokens (the UNet's; 0 for the decoder)."""

    batch: int
    latent_height: int
    latent_width: int
    tokens: int = 77


@dataclass(frozen=True)
class PackageKey:
    """What a package was compiled for; a worker uses it only where every field is its own."""

    torch: str
    device: str
    dtype: str
    structure: str  # digest of the weights' names, shapes and dtypes

    def mismatch(self, other: PackageKey) -> str | None:
        """The first field that differs, said as a sentence; None when they match."""
        for field, ours in asdict(self).items():
            theirs = getattr(other, field)
            if ours != theirs:
                return f"it was compiled for {field} {theirs!r}, this worker has {ours!r}"
        return None


class UNetCall:
    """The UNet as a module of plain tensors in and one tensor out, as export wants it (SDXL's added conditions as
    inputs of their own)."""

    def __new__(cls, unet: Any) -> Any:
        import torch

        class _Call(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.unet = unet

            def forward(self, sample: Any, timestep: Any, encoder_hidden_states: Any, text_embeds: Any,
                        time_ids: Any) -> Any:
                return self.unet(sample, timestep, encoder_hidden_states, return_dict=False,
                                 added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids})[0]

        return _Call()


def device_key(device: str) -> str:
    """The device a package runs on: the GPU's architecture, or the CPU's instruction set."""
    import torch

    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda sm_{major}{minor}"
    # ATen's pick of vector instructions, which inductor's code is built for too; asked of ATen, not of inductor,
    # whose import (3.3 s here) would add to every start.
    return f"cpu {platform.machine()} {torch.backends.cpu.get_cpu_capability().lower()}"


def exported(module_name: str, pipe: Any) -> Any:
    """The module a package of `module_name` is compiled from and fed by: its names are the package's constants'."""
    return UNetCall(pipe.unet) if module_name == "unet" else pipe.vae.decoder


def package_key(module: Any, device: str) -> PackageKey:
    """What a package compiled from `module` (as `exported` gives it) on `device` is built for."""
    import torch

    digest = hashlib.sha256()
    tensors = constants(module)
    for name, tensor in sorted(tensors.items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    dtype = next(iter(module.parameters())).dtype
    return PackageKey(torch=torch.__version__, device=device_key(device), dtype=str(dtype).removeprefix("torch."),
                      structure=digest.hexdigest()[:16])


def constants(module: Any) -> dict[str, Any]:
    """The module's parameters and buffers by name: what the package reads, the worker's own tensors."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def example_inputs(module_name: str, pipe: Any, shape: Shape) -> tuple[Any, ...]:
    import torch

    if module_name == "vae_decoder":
        vae = pipe.vae
        weight = next(iter(vae.decoder.parameters()))
        return (torch.randn(shape.batch, vae.config.latent_channels, shape.latent_height, shape.latent_width,
                            device=weight.device, dtype=weight.dtype),)
    unet = pipe.unet
    config, device, dtype = unet.config, unet.device, unet.dtype
    width = config.cross_attention_dim
    text_embeds = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    return (torch.randn(shape.batch, config.in_channels, shape.latent_height, shape.latent_width, device=device,
                        dtype=dtype),
            torch.tensor(999.0, device=device),  # float32 whatever the sampler (unet_timestep.py)
            torch.randn(shape.batch, shape.tokens, width, device=device, dtype=dtype),
            torch.randn(shape.batch, text_embeds, device=device, dtype=dtype),
            torch.randn(shape.batch, 6, device=device, dtype=dtype))


def compile_module(module_name: str, pipe: Any, shape: Shape, folder: Path, key: PackageKey) -> None:
    """Export and compile `pipe`'s `module_name` for `shape` into `folder` (its library, and its manifest under
    `key`, package_key's for that module)."""
    import tempfile
    import zipfile

    import torch

    module = exported(module_name, pipe).train(False)  # inference behaviour (dropout off) for the export
    with torch.no_grad(), tempfile.TemporaryDirectory(dir=folder) as scratch:
        program = torch.export.export(module, example_inputs(module_name, pipe, shape), strict=False)
        archive = Path(scratch) / "package.pt2"
        # The call changes the configs it is given: a copy.
        torch._inductor.aoti_compile_and_package(program, package_path=str(archive),
                                                 inductor_configs=dict(INDUCTOR_CONFIGS))
        (folder / LIBRARY_DIR).mkdir()
        with zipfile.ZipFile(archive) as files:
            for member in files.namelist():
                name = Path(member).name
                if "/aotinductor/" in member and name.endswith((".so", ".cubin")):
                    (folder / LIBRARY_DIR / name).write_bytes(files.read(member))
    library = next(p.name for p in (folder / LIBRARY_DIR).iterdir() if p.name.endswith(".so"))
    manifest = {"module": module_name, "library": library, "key": asdict(key), "shape": asdict(shape)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


@dataclass(frozen=True)
class Manifest:
    """What a package folder says it holds."""

    module: str
    library: str  # the compiled library's file name in LIBRARY_DIR
    key: PackageKey
    shape: Shape


def read_manifest(folder: Path) -> Manifest:
    """The package's manifest; ValueError for one this worker cannot read, or whose library is not there (one
    sentence)."""
    path = folder / MANIFEST
    if not path.is_file() or path.stat().st_size > 64_000:
        raise ValueError(f"{path} is missing or not a manifest")
    try:
        data = json.loads(path.read_text())
        manifest = Manifest(data["module"], data["library"], PackageKey(**data["key"]), Shape(**data["shape"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a manifest this worker reads ({type(exc).__name__})") from exc
    if manifest.module not in MODULES:
        raise ValueError(f"{path} is for a module this worker does not compile ({manifest.module!r})")
    name = str(manifest.library)
    if Path(name).name != name or not (folder / LIBRARY_DIR / name).is_file():
        raise ValueError(f"{path} names a library that is not in {LIBRARY_DIR}/")
    return manifest


def load_package(folder: Path, manifest: Manifest, module: Any) -> Runner:
    """The package's runner, already reading `module`'s own tensors (never called before that: it would crash)."""
    runner = Runner(folder / LIBRARY_DIR, manifest.library, module)
    ours = constants(module)
    runner.runner.update_constant_buffer(
        {name: ours[fqn] for name, fqn in runner.runner.get_constant_names_to_original_fqns().items()},
        False, True, True)  # into the active buffer, every constant, the worker's own tensors (no copy)
    return runner


class Runner:
    """A compiled library loaded where it is, through torch's C++ runner: torch's package loader would unpack the
    archive into /tmp at each start, and its Python wrapper imports inductor (3.3 s on this project's CPU). The
    libraries here take plain tensors and return one."""

    def __init__(self, library_dir: Path, library: str, module: Any) -> None:
        import torch

        device = next(iter(module.parameters())).device
        path = str(library_dir / library)
        if device.type == "cuda":
            self.runner = torch._C._aoti.AOTIModelContainerRunnerCuda(path, 1, str(device), str(library_dir))
        else:
            self.runner = torch._C._aoti.AOTIModelContainerRunnerCpu(path, 1)

    def __call__(self, *tensors: Any) -> Any:
        return self.runner.run(list(tensors))[0]


class StandIn:
    """Stands in for a module's `forward`: calls of a package's shape go through it, any other to the module's own
    (and every call while `bypass` is set: a job whose LoRA adds layers the package does not have)."""

    def __init__(self, forward: Callable[..., Any], runners: dict[Shape, Any], dtype: Any, device: Any) -> None:
        self.eager = forward
        self.runners = runners
        self.dtype = dtype
        self.device = device
        self.bypass = False
        self.calls = 0
        self.eager_calls = 0


class AotForward(StandIn):
    """The UNet's stand-in: its call with SDXL's added conditions, as the pipelines make it."""

    def __call__(self, sample: Any, timestep: Any, encoder_hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
        found = None if self.bypass else self._inputs(sample, timestep, encoder_hidden_states, args, kwargs)
        if found is None:
            self.eager_calls += 1
            return self.eager(sample, timestep, encoder_hidden_states, *args, **kwargs)
        runner, inputs = found
        self.calls += 1
        output = runner(*inputs)
        return (output,) if not kwargs.get("return_dict", True) else _Output(output)

    def _inputs(self, sample: Any, timestep: Any, hidden: Any, args: tuple, kwargs: dict) -> tuple | None:
        """The package for this call and its five inputs, or None when no package can take it."""
        import torch

        extra = {key: value for key, value in kwargs.items()
                 if value is not None and key not in ("added_cond_kwargs", "return_dict")}
        added = kwargs.get("added_cond_kwargs") or {}
        if args or extra or set(added) != {"text_embeds", "time_ids"} or torch.is_grad_enabled():
            return None  # a ControlNet's residuals, IP-Adapter's embeddings, a timestep condition: eager
        tensors = (sample, hidden, added["text_embeds"], added["time_ids"])
        if not all(isinstance(t, torch.Tensor) and t.dtype == self.dtype and t.device == self.device
                   for t in tensors) or sample.dim() != 4 or hidden.dim() != 3:
            return None
        if not isinstance(timestep, torch.Tensor) or timestep.numel() != 1:
            return None
        runner = self.runners.get(Shape(sample.shape[0], sample.shape[2], sample.shape[3], hidden.shape[1]))
        if runner is None or any(t.shape[0] != sample.shape[0] for t in tensors):
            return None
        return runner, (sample.contiguous(), timestep.reshape(()).to(torch.float32), hidden.contiguous(),
                        added["text_embeds"].contiguous(), added["time_ids"].contiguous())


class AotDecoder(StandIn):
    """The VAE decoder's stand-in: latents in, pixels out."""

    def __call__(self, sample: Any, latent_embeds: Any = None) -> Any:
        import torch

        runner = None
        if not self.bypass and latent_embeds is None and not torch.is_grad_enabled() and \
                isinstance(sample, torch.Tensor) and sample.dim() == 4 and sample.dtype == self.dtype and \
                sample.device == self.device:
            runner = self.runners.get(Shape(sample.shape[0], sample.shape[2], sample.shape[3], 0))
        if runner is None:
            self.eager_calls += 1
            return self.eager(sample, latent_embeds)
        self.calls += 1
        return runner(sample.contiguous())


def use_packages(pipe: Any, model_dir: Path, device: str) -> dict[str, int]:
    """Route the UNet's and the VAE decoder's calls through the packages under `model_dir` built for this worker;
    how many each got. A package for another torch, device, dtype or structure, or an unreadable one, is ignored
    with one log line."""
    folder = model_dir / AOT_DIR
    if not folder.is_dir():
        return {}
    keys = {name: package_key(exported(name, pipe), device) for name in MODULES}
    runners: dict[str, dict[Shape, Any]] = {name: {} for name in MODULES}
    for candidate in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            manifest = read_manifest(candidate)
        except ValueError as exc:
            log.warning("compiled package %s ignored: %s", candidate.name, exc)
            continue
        if (why := keys[manifest.module].mismatch(manifest.key)) is not None:
            log.warning("compiled package %s ignored: %s (prepare_volume.py compile builds one)", candidate.name, why)
            continue
        shape = manifest.shape
        runners[manifest.module][shape] = load_package(candidate, manifest, exported(manifest.module, pipe))
        log.info("compiled package %s loaded: %s, batch %d, latents %dx%d", candidate.name, manifest.module,
                 shape.batch, shape.latent_height, shape.latent_width)
    if runners["unet"]:
        pipe.unet.forward = AotForward(pipe.unet.forward, runners["unet"], pipe.unet.dtype, pipe.unet.device)
    if runners["vae_decoder"]:
        decoder = pipe.vae.decoder
        weight = next(iter(decoder.parameters()))
        decoder.forward = AotDecoder(decoder.forward, runners["vae_decoder"], weight.dtype, weight.device)
    return {name: len(found) for name, found in runners.items() if found}


def package_name(module_name: str, shape: Shape, key: PackageKey) -> str:
    """A package's folder name: what it is, for whom."""
    tokens = f"-t{shape.tokens}" if shape.tokens else ""
    return (f"{module_name}-b{shape.batch}-{shape.latent_width * 8}x{shape.latent_height * 8}{tokens}-"
            f"{key.device.split()[0]}-{key.dtype}")


class _Output:
    """diffusers' UNet2DConditionOutput's one field, for a caller that asked for a dataclass."""

    def __init__(self, sample: Any) -> None:
        self.sample = sample
