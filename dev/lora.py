"""Write SDXL LoRA files for a model folder, in the key formats users bring: diffusers/PEFT and kohya.

No LoRA can be fetched here, so the tests make their own, for any model size (the tiny test model too): random
low-rank weights on every attention projection of the UNet and of both text encoders, named as the trainers
name them: diffusers' `unet.down_blocks.1.attentions.0.….to_q.lora_A.weight`, and kohya's (A1111, Civitai)
`lora_unet_input_blocks_4_1_….to_q.lora_down.weight` in Stability's original block numbering, with `.alpha`.
The same seed gives the same weights in both formats (kohya's alpha equal to the rank: a scale of 1), so
the two files must draw the same image.

    python -m dev.lora MODEL_DIR OUT.safetensors [--format diffusers|kohya] [--rank N] [--seed N] [--parts ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from dev.single_file import unet_names
from sdxl_worker.logs import configure_logging

PARTS = ("unet", "text_encoder", "text_encoder_2")
TARGETS = {"unet": ("to_q", "to_k", "to_v", "to_out.0"), "text_encoder": ("q_proj", "k_proj", "v_proj", "out_proj"),
           "text_encoder_2": ("q_proj", "k_proj", "v_proj", "out_proj")}
KOHYA_PREFIX = {"unet": "lora_unet", "text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def projections(model_dir: Path, part: str) -> list[tuple[str, int, int]]:
    """(module name as trainers write it, in features, out features) of each targeted projection."""
    import torch

    config = json.loads((model_dir / part / "config.json").read_text())
    with torch.device("meta"):
        if part == "unet":
            from diffusers import UNet2DConditionModel

            model = UNet2DConditionModel.from_config(config)
        else:
            import transformers

            cls = getattr(transformers, config["architectures"][0])
            model = cls(getattr(transformers, cls.config_class.__name__).from_dict(config))
    found = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(TARGETS[part]) and (
                part != "unet" or ".attn" in name):
            # Trainers wrote CLIP's names with transformers 4, where both encoders had `text_model.` in front.
            if part != "unet" and not name.startswith("text_model."):
                name = f"text_model.{name}"
            found.append((name, module.in_features, module.out_features))
    return found


def lora_tensors(model_dir: Path, fmt: str = "diffusers", rank: int = 4, seed: int = 0,
                 parts: tuple[str, ...] = PARTS, std: float = 0.1) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for part in parts:
        sgm = unet_names(json.loads((model_dir / "unet" / "config.json").read_text())) if part == "unet" else {}
        for name, fan_in, fan_out in projections(model_dir, part):
            down = torch.randn(rank, fan_in, generator=generator) * std
            up = torch.randn(fan_out, rank, generator=generator) * std
            if fmt == "diffusers":
                tensors[f"{part}.{name}.lora_A.weight"], tensors[f"{part}.{name}.lora_B.weight"] = down, up
                continue
            for diffusers_prefix, original in sgm.items():
                if name.startswith(diffusers_prefix):
                    name = original + name[len(diffusers_prefix):]
                    break
            key = f"{KOHYA_PREFIX[part]}_{name.replace('.', '_')}"
            tensors[f"{key}.lora_down.weight"], tensors[f"{key}.lora_up.weight"] = down, up
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    return tensors


def write_lora(model_dir: Path, out: Path, fmt: str = "diffusers", rank: int = 4, seed: int = 0,
               parts: tuple[str, ...] = PARTS) -> Path:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_tensors(model_dir, fmt, rank, seed, parts), out)
    return out


def main(argv: list[str] | None = None) -> int:
    configure_logging("WARNING", stream=sys.stderr)  # without the libraries' import notices
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--format", choices=("diffusers", "kohya"), default="diffusers")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args(argv)
    path = write_lora(args.model_dir, args.out, args.format, args.rank, args.seed, tuple(args.parts))
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
