"""Write a diffusers SDXL folder as a single-file checkpoint in Stability's original (sgm) key layout.

The tests need single-file checkpoints to convert, and none can be fetched here, so they are made from a
synthetic volume: every tensor renamed to its original name by hand (the inverse of diffusers'
`single_file_utils` mappings, for any number of blocks and layers, so the tiny model works too), the OpenCLIP
encoder's q/k/v joined into `in_proj`, its projection transposed, the VAE's attention weights as 1x1 convs.

    python -m dev.single_file MODEL_DIR OUT.safetensors [--dtype F32|F16|BF16] [--no-vae]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sdxl_worker.logs import configure_logging
from sdxl_worker.prepare.single_file import PREFIXES

RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
          ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
UNET_LAYERS = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
               "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
OPENCLIP = (("text_model.encoder.layers.", "transformer.resblocks."), ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"), (".fc1.", ".c_fc."), (".fc2.", ".c_proj."), (".self_attn.", ".attn."),
            ("text_model.final_layer_norm.", "ln_final."),
            ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
            ("text_model.embeddings.position_embedding.weight", "positional_embedding"))


def unet_names(config: dict[str, Any]) -> dict[str, str]:
    """Diffusers prefix -> original prefix for every block of a UNet with this config."""
    layers, blocks = config["layers_per_block"], len(config["down_block_types"])
    names = {f"{k}.": f"{v}." for k, v in UNET_LAYERS.items()}
    slot = 1
    for i, kind in enumerate(config["down_block_types"]):
        for j in range(layers):
            names[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{slot}.0."
            if kind.startswith("CrossAttn"):
                names[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{slot}.1."
            slot += 1
        if i < blocks - 1:
            names[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{slot}.0.op."
            slot += 1
    names.update({"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                  "mid_block.resnets.1.": "middle_block.2."})
    for i, kind in enumerate(config["up_block_types"]):
        attention = kind.startswith("CrossAttn")
        for j in range(layers + 1):
            slot = i * (layers + 1) + j
            names[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{slot}.0."
            if attention:
                names[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{slot}.1."
        if i < blocks - 1:
            names[f"up_blocks.{i}.upsamplers.0.conv."] = f"output_blocks.{slot}.{2 if attention else 1}.conv."
    return names


def vae_names(config: dict[str, Any]) -> dict[str, str]:
    """Diffusers prefix -> original prefix for every block of a VAE with this config."""
    blocks, layers = len(config["down_block_types"]), config["layers_per_block"]
    names = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for i in range(blocks):
        for j in range(layers):
            names[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        names[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        for j in range(layers + 1):
            names[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{blocks - 1 - i}.block.{j}."
        names[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{blocks - 1 - i}.upsample."
    for part in ("encoder", "decoder"):
        for k in range(2):
            names[f"{part}.mid_block.resnets.{k}."] = f"{part}.mid.block_{k + 1}."
        names[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    return names


def _rename(name: str, prefixes: dict[str, str]) -> str:
    for new, old in sorted(prefixes.items(), key=lambda item: -len(item[0])):
        if name.startswith(new):
            return old + name[len(new):]
    return name


def original_unet(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    names = unet_names(config)
    out = {}
    for name, tensor in tensors.items():
        renamed = _rename(name, names)
        if ".resnets." in name:
            for new, old in RESNET:
                renamed = renamed.replace(f".{new}.", f".{old}.")
        out[renamed] = tensor
    return out


def original_vae(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    names = vae_names(config)
    out = {}
    for name, tensor in tensors.items():
        renamed = _rename(name, names).replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in renamed:
            for new, old in VAE_ATTENTION:
                renamed = renamed.replace(f".attn_1.{new}.", f".attn_1.{old}.")
            if tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
        out[renamed] = tensor
    return out


def original_openclip(tensors: dict[str, Any]) -> dict[str, Any]:
    import torch

    out, joined = {}, {}
    for name, tensor in tensors.items():
        if name == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
            continue
        renamed = name
        for new, old in OPENCLIP:
            renamed = renamed.replace(new, old)
        for part in ("q", "k", "v"):
            marker = f".attn.{part}_proj."
            if marker in renamed:
                stem, kind = renamed.split(marker)
                joined.setdefault((stem, kind), {})[part] = tensor
                break
        else:
            out[renamed] = tensor
    for (stem, kind), parts in joined.items():
        out[f"{stem}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def write_checkpoint(model_dir: Path, out: Path, dtype: str = "F32", vae: bool = True) -> Path:
    """The standard (else fp16) weights of `model_dir` as one original-layout checkpoint in `dtype`."""
    import torch
    from safetensors.torch import load_file, save_file

    torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    state: dict[str, Any] = {}
    for component, prefix in PREFIXES.items():
        if component == "vae" and not vae:
            continue
        folder = model_dir / component
        # The set nearest the checkpoint's dtype: less memory, and the same values.
        files = sorted(folder.glob("*.safetensors"), key=lambda p: (".fp16." in p.name) == (dtype == "F32"))
        tensors = load_file(files[0])
        config = json.loads((folder / "config.json").read_text())
        if component == "unet":
            tensors = original_unet(tensors, config)
        elif component == "vae":
            tensors = original_vae(tensors, config)
        elif component == "text_encoder":
            tensors = {(n if n.startswith("text_model.") else f"text_model.{n}"): t for n, t in tensors.items()}
        else:
            tensors = original_openclip(tensors)
        state.update({prefix + name: t.to(torch_dtype).contiguous() for name, t in tensors.items()})
    save_file(state, out)
    return out


def main(argv: list[str] | None = None) -> int:
    configure_logging("WARNING", stream=sys.stderr)  # without the libraries' import notices
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", choices=("F32", "F16", "BF16"), default="F32")
    parser.add_argument("--no-vae", action="store_true", help="leave the VAE out, as some checkpoints do")
    args = parser.parse_args(argv)
    print(write_checkpoint(args.model_dir, args.out, args.dtype, vae=not args.no_vae))
    return 0


if __name__ == "__main__":
    sys.exit(main())
