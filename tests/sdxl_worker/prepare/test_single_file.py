"""What a single-file checkpoint is, said from its header alone; converted names and shapes known before writing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dev.single_file import write_checkpoint
from sdxl_worker.prepare.fp16_set import PrepareError
from sdxl_worker.prepare.pipeline_files import model_config
from sdxl_worker.prepare.single_file import components_in, identify, plan_component
from sdxl_worker.weights.safetensors_header import read_safetensors_header


@pytest.fixture(scope="module")
def checkpoint(fp32_volume_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(fp32_volume_source, tmp_path_factory.mktemp("ckpt") / "photonic.safetensors")


def _fake(tmp_path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    path = tmp_path / "other.safetensors"
    save_file({name: torch.zeros(shape) for name, shape in shapes.items()}, path)
    return path


def test_an_sdxl_checkpoint_of_any_depth_is_recognised(checkpoint: Path) -> None:
    info = read_safetensors_header(checkpoint)
    assert identify(info) is None
    assert all(components_in(info).values())


@pytest.mark.parametrize(("shapes", "words"), [
    ({"model.diffusion_model.output_blocks.11.0.skip_connection.weight": (2, 2),
      "model.diffusion_model.input_blocks.0.0.weight": (2, 4, 3, 3)}, "a Stable Diffusion 1.x model"),
    ({"model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (2, 1024)},
     "a Stable Diffusion 2.x model"),
    ({"double_blocks.0.img_attn.norm.key_norm.scale": (4,), "img_in.weight": (4, 64)}, "a Flux model"),
    ({"conditioner.embedders.0.model.text_projection": (4, 4),
      "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (4,)}, "the SDXL refiner"),
    ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 4)}, "a LoRA"),
    ({"encoder.weight": (3,)}, "holds no Stable Diffusion checkpoint"),
    # Shapes and names diffusers' own detector trips on (IndexError, KeyError 'pos_embed'): still one sentence.
    ({"model.diffusion_model.output_blocks.11.0.skip_connection.weight": (2, 2),
      "model.diffusion_model.input_blocks.0.0.weight": (4,)}, "is not an SDXL base checkpoint: its tensors fit none"),
    ({"model.diffusion_model.input_blocks.0.0.weight": ()}, "is not an SDXL base checkpoint"),
    ({"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,)},
     "looks like Stable Diffusion 3 (with tensors diffusers cannot read), not SDXL base"),
])
def test_other_checkpoints_are_refused_saying_what_they_look_like(tmp_path: Path, shapes: dict, words: str) -> None:
    refusal = identify(read_safetensors_header(_fake(tmp_path, shapes)))
    assert refusal is not None and words in refusal and refusal.startswith("other.safetensors")


def test_the_plan_knows_every_output_tensor_before_reading_one(checkpoint: Path, fp32_volume_source: Path,
                                                                tmp_path: Path) -> None:
    info = read_safetensors_header(checkpoint)
    config = model_config("unet", fp32_volume_source)
    part = plan_component(info, "unet", tmp_path, config, "the test's")
    stored = read_safetensors_header(fp32_volume_source / "unet" / "diffusion_pytorch_model.safetensors")
    assert {s.name: s.shape for s in part.specs} == stored.shapes
    assert {s.dtype for s in part.specs} == {"F16"}
    assert sum(s.nbytes for s in part.specs) == (stored.file_bytes - stored.data_start) // 2


def test_weights_that_do_not_fit_the_config_are_refused_before_writing(checkpoint: Path, tmp_path: Path) -> None:
    """A small model against SDXL base 1.0's shipped config: the sentence says which tensors differ."""
    info = read_safetensors_header(checkpoint)
    with pytest.raises(PrepareError, match=r"unet: the checkpoint's weights do not fit SDXL base 1\.0's config: .*"
                                           r"of another shape"):
        plan_component(info, "unet", tmp_path, model_config("unet"), "SDXL base 1.0")
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_missing_a_tensor_the_mapping_needs_is_one_sentence(checkpoint: Path, fp32_volume_source: Path,
                                                                         tmp_path: Path) -> None:
    from safetensors.torch import load_file

    tensors = load_file(checkpoint)
    del tensors["model.diffusion_model.label_emb.0.2.weight"]
    damaged = tmp_path / "damaged.safetensors"
    save_file(tensors, damaged)
    info = read_safetensors_header(damaged)
    with pytest.raises(PrepareError, match=r"^unet: the checkpoint's tensors cannot be converted \(KeyError: "):
        plan_component(info, "unet", tmp_path, model_config("unet", fp32_volume_source), "the test's")
