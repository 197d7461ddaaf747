"""A job's IP-Adapter image prompt: the adapter loaded once, switched in for the job, switched out after.

diffusers' `load_ip_adapter` puts an adapter into the UNet for good: its attention processors on every
cross-attention, and an image projection the UNet then requires for every call. Here it loads once (with the CLIP
image encoder, from IP_ADAPTER_DIR, nothing downloaded) and is taken out again at once; what is kept are its
processors and projection, installed for a job that asks for it and removed after, so the next plain job is the
one before, bit for bit. An image-prompt job runs the eager, unfused UNet (speed/plain.py): the captured graphs
and compiled code hold the UNet without the adapter's processors.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdxl_worker.contract.job_schema import IpAdapterRequest
from sdxl_worker.ip_adapters.files import (
    ENCODER,
    IpAdapterFile,
    IpAdapterFileError,
    IpAdapterSettings,
    encoder_config,
    inspect,
)
from sdxl_worker.logs import libraries_quiet
from sdxl_worker.loras.files import signature_of
from sdxl_worker.sentences import bounded
from sdxl_worker.speed.plain import plain_unet
from sdxl_worker.weights import architecture
from sdxl_worker.weights.finite import non_finite_weights
from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, read_safetensors_header

KEPT = 4  # adapters' processors kept between jobs (a published SDXL adapter is 0.7-1.0 GB)


@dataclass
class LoadedIpAdapter:
    file: IpAdapterFile
    processors: dict[str, Any]  # the cross-attention processors, by the UNet's processor names
    projection: Any


class IpAdapters:
    """The IP-Adapters a worker has loaded and their image encoder, applied per job (`applied`)."""

    def __init__(self, settings: IpAdapterSettings) -> None:
        self.folder = Path(settings.ip_adapter_dir)
        self.loaded: OrderedDict[str, LoadedIpAdapter] = OrderedDict()
        self.encoder: tuple[Any, Any] | None = None  # (image encoder, feature extractor), loaded with the first

    @contextmanager
    def applied(self, base: Any, pipe: Any, request: IpAdapterRequest | None, image: Any) -> Iterator[dict[str, Any]]:
        """Within: `pipe` (built on `base`'s components) draws with the image prompt; yields the call's arguments."""
        if request is None:
            yield {}
            return
        adapter = self._load(base, request.name)
        encoder, extractor = self.encoder  # type: ignore[misc]
        with plain_unet(pipe) as unet, _attention_restored(unet) as before:
            unet.set_attn_processor({name: adapter.processors.get(name, processor) for name, processor in
                                     before.items()})
            unet.encoder_hid_proj = adapter.projection
            unet.config.encoder_hid_dim_type = "ip_image_proj"
            for processor in adapter.processors.values():
                processor.scale = [request.scale]
            pipe.register_modules(image_encoder=encoder, feature_extractor=extractor)
            try:
                yield {"ip_adapter_image": image}
            finally:
                pipe.register_modules(image_encoder=None, feature_extractor=None)

    def _load(self, base: Any, name: str) -> LoadedIpAdapter:
        cached = self.loaded.get(name)
        if cached is not None and cached.file.signature == signature_of(cached.file.path):
            self.loaded.move_to_end(name)
            return cached
        file = inspect(self.folder, name, dict(base.unet.config))
        fresh_encoder = self.encoder is None
        if fresh_encoder:
            _check_encoder(self.folder)
        with plain_unet(base) as unet, _attention_restored(unet):
            if self.encoder is not None:
                base.register_modules(image_encoder=self.encoder[0], feature_extractor=self.encoder[1])
            try:
                with libraries_quiet():
                    base.load_ip_adapter(str(self.folder), subfolder="", weight_name=file.path.name,
                                         image_encoder_folder=ENCODER, local_files_only=True)
                loaded = LoadedIpAdapter(file, {key: processor for key, processor in unet.attn_processors.items()
                                                if not key.endswith("attn1.processor")}, unet.encoder_hid_proj)
                # The pipeline loads it in its first module's dtype (the VAE's bfloat16 on CUDA): the UNet's instead.
                weight = next(unet.parameters())
                self.encoder = (base.image_encoder.to(dtype=weight.dtype).requires_grad_(False),
                                base.feature_extractor)
            # What diffusers, transformers and torch raise for weights that do not fit the model or cannot be read.
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                raise IpAdapterFileError(f"IP-Adapter {name!r} does not fit this model: {bounded(exc, 200)}.") from exc
            finally:  # the pipeline as it was, whatever happened (the UNet too, on the way out of the with)
                base.register_modules(image_encoder=None, feature_extractor=None)
        if fresh_encoder and (problem := non_finite_weights(self.encoder[0].named_parameters())) is not None:
            self.encoder = None
            raise IpAdapterFileError(f"IP-Adapter {name!r}: the image encoder ({ENCODER}/model.safetensors) "
                                     f"{problem}.")
        adapter = [(f"{key}.{part}", tensor) for key, processor in loaded.processors.items()
                   for part, tensor in processor.named_parameters()]
        if (problem := non_finite_weights([*adapter, *loaded.projection.named_parameters()])) is not None:
            raise IpAdapterFileError(f"IP-Adapter {name!r}: {file.path.name} {problem}: it would draw a flat image.")
        self.loaded[name] = loaded
        while len(self.loaded) > KEPT:
            self.loaded.popitem(last=False)
        return loaded


def _check_encoder(folder: Path) -> None:
    """The image encoder's tensors against the model its config describes, as the model's own components are
    checked, before it is loaded: the libraries would fill a missing tensor with random values and serve."""
    config = encoder_config(folder)
    weights = folder / ENCODER / "model.safetensors"
    try:
        info = read_safetensors_header(weights)
    except SafetensorsHeaderError as exc:
        reason = str(exc).removeprefix(f"{weights}: ")
        raise IpAdapterFileError(f"The IP-Adapter image encoder ({ENCODER}/model.safetensors) is not a readable "
                                 f"safetensors file: {reason}.") from exc
    expected = architecture.expected_from_meta("transformers", "CLIPVisionModelWithProjection", config)
    problem = architecture.compare(expected, {key: entry.shape for key, entry in info.entries.items()},
                                   single_file=False)
    if problem is not None:
        raise IpAdapterFileError(f"The IP-Adapter image encoder ({ENCODER}/model.safetensors) is not the model its "
                                 f"config.json describes: {problem}.")


@contextmanager
def _attention_restored(unet: Any) -> Iterator[dict[str, Any]]:
    """Within: whatever an adapter does to `unet`'s attention processors and image projection; yields the
    processors as they were, which go back on the way out with the projection and its config entry."""
    before = dict(unet.attn_processors)
    projection, kind = unet.encoder_hid_proj, unet.config.encoder_hid_dim_type
    try:
        yield before
    finally:
        unet.set_attn_processor(before)
        unet.encoder_hid_proj = projection
        unet.config.encoder_hid_dim_type = kind
