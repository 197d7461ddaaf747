"""The fp16 set: exact casts, what a volume needs, sharding as diffusers names it, verification that catches a bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sdxl_worker.prepare.fp16_set import (
    Float16RangeError,
    plan_fp16,
    to_float16,
    verify_fp16_set,
    write_component,
)
from sdxl_worker.volume.check import check_volume
from sdxl_worker.weights.layout import index_file_names
from tests.helpers import MODELS, drop_variant


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_floating_tensors_are_cast_exactly_as_torch_casts_them(dtype: torch.dtype) -> None:
    torch.manual_seed(1)
    source = (torch.randn(1000) * 1000).to(dtype)
    source[:3] = torch.tensor([float("inf"), float("-inf"), float("nan")], dtype=dtype)
    cast = to_float16("w", source)
    assert cast.dtype == torch.float16
    assert torch.equal(cast.view(torch.int16), source.to(torch.float16).view(torch.int16))


def test_other_dtypes_are_kept() -> None:
    ids = torch.arange(5)
    assert to_float16("ids", ids) is ids


def test_a_value_beyond_float16_is_refused_with_its_tensor_and_count() -> None:
    source = torch.zeros(10)
    source[[2, 7]] = 1e6
    with pytest.raises(Float16RangeError, match=r"tensor unet\.w has 2 value\(s\) beyond float16's range"):
        to_float16("unet.w", source)


def test_plan_sizes_each_file_exactly_and_skips_complete_sets(fp32_volume: Path) -> None:
    plan = plan_fp16(check_volume(fp32_volume), free_bytes=10**12)
    assert [w.name for w in plan.work] == list(MODELS) and not plan.complete and not plan.blocked
    for work in plan.work:
        write_component(work)
    assert all(o.path.stat().st_size == o.bytes for w in plan.work for o in w.outputs)
    again = plan_fp16(check_volume(fp32_volume), free_bytes=10**12)
    assert not again.work and again.complete == list(MODELS) and again.bytes_needed == 0


def test_a_component_with_neither_set_is_blocked(volume: Path) -> None:
    drop_variant(volume, "standard", ("vae",))
    drop_variant(volume, "fp16", ("vae",))
    plan = plan_fp16(check_volume(volume), free_bytes=10**12)
    assert "no complete standard set" in plan.blocked["vae"] and not plan.work


def test_sharded_standard_set_gives_the_same_shards_named_as_diffusers_names_a_variant(sharded_volume: Path) -> None:
    plan = plan_fp16(check_volume(sharded_volume), free_bytes=10**12)
    unet = next(w for w in plan.work if w.name == "unet")
    assert len(unet.outputs) > 1
    write_component(unet)
    index = json.loads((sharded_volume / "unet" / index_file_names("diffusers", "fp16")[0]).read_text())
    standard = json.loads((sharded_volume / "unet" / index_file_names("diffusers", "standard")[0]).read_text())
    number = len(unet.outputs)
    renamed = {t: f.replace("diffusion_pytorch_model-", "diffusion_pytorch_model.fp16-") for t, f in
               standard["weight_map"].items()}
    assert index["weight_map"] == renamed and f"-of-{number:05d}" in next(iter(renamed.values()))
    assert index["metadata"]["total_size"] == standard["metadata"]["total_size"] // 2
    assert check_volume(sharded_volume).components["unet"].weight_sets["fp16"].complete


def test_verification_finds_one_changed_value(fp32_volume: Path) -> None:
    plan = plan_fp16(check_volume(fp32_volume), free_bytes=10**12)
    vae = next(w for w in plan.work if w.name == "vae")
    write_component(vae)
    report = check_volume(fp32_volume)
    assert verify_fp16_set(fp32_volume / "vae", report.components["vae"]) is None
    path = vae.outputs[0].path
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name].view(-1)[0] += 1
    save_file(tensors, path, metadata={"format": "pt"})
    assert f"tensor {name} in {path.name} differs" in verify_fp16_set(fp32_volume / "vae", report.components["vae"])


def test_a_broken_fp16_index_naming_standard_shards_never_deletes_them(sharded_volume: Path) -> None:
    folder = sharded_volume / "unet"
    standard = json.loads((folder / index_file_names("diffusers", "standard")[0]).read_text())
    broken = {**standard, "weight_map": {**standard["weight_map"], "extra.weight": "missing-shard.safetensors"}}
    (folder / index_file_names("diffusers", "fp16")[0]).write_text(json.dumps(broken))
    shards = {name: (folder / name).read_bytes() for name in set(standard["weight_map"].values())}
    unet = next(w for w in plan_fp16(check_volume(sharded_volume), free_bytes=10**12).work if w.name == "unet")
    assert "broken" in unet.reason and [p.name for p in unet.remove] == [index_file_names("diffusers", "fp16")[0]]
    write_component(unet)
    assert {name: (folder / name).read_bytes() for name in shards} == shards
    assert check_volume(sharded_volume).components["unet"].weight_sets["fp16"].complete
