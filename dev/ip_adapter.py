"""Write an SDXL IP-Adapter and its CLIP image encoder for a model folder, laid out as the published ones are.

No IP-Adapter can be fetched here, so the tests and the demo make their own for any model size (the tiny test model
too): `NAME.safetensors` with `image_proj.*` (the plain adapter's projection: 4 image tokens as wide as the UNet's
cross-attention) and `ip_adapter.N.to_k_ip/to_v_ip` for each cross-attention in diffusers' order (1, 3, 5, ...),
beside `image_encoder/`, a small random CLIP vision model (224-pixel input, as CLIPImageProcessor's default).

    python -m dev.ip_adapter MODEL_DIR OUT_FOLDER [--name NAME] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sdxl_worker.logs import configure_logging

ENCODER_CONFIG = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "image_size": 224, "patch_size": 32, "projection_dim": 24}


def write_image_encoder(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**ENCODER_CONFIG)).save_pretrained(out / "image_encoder")
    return out / "image_encoder"


def adapter_tensors(model_dir: Path, seed: int = 0, std: float = 0.3) -> dict[str, object]:
    import torch
    from diffusers import UNet2DConditionModel

    config = json.loads((model_dir / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    cross = config["cross_attention_dim"]
    embed = ENCODER_CONFIG["projection_dim"]
    tensors = {"image_proj.proj.weight": torch.randn(4 * cross, embed, generator=generator) * std,
               "image_proj.proj.bias": torch.zeros(4 * cross), "image_proj.norm.weight": torch.ones(cross),
               "image_proj.norm.bias": torch.zeros(cross)}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        hidden = attention.to_k.out_features
        for kind in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key_id}.{kind}.weight"] = torch.randn(hidden, cross, generator=generator) * std
        key_id += 2
    return tensors


def write_ip_adapter(model_dir: Path, out: Path, name: str = "ip-adapter_sdxl", seed: int = 0) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    if not (out / "image_encoder" / "config.json").is_file():
        write_image_encoder(out, seed)
    save_file(adapter_tensors(model_dir, seed), out / f"{name}.safetensors")  # type: ignore[arg-type]
    return out / f"{name}.safetensors"


def main(argv: list[str] | None = None) -> int:
    configure_logging("WARNING", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--name", default="ip-adapter_sdxl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote {write_ip_adapter(args.model_dir, args.out, args.name, args.seed)} and {args.out / 'image_encoder'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
