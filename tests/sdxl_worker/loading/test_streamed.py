"""The read-once loader: the same tensors as the libraries' loader, every byte read once, faults one sentence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dev.netfs import Network, mounted, read_stats, unavailable
from sdxl_worker.loading.loader import ComponentLoadError, load_pipeline, weight_files
from sdxl_worker.loading.plan import choose_streams
from sdxl_worker.loading.streamed import DEFAULT_STREAMS, StreamedFiles, read_state_dict
from sdxl_worker.volume.check import check_volume
from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, read_safetensors_header
from tests.helpers import MODELS, assert_images_match, every_tensor


@pytest.mark.parametrize("fixture", ["volume", "sharded_volume"])
def test_the_same_tensors_as_the_libraries_loader(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    library, _ = load_pipeline(path, "cpu", prefetch=False)
    streamed, record = load_pipeline(path, "cpu", streams=3)
    ours, theirs = every_tensor(streamed), every_tensor(library)
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert (ours[name].dtype, ours[name].device) == (tensor.dtype, tensor.device), name
        assert torch.equal(ours[name], tensor), name
    assert all(not getattr(streamed, c).training for c in MODELS) and record.variant == "standard"
    assert not any(t.requires_grad for t in ours.values())


def test_floating_tensors_are_cast_as_the_plan_says(volume: Path) -> None:
    report = check_volume(volume)
    infos = [read_safetensors_header(p) for p in weight_files(volume, report, {"vae": "standard"})]
    state = read_state_dict(infos, torch.float16, "cpu", streams=2)
    assert {t.dtype for t in state.values()} == {torch.float16}
    assert len(state) == sum(len(info.entries) for info in infos)


def test_each_byte_is_read_once_in_requests_of_the_chunk_size(volume: Path) -> None:
    path = volume / "unet" / "diffusion_pytorch_model.safetensors"
    info = read_safetensors_header(path)
    with StreamedFiles([info], streams=4, chunk_bytes=64 * 1024) as files:
        names = [name for name, _ in files.tensors()]
    assert files.bytes_read == info.file_bytes - info.data_start
    assert sorted(names) == sorted(info.entries)


def test_a_file_changed_since_the_check_is_one_sentence(volume: Path) -> None:
    path = volume / "unet" / "diffusion_pytorch_model.safetensors"
    info = read_safetensors_header(path)  # as the volume check saw it
    os.truncate(path, info.file_bytes - 1000)
    with pytest.raises(SafetensorsHeaderError, match=rf"^{path}: {info.file_bytes - 1000} bytes, not the "
                       rf"{info.file_bytes} its header was read with \(changed since the volume check\)$"):
        StreamedFiles([info], streams=2).__enter__()


@pytest.mark.slow
@pytest.mark.skipif(unavailable() is not None, reason=f"no FUSE here: {unavailable()}")
def test_a_file_cut_short_during_the_load_is_one_sentence(volume: Path, tmp_path: Path) -> None:
    # Through a slow volume (10 ms a request), so that the cut lands while the streams are reading.
    with mounted(volume.parent, tmp_path / "mnt", Network(latency_s=0.01, direct_io=True)) as mnt:
        path = mnt / volume.name / "unet" / "diffusion_pytorch_model.safetensors"
        info = read_safetensors_header(path)
        with pytest.raises(SafetensorsHeaderError, match=r"shorter than its header says \(changed while being "
                           r"read\)$"), StreamedFiles([info], streams=2, chunk_bytes=64 * 1024) as files:
            os.truncate(volume / "unet" / "diffusion_pytorch_model.safetensors", info.data_start + 4096)
            list(files.tensors())


@pytest.mark.slow
@pytest.mark.skipif(unavailable() is not None, reason=f"no FUSE here: {unavailable()}")
def test_each_stream_reads_through_its_own_open_file(volume: Path, tmp_path: Path) -> None:
    """The simulator, like a network volume, moves each open file at one stream's rate: streams sharing one
    descriptor would read no faster than one."""
    # 2 ms a request: every stream has started before the first chunks are in, so each has chunks to read.
    with mounted(volume.parent, tmp_path / "mnt", Network(latency_s=0.002, direct_io=True)) as mnt:
        path = mnt / volume.name / "unet" / "diffusion_pytorch_model.safetensors"
        info = read_safetensors_header(path)
        before = read_stats(mnt)["files"][f"{volume.name}/unet/diffusion_pytorch_model.safetensors"]
        with StreamedFiles([info], streams=4, chunk_bytes=64 * 1024) as files:
            list(files.tensors())
        stats = read_stats(mnt)
    name = f"{volume.name}/unet/diffusion_pytorch_model.safetensors"
    assert stats["streams"][name] == 1 + 4  # the header's reader, then the four streams
    assert stats["files"][name] - before == info.file_bytes - info.data_start


def test_weights_that_do_not_fit_the_config_are_refused_naming_the_component(volume: Path) -> None:
    from dev.synthetic_volume import component_config

    config = {**component_config("tiny", "vae"), "latent_channels": 8}
    (volume / "vae" / "config.json").write_text(__import__("json").dumps(config))
    from sdxl_worker.loading.loader import load_planned
    from sdxl_worker.loading.plan import plan_load

    report = check_volume(volume)  # without tensors: the check would refuse the shapes itself
    with pytest.raises(ComponentLoadError, match=r"^vae: RuntimeError: Error\(s\) in loading state_dict"):
        load_planned(plan_load(report, "cpu"), streams=2)


@pytest.mark.slow
@pytest.mark.skipif(unavailable() is not None, reason=f"no FUSE here: {unavailable()}")
def test_through_a_network_volume_each_byte_crosses_once(volume: Path, tmp_path: Path) -> None:
    """The libraries' loader with its prefetch readers reads the files twice there (FUSE drops the page cache
    at each open); the streamed loader reads exactly the plan's bytes."""
    report = check_volume(volume)
    weights = {str(p.relative_to(volume.parent)): p.stat().st_size
               for p in weight_files(volume, report, dict.fromkeys(MODELS, "standard"))}
    # Direct I/O: no readahead, every byte the loader asks for is counted, and only those.
    with mounted(volume.parent, tmp_path / "mnt", Network(latency_s=0.0005, direct_io=True)) as mnt:
        # What LOAD_STREAMS=auto chooses there for a GPU worker.
        assert choose_streams(mnt / volume.name, None, "cuda") == (
            DEFAULT_STREAMS, f"LOAD_STREAMS=auto: fuse at {tmp_path / 'mnt'} is a network filesystem")
        load_pipeline(mnt / volume.name, "cpu", streams=DEFAULT_STREAMS)
        streamed = read_stats(mnt)["files"]
    for name, size in weights.items():  # the header once (the volume check's), the data once
        assert streamed[name] == size, (name, streamed[name] - size)
    with mounted(volume.parent, tmp_path / "mnt2", Network(latency_s=0.0005)) as mnt:
        load_pipeline(mnt / volume.name, "cpu")  # streams=0: the libraries' loader and the prefetch readers
        library = read_stats(mnt)["files"]
    assert sum(library[name] for name in weights) > 1.5 * sum(weights.values())


@pytest.mark.slow
@pytest.mark.skipif(unavailable() is not None, reason=f"no FUSE here: {unavailable()}")
def test_every_layout_loads_through_a_network_volume_by_default(layout_volume_source: Path, tmp_path: Path) -> None:
    """Published names and older ones through the simulated network volume with default settings: every tensor
    the libraries' loader gives, each weight byte read once."""
    volume = layout_volume_source
    library, _ = load_pipeline(volume, "cpu", prefetch=False)
    weights = {str(p.relative_to(volume.parent)): p.stat().st_size
               for p in weight_files(volume, check_volume(volume), dict.fromkeys(MODELS, "standard"))}
    with mounted(volume.parent, tmp_path / "mnt", Network(latency_s=0.0005, direct_io=True)) as mnt:
        assert choose_streams(mnt / volume.name, None, "cuda")[0] == DEFAULT_STREAMS
        streamed, _ = load_pipeline(mnt / volume.name, "cpu", streams=None)
        read = read_stats(mnt)["files"]
    assert {name: read[name] for name in weights} == weights
    ours, theirs = every_tensor(streamed), every_tensor(library)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], t) for n, t in theirs.items())


def test_the_worker_with_load_streams_draws_what_it_draws_without(tiny_volume_source: Path) -> None:
    """The read-once loader (LOAD_STREAMS=4) against the libraries' (0), not against itself: `auto` on the CPU is
    the read-once loader too."""
    from sdxl_worker.serving.worker import Worker
    from tests.helpers import cpu_settings

    streamed, library = (Worker.start(cpu_settings(tiny_volume_source, load_streams=n), warmup=False) for n in (4, 0))
    assert (streamed.record.streams, library.record.streams) == (4, 0)
    job = {"id": "t", "input": {"prompt": "a lighthouse", "width": 256, "height": 256, "num_inference_steps": 2,
                                "seed": 3}}
    (streamed_image,), (library_image,) = streamed.handle(job)["images"], library.handle(job)["images"]
    assert_images_match(streamed_image, library_image)
