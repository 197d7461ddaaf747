"""A stack test for machines without a volume: a tiny random-weight SDXL built in memory, served as the model is.

RunPod's Hub tests a listing by starting the image on a test machine with no network volume and sending the jobs
in `.runpod/tests.json`. With `STACK_TEST=1` and no volume, the worker builds this pipeline instead of loading
one, then runs the same start (speed options, warm-up) and the same handler, so a Hub test proves the image's
libraries, CUDA and the job path work together. Its images are noise, and every reply says so: the model's
`variant` is `stack-test`. It is never used when a volume is there (`volume_evidence`).

`TINY_CONFIGS` is also the demo and test volumes' architecture (dev/synthetic_volume.py writes it to disk).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from sdxl_worker.loading.loader import LoadRecord
from sdxl_worker.prepare.pipeline_files import ASSETS, TOKENIZERS
from sdxl_worker.sources import DEFAULT_MODEL_CACHE, holding_cache, hub_reference

STACK_TEST_VARIANT = "stack-test"
# Where RunPod mounts a serverless worker's network volume.
RUNPOD_VOLUME = Path("/runpod-volume")

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
    "num_hidden_layers": 4,  # clip_skip needs layers to skip: up to 2 here
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


def volume_evidence(model_path: str, model_cache: str = DEFAULT_MODEL_CACHE) -> str | None:
    """Why a volume counts as attached for MODEL_PATH (a phrase for the log), or None when none is.

    A volume that is attached but lacks the model is a user's mistake that the volume check must name, never a
    reason to serve noise. Under RunPod's mount point the mount decides, so a typo any levels below it is
    reported; elsewhere the model folder or the folder above it existing does; a relative path is a folder of
    this machine, never a missing volume. A Hub id: a cache holding the repo does, else the model cache's
    folder is judged as a model folder would be (RunPod mounts it under the volume's mount point).
    """
    hub = hub_reference(model_path)
    if hub is not None:
        held = holding_cache(hub[0], model_cache)
        if held is not None:
            return f"{held[0]} {held[1]} holds {hub[0]}"
        model_path = model_cache
    path = Path(model_path)
    if not path.is_absolute():
        return f"MODEL_PATH {model_path} is a relative path"
    if path.is_relative_to(RUNPOD_VOLUME):
        if os.path.ismount(RUNPOD_VOLUME):
            return f"{RUNPOD_VOLUME} is a mount point"
        try:
            with os.scandir(RUNPOD_VOLUME) as entries:
                return f"{RUNPOD_VOLUME} holds files" if next(entries, None) is not None else None
        except FileNotFoundError:
            return None
        except OSError as error:  # there but unreadable: the volume check says how
            return f"{RUNPOD_VOLUME} is there ({error.strerror})"
    for where in (path, path.parent):
        if os.path.lexists(where):
            return f"{where} exists"
    return None


def model_instance(component: str, config: dict[str, object]) -> Any:
    """A model component with random weights, from its config.json's contents."""
    if component.startswith("text_encoder"):
        import transformers

        cls = getattr(transformers, str(config["architectures"][0]))  # type: ignore[index]
        return cls(transformers.CLIPTextConfig.from_dict(config))
    import diffusers

    return getattr(diffusers, str(config["_class_name"])).from_config(config)


def stack_test_pipeline(device: str) -> tuple[Any, LoadRecord]:
    """The tiny SDXL pipeline, seeded, on `device` in the dtype a load would use there; nothing read or written
    but the package's own tokenizer and scheduler files."""
    import diffusers
    import torch
    import transformers

    started = time.perf_counter()
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    components: dict[str, Any] = {}
    for name, config in TINY_CONFIGS.items():
        # torch's own `to`: diffusers' warns about modules to keep in float32, which these tiny models lack.
        components[name] = torch.nn.Module.to(model_instance(name, config), device, dtype).train(False)
    for name in TOKENIZERS:
        options = json.loads((ASSETS / name / "tokenizer_config.json").read_text())
        special = {key: value["content"] if isinstance(value, dict) else value for key, value in options.items()
                   if key.endswith("_token")}
        components[name] = transformers.CLIPTokenizer(
            str(ASSETS / "clip_tokenizer" / "vocab.json"), str(ASSETS / "clip_tokenizer" / "merges.txt"),
            model_max_length=options["model_max_length"], **special)
    scheduler_config = json.loads((ASSETS / "scheduler_config.json").read_text())
    components["scheduler"] = getattr(diffusers, scheduler_config["_class_name"]).from_config(scheduler_config)
    pipe = diffusers.StableDiffusionXLPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    dtype_name = str(dtype).removeprefix("torch.")
    record = LoadRecord(model_path="(none: stack test, random weights built in memory)", device=device,
                        dtype=dtype_name, variant=STACK_TEST_VARIANT,
                        variants=dict.fromkeys(TINY_CONFIGS, STACK_TEST_VARIANT),
                        seconds=round(time.perf_counter() - started, 3), bytes_read=0,
                        reasons=["STACK_TEST=1 and no volume: a tiny random-weight SDXL, not the model"])
    return pipe, record
