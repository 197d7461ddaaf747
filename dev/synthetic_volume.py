"""Build an SDXL-architecture pipeline folder with random weights, laid out like a real volume.

No real weights can be fetched where this project is built and tested, and a worker must never
download any, so tests, the demo and the benchmarks need a model folder made locally. Timing and
memory of loading and sampling depend on shapes and bytes, not on weight values, so `full` (the
published SDXL base 1.0 configs, shipped in sdxl_worker/assets) stands in for PhotonicFusion SDXL
in benchmarks, and `tiny` (same structure, small widths) generates in seconds on a CPU.

`--layout` says whose names the files use. `current`: what today's libraries write. `published`: what the
published SDXL repositories hold (their text encoders saved by transformers 4.32: CLIPTextModel's tensors under
`text_model.`; configs with transformers 4's `torch_dtype` and diffusers 0.19's version; the standard UNet
sharded with its index, as diffusers shards a float32 SDXL UNet): at full scale every file's size equals the
published one's (tests/dev/test_synthetic_volume.py). `legacy`: older conversions, `published` plus the
`position_ids` buffer transformers < 4.31 stored in both text encoders and the VAE attention names diffusers
< 0.14 wrote (`query`, `key`, `value`, `proj_attn`).

    python -m dev.synthetic_volume OUT [--scale tiny|full] [--variants fp16,standard] [--layout current]
                                               [--seed 0] [--extras] [--shard-mb N] [--device cpu]

The same arguments give the same bytes. The folder appears complete or not at all: it is written
under a temporary name beside OUT and renamed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from sdxl_worker.logs import configure_logging
from sdxl_worker.prepare.pipeline_files import MODEL_COMPONENTS, model_config, write_pipeline_files
from sdxl_worker.serving.stack_test import TINY_CONFIGS, model_instance
from sdxl_worker.weights.layout import VARIANTS, Variant, index_file_names, shard_file_name, single_file_name

SCALES = ("tiny", "full")
LAYOUTS = ("current", "published", "legacy")
STAMP = ".synthetic_volume.json"
# What the published SDXL base 1.0 configs carry beside the shapes (shared/reference, sdxl_worker/assets).
PUBLISHED_CONFIG_KEYS = {
    "transformers": {"torch_dtype": "float16", "transformers_version": "4.32.0.dev0"},
    "diffusers": {"_diffusers_version": "0.19.0.dev0"},
}
# diffusers < 0.14's names for the VAE's attention projections, as its _fix_state_dict_keys_on_load lists them.
DEPRECATED_VAE_ATTENTION = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}

# Files a real volume carries beside the safetensors (see LFS_WEIGHT_FILES in the SDXL repo). They
# are filled with bytes that fail any parser, so a loader that reads one breaks loudly in tests.
DECOYS = {
    ".": ["sd_xl_base_1.0.safetensors"],
    "text_encoder": ["flax_model.msgpack", "model.onnx", "openvino_model.bin"],
    "text_encoder_2": ["flax_model.msgpack", "model.onnx", "model.onnx_data"],
    "unet": ["diffusion_flax_model.msgpack", "model.onnx", "model.onnx_data"],
    "vae": ["diffusion_flax_model.msgpack"],
}


def component_config(scale: str, component: str, layout: str = "current") -> dict[str, object]:
    """The config.json written for a model component at `scale` (full: the published one, verbatim)."""
    if scale == "full":
        return model_config(component)
    config = dict(TINY_CONFIGS[component])
    if layout != "current":
        config.update(PUBLISHED_CONFIG_KEYS["transformers" if component.startswith("text_encoder") else "diffusers"])
    return config


def stored_tensors(component: str, state: dict, layout: str, max_positions: int = 77) -> dict:
    """A model's state dict under the names (and with the buffers) files of `layout` hold."""
    if layout == "current":
        return state
    import torch

    if component == "text_encoder":  # transformers 4's CLIPTextModel held the transformer as `text_model`
        state = {f"text_model.{name}": tensor for name, tensor in state.items()}
    if layout == "legacy" and component.startswith("text_encoder"):
        state["text_model.embeddings.position_ids"] = torch.arange(max_positions).expand((1, -1))
    if layout == "legacy" and component == "vae":
        state = {_deprecated_attention(name): tensor for name, tensor in state.items()}
    return state


def _deprecated_attention(name: str) -> str:
    if ".mid_block.attentions." not in name:
        return name
    for new, old in DEPRECATED_VAE_ATTENTION.items():
        head, found, tail = name.rpartition(f".{new}")
        if found and "." not in tail:
            return f"{head}.{old}{tail}"
    return name


def build_volume(
    out: str | os.PathLike[str],
    scale: str = "tiny",
    variants: Iterable[Variant] = VARIANTS,
    seed: int = 0,
    extras: bool = False,
    shard_bytes: int | None = None,
    device: str = "cpu",
    reuse: bool = True,
    layout: str = "current",
) -> Path:
    """Write the folder and return its path; with `reuse`, a folder built with the same arguments is kept."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    variants = tuple(v for v in VARIANTS if v in set(variants))
    if not variants:
        raise ValueError("choose at least one of the variants fp16, standard")
    out = Path(out)
    configs = json.dumps([component_config(scale, c, layout) for c in MODEL_COMPONENTS], sort_keys=True).encode()
    params = {"scale": scale, "variants": list(variants), "seed": seed, "extras": extras, "shard_bytes": shard_bytes,
              "layout": layout, "configs": hashlib.sha256(configs).hexdigest()[:16]}
    stamp = out / STAMP
    if reuse and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return out
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_pipeline_files(partial)
    for number, component in enumerate(MODEL_COMPONENTS):
        _write_model(partial / component, scale, component, variants, seed * 1000 + number, shard_bytes, device,
                     layout)
    if extras:
        _write_decoys(partial, seed)
    (partial / STAMP).write_text(json.dumps(params))
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def _write_model(
    folder: Path,
    scale: str,
    component: str,
    variants: tuple[Variant, ...],
    seed: int,
    shard_bytes: int | None,
    device: str,
    layout: str = "current",
) -> None:
    import torch

    config = component_config(scale, component, layout)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.manual_seed(seed)
    with torch.device(device):  # the same weights in every layout (transformers would init in torch_dtype)
        model, library = _instantiate(component, component_config(scale, component))
    state = stored_tensors(component, model.state_dict(), layout, int(config.get("max_position_embeddings", 77)))
    del model
    for variant in variants:
        dtype = torch.float16 if variant == "fp16" else torch.float32
        tensors = {name: (t.detach().to(dtype) if t.is_floating_point() else t).contiguous().cpu()
                   for name, t in state.items()}
        shards = shard_bytes
        if layout != "current" and component == "unet" and variant == "standard" and shards is None:
            # Shards of at most half the set's bytes (three for the tiny UNet: no tensor is split across shards).
            shards = math.ceil(sum(t.numel() * t.element_size() for t in tensors.values()) / 2)
        _save_weights(folder, library, variant, tensors, shards)
        del tensors


def _instantiate(component: str, config: dict[str, object]) -> tuple[object, str]:
    return model_instance(component, config), "transformers" if component.startswith("text_encoder") else "diffusers"


def _save_weights(folder: Path, library: str, variant: Variant, tensors: dict, shard_bytes: int | None) -> None:
    from safetensors.torch import save_file

    metadata = {"format": "pt"}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if shard_bytes is None or total <= shard_bytes:
        save_file(tensors, folder / single_file_name(library, variant), metadata=metadata)
        return
    shards: list[dict] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        filename = shard_file_name(library, variant, number, len(shards))
        save_file(shard, folder / filename, metadata=metadata)
        weight_map.update(dict.fromkeys(shard, filename))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / index_file_names(library, variant)[0]).write_text(json.dumps(index, indent=2, sort_keys=True))


def _write_decoys(root: Path, seed: int) -> None:
    for folder, names in DECOYS.items():
        for name in names:
            digest = hashlib.sha256(f"{seed}/{folder}/{name}".encode()).digest()
            # A huge header length in the first 8 bytes: unreadable as safetensors, msgpack or ONNX.
            (root / folder / name).write_bytes(b"\xff" * 8 + digest * 64)


def main(argv: list[str] | None = None) -> int:
    configure_logging("WARNING", stream=sys.stderr)  # without the libraries' import notices
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", choices=SCALES, default="tiny")
    parser.add_argument("--variants", default="fp16,standard", help="comma-separated: fp16, standard")
    parser.add_argument("--layout", choices=LAYOUTS, default="current", help="whose tensor names the files use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extras", action="store_true", help="add the flax/onnx/single-file decoys")
    parser.add_argument("--shard-mb", type=float, help="shard weight files larger than this many MB")
    parser.add_argument("--device", default="cpu", help="where to initialise the weights (cuda is faster)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching folder exists")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    shard_bytes = math.ceil(args.shard_mb * 1e6) if args.shard_mb else None
    path = build_volume(args.out, args.scale, variants, args.seed, args.extras, shard_bytes, args.device,
                        reuse=not args.force, layout=args.layout)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
