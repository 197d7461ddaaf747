"""`prepare_volume.py compile`: the UNet and the VAE decoder compiled ahead of time (AOTInductor) for the worker's
module structure, one package a module and size, next to the model (speed/aot.py), so that no start ever compiles.

The model is loaded as the worker loads it on the device named (its dtype, fused q/k/v), exported and compiled; the
compiler is silent for minutes, so a line every 30 s says it is still working. Each package is compiled into a
hidden folder beside the others and renamed into place whole, under the model folder's writer lock: a crash leaves
no half-written package the worker would read, and a rerun removes the leftovers and compiles only what is missing
(a package whose manifest matches what it would build is kept).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdxl_worker.prepare.commands import Summary, finish
from sdxl_worker.prepare.fp16_set import PrepareError
from sdxl_worker.prepare.lock import writer_lock
from sdxl_worker.speed.aot import (
    AOT_DIR,
    PackageKey,
    Shape,
    compile_module,
    exported,
    package_key,
    package_name,
    read_manifest,
)
from sdxl_worker.volume.check import check_volume

TEMPORARY = ".compiling-"


def parse_shapes(text: str) -> list[Shape]:
    """`WxH,WxH`: image sizes, each as the UNet sees one image with guidance (batch 2); ValueError naming a bad
    one."""
    shapes = []
    for part in text.split(","):
        width, _, height = part.strip().partition("x")
        if not (width.isdigit() and height.isdigit()) or int(width) % 8 or int(height) % 8 or \
                not 256 <= int(width) <= 4096 or not 256 <= int(height) <= 4096:
            raise ValueError(f"{part.strip()!r} is not a size WxH with sides of 256-4096 pixels, multiples of 8")
        shapes.append(Shape(2, int(height) // 8, int(width) // 8))
    return shapes


def compile_packages(model_path: Path, shapes: list[Shape], device: str) -> Summary:
    """The `compile` command (see the module docstring)."""
    from sdxl_worker.loading.loader import load_pipeline
    from sdxl_worker.speed.options import SpeedOptions, apply_speedups

    summary = Summary("compile", str(model_path))
    report = check_volume(model_path)
    if not report.loadable:
        raise PrepareError(f"{model_path} is not a model folder the worker can load: {report.summary()}", 2)
    with writer_lock(model_path):
        folder = model_path / AOT_DIR
        folder.mkdir(exist_ok=True)
        for leftover in folder.glob(f"{TEMPORARY}*"):
            shutil.rmtree(leftover)
            summary.removed_leftovers.append(str(leftover.relative_to(model_path)))
        pipe, _ = load_pipeline(model_path, device)
        # The worker's module structure: fused q/k/v; no graphs, no compiling, no package of its own.
        apply_speedups(pipe, SpeedOptions(cuda_graphs=False, aot="off"), device)
        started = time.perf_counter()
        for shape in shapes:
            what = f"{shape.latent_width * 8}x{shape.latent_height * 8}"
            # The UNet as it sees one image with guidance; the decoder, one image's latents.
            for module_name, module_shape in (("unet", shape), ("vae_decoder", Shape(1, shape.latent_height,
                                                                                     shape.latent_width, 0))):
                key = package_key(exported(module_name, pipe), device)
                name = package_name(module_name, module_shape, key)
                if built(folder / name, module_name, key, module_shape):
                    summary.actions.append(f"the {module_name} for {what}: {AOT_DIR}/{name} is compiled already")
                    continue
                staging = folder / f"{TEMPORARY}{module_name}-{what}"
                staging.mkdir()
                with still_working(f"compiling the {module_name} for {what}"):
                    compile_module(module_name, pipe, module_shape, staging, key)
                shutil.rmtree(folder / name, ignore_errors=True)
                staging.rename(folder / name)
                size = sum(p.stat().st_size for p in (folder / name).rglob("*") if p.is_file())
                summary.bytes_to_write += size
                summary.written.append(f"{AOT_DIR}/{name}")
                summary.actions.append(f"compiled the {module_name} for {what}: {AOT_DIR}/{name} ({size / 1e6:.1f} "
                                       f"MB; {key.device}, {key.dtype}, torch {key.torch})")
        summary.seconds = time.perf_counter() - started
        if not summary.written:
            summary.status = "nothing to do"
    return finish(summary, check_volume(model_path))


def built(folder: Path, module_name: str, key: PackageKey, shape: Shape) -> bool:
    """Whether `folder` holds the package this run would write (its library there)."""
    try:
        manifest = read_manifest(folder)
    except ValueError:
        return False
    return (manifest.module, manifest.key, manifest.shape) == (module_name, key, shape)


@contextmanager
def still_working(what: str, every_s: float = 30.0) -> Iterator[None]:
    """A line on stderr every `every_s` while the block runs: the compiler prints nothing for minutes."""
    done = threading.Event()
    started = time.perf_counter()

    def say() -> None:
        while not done.wait(every_s):
            print(f"... {what}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    thread = threading.Thread(target=say, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
