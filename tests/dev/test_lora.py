"""The test LoRAs: named as trainers name them, in both formats, for any model size."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from dev.lora import main


def test_kohya_files_use_the_original_block_numbering_and_carry_alphas(tiny_volume_source: Path,
                                                                        tmp_path: Path) -> None:
    assert main([str(tiny_volume_source), str(tmp_path / "k.safetensors"), "--format", "kohya", "--rank", "8"]) == 0
    assert main([str(tiny_volume_source), str(tmp_path / "d.safetensors"), "--parts", "unet"]) == 0
    with safe_open(tmp_path / "k.safetensors", "pt") as kohya, safe_open(tmp_path / "d.safetensors", "pt") as plain:
        kohya_keys, plain_keys = set(kohya.keys()), set(plain.keys())
        alpha = kohya.get_tensor(next(k for k in kohya_keys if k.endswith(".alpha")))
    assert {key.split("_", 2)[1] for key in kohya_keys} == {"unet", "te1", "te2"}
    assert any(key.startswith("lora_unet_input_blocks_") for key in kohya_keys)
    assert not any("down_blocks" in key for key in kohya_keys)
    assert any(key.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.") for key in kohya_keys)
    assert float(alpha) == 8.0
    assert all(key.startswith("unet.") and (".lora_A." in key or ".lora_B." in key) for key in plain_keys)
    # Each UNet projection: down, up and alpha in kohya's file, A and B in diffusers'.
    assert sum(key.startswith("lora_unet_") for key in kohya_keys) == 3 * len(plain_keys) // 2
