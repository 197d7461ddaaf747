"""Which components two models may share: the same contents as read, wherever they were read from and whatever
the last job asked the tokenizers for; another model's weights, or weights the digest cannot read, never."""

from __future__ import annotations

import shutil
from pathlib import Path

from dev.synthetic_volume import build_volume
from sdxl_worker.loading.loader import load_pipeline
from sdxl_worker.serving.shared_components import GROUPS, digests


def test_the_same_files_elsewhere_share_and_another_models_do_not(tiny_volume_source: Path, tmp_path: Path) -> None:
    import torch

    shutil.copytree(tiny_volume_source, tmp_path / "copy")
    other = build_volume(tmp_path / "other", "tiny", ["standard"], seed=7)
    (first, _), (copy, _), (different, _) = (load_pipeline(str(p), "cpu") for p in
                                             (tiny_volume_source, tmp_path / "copy", other))
    copy.tokenizer("a prompt", padding="max_length", truncation=True)  # a job's call leaves its settings behind
    assert set(digests(first)) == set(GROUPS) and digests(first) == digests(copy)
    assert all(digests(different)[group] != digest for group, digest in digests(first).items())
    with torch.no_grad():
        copy.vae.decoder.conv_out.bias[0] += 1  # one value of one tensor
    assert digests(copy)["VAE"] != digests(first)["VAE"]
    assert digests(copy)["text encoders"] == digests(first)["text encoders"]


def test_a_component_it_cannot_read_is_never_shared(tiny_volume_source: Path) -> None:
    """A tensor subclass (as QUANTIZE=fp8's weights are) has no plain bytes to compare: no digest for its group."""
    import torch

    class Scales(torch.Tensor):
        pass

    pipe, _ = load_pipeline(str(tiny_volume_source), "cpu")
    pipe.vae.register_buffer("scales", torch.ones(2).as_subclass(Scales))
    assert list(digests(pipe)) == ["text encoders"]
