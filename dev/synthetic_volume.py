"""Build an SDXL-architecture pipeline folder with random weights, laid out like a real volume.

No real weights can be fetched where this project is built and tested, and a worker must never
download any, so tests, the demo and the benchmarks need a model folder made locally. Timing and
memory of loading and sampling depend on shapes and bytes, not on weight values, so `full` (the
published SDXL base 1.0 configs, shipped in sdxl_worker/assets) stands in for PhotonicFusion SDXL
in benchmarks, and `tiny` (same structure, small widths) generates in seconds on a CPU.

    python -m dev.synthetic_volume OUT [--scale tiny|full] [--variants fp16,standard]
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

from sdxl_worker.prepare.pipeline_files import MODEL_COMPONENTS, model_config, write_pipeline_files
from sdxl_worker.weights.layout import VARIANTS, Variant, index_file_names, shard_file_name, single_file_name

SCALES = ("tiny", "full")
STAMP = ".synthetic_volume.json"

_TINY_TEXT = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_size": 16,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 37,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
    "pad_token_id": 1,
    "projection_dim": 16,
    "vocab_size": 49408,
}

# Same block structure as SDXL (text_time conditioning, two text encoders concatenated into the
# cross-attention, an 8x VAE), widths cut down so a 256x256 image takes well under a second per step.
# The two text encoders differ in width, as SDXL's do (768 and 1280): converters tell them apart that way.
TINY_CONFIGS: dict[str, dict[str, object]] = {
    "text_encoder": {"architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", **_TINY_TEXT},
    "text_encoder_2": {"architectures": ["CLIPTextModelWithProjection"], "hidden_act": "gelu",
                       **_TINY_TEXT, "hidden_size": 32, "projection_dim": 32},
    "unet": {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "attention_head_dim": [2, 4],
        "block_out_channels": [32, 64],
        "cross_attention_dim": 48,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "in_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 80,
        "sample_size": 32,
        "transformer_layers_per_block": [1, 1],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    },
    "vae": {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [8, 16, 32, 32],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "out_channels": 3,
        "sample_size": 256,
        "scaling_factor": 0.13025,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    },
}

# Files a real volume carries beside the safetensors (see LFS_WEIGHT_FILES in the SDXL repo). They
# are filled with bytes that fail any parser, so a loader that reads one breaks loudly in tests.
DECOYS = {
    ".": ["sd_xl_base_1.0.safetensors"],
    "text_encoder": ["flax_model.msgpack", "model.onnx", "openvino_model.bin"],
    "text_encoder_2": ["flax_model.msgpack", "model.onnx", "model.onnx_data"],
    "unet": ["diffusion_flax_model.msgpack", "model.onnx", "model.onnx_data"],
    "vae": ["diffusion_flax_model.msgpack"],
}


def component_config(scale: str, component: str) -> dict[str, object]:
    """The config.json written for a model component at `scale` (full: the published one, verbatim)."""
    return model_config(component) if scale == "full" else dict(TINY_CONFIGS[component])


def build_volume(
    out: str | os.PathLike[str],
    scale: str = "tiny",
    variants: Iterable[Variant] = VARIANTS,
    seed: int = 0,
    extras: bool = False,
    shard_bytes: int | None = None,
    device: str = "cpu",
    reuse: bool = True,
) -> Path:
    """Write the folder and return its path; with `reuse`, a folder built with the same arguments is kept."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, not {scale!r}")
    variants = tuple(v for v in VARIANTS if v in set(variants))
    if not variants:
        raise ValueError("choose at least one of the variants fp16, standard")
    out = Path(out)
    configs = json.dumps([component_config(scale, c) for c in MODEL_COMPONENTS], sort_keys=True).encode()
    params = {"scale": scale, "variants": list(variants), "seed": seed, "extras": extras, "shard_bytes": shard_bytes,
              "configs": hashlib.sha256(configs).hexdigest()[:16]}
    stamp = out / STAMP
    if reuse and stamp.is_file() and json.loads(stamp.read_text()) == params:
        return out
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_pipeline_files(partial)
    for number, component in enumerate(MODEL_COMPONENTS):
        _write_model(partial / component, scale, component, variants, seed * 1000 + number, shard_bytes, device)
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
) -> None:
    import torch

    config = component_config(scale, component)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.manual_seed(seed)
    with torch.device(device):
        model, library = _instantiate(component, config)
    state = model.state_dict()
    del model
    for variant in variants:
        dtype = torch.float16 if variant == "fp16" else torch.float32
        tensors = {name: t.detach().to(dtype).contiguous().cpu() for name, t in state.items()}
        _save_weights(folder, library, variant, tensors, shard_bytes)
        del tensors


def _instantiate(component: str, config: dict[str, object]) -> tuple[object, str]:
    if component.startswith("text_encoder"):
        import transformers

        cls = getattr(transformers, config["architectures"][0])
        return cls(transformers.CLIPTextConfig.from_dict(config)), "transformers"
    import diffusers

    return getattr(diffusers, config["_class_name"]).from_config(config), "diffusers"


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--scale", choices=SCALES, default="tiny")
    parser.add_argument("--variants", default="fp16,standard", help="comma-separated: fp16, standard")
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
                        reuse=not args.force)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
