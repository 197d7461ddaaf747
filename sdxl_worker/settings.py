"""Every operator setting the worker reads, parsed from the environment and cross-checked once, at start.

This is the one module that reads the worker's settings from the environment, and it does so before the
volume is touched: a typo in any variable is one sentence at start, naming the variable, the value and
what is allowed, instead of a failure after every weight has been read. The worker then answers every
job with that sentence. Variables are the fields' names in capitals (the speed options' too); an unset
or empty variable takes the default. README's environment table is generated from these fields.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from sdxl_worker.contract.job_schema import DEFAULT_MAX_PIXELS, MAX_SIDE, MIN_PIXELS, MIN_SIDE
from sdxl_worker.controlnets.files import ControlNetSettings
from sdxl_worker.delivery.bucket import BucketSettings
from sdxl_worker.embeddings.files import EmbeddingSettings
from sdxl_worker.ip_adapters.files import IpAdapterSettings
from sdxl_worker.loras.files import LoraSettings
from sdxl_worker.sources import DEFAULT_MODEL_CACHE
from sdxl_worker.speed.options import SpeedOptions
from sdxl_worker.watch.settings import WatchSettings

DEFAULT_MODEL_PATH = "/runpod-volume/photonicfusion-sdxl"
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
DEFAULT_MODEL_NAME = "default"  # the one model of an endpoint without MODELS
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")
# Groups of settings whose variables are their fields' names, not the group's.
NESTED = ("speed", "bucket", "loras", "embeddings", "controlnets", "ip_adapter", "watch")


class SettingsError(ValueError):
    """A setting the worker cannot run with; str() is the one sentence to log and to answer jobs with."""


class Settings(BaseModel):
    """The worker's settings; `Settings.from_env()` reads them, `Settings(...)` builds them in code."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_path: str = Field(DEFAULT_MODEL_PATH, min_length=1, description=(
        "The model folder (on the network volume, or baked into the image), or a Hugging Face repo id "
        "`ORG/NAME[@REVISION]` read from a model cache (RunPod's cached models, then HF_HOME's); never downloaded."))
    models: str | None = Field(None, examples=["photonic=/runpod-volume/photonicfusion-sdxl,base=ORG/NAME"],
                               description=(
        "Several models behind one endpoint: `NAME=SOURCE` pairs, comma-separated, each source a folder or a Hub id "
        "as MODEL_PATH takes; a job's `model` names one, the first by default. Unset: MODEL_PATH alone."))
    model_host_cache_gb: float = Field(32.0, ge=0, le=4096, allow_inf_nan=False, description=(
        "With MODELS: the models not serving the current job stay loaded in host memory up to this many GB (a job "
        "switching to one then costs a copy, not a load); the least recently used are dropped first and read "
        "again when asked for."))
    model_cache: str = Field(DEFAULT_MODEL_CACHE, min_length=1, description=(
        "Where RunPod puts the endpoint's cached model (its Model field): a Hugging Face hub cache, looked in first "
        "for a repo id in MODEL_PATH."))
    device: str = Field("auto", pattern=DEVICE_PATTERN, examples=["auto", "cpu", "cuda", "cuda:N"], description=(
        "`auto`: `cuda` when PyTorch sees a GPU, else `cpu`."))
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=MIN_PIXELS, description=(
        "Cap on each image's width x height (1536x1536)."))
    load_streams: int | None = Field(None, ge=0, le=64, description=(
        "N > 0: the weights read once by N parallel streams, each its own open file (the same tensors); 0: the "
        "libraries' memory-mapped loader with prefetch readers (reads a FUSE volume's bytes twice); `auto`: 16 on a "
        "network filesystem (FUSE, as RunPod's network volumes, NFS, SMB, Ceph...) or on the CPU, else 0."))
    max_input_image_mb: int = Field(10, ge=1, le=100, description=(
        "Cap on a job's input image and mask, each, in MB as sent (base64 counts as its decoded bytes)."))
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description=(
        "One line per job at INFO: id, size, steps, timings, a 40-character prompt prefix."))
    result_max_mb: int = Field(9, ge=1, le=1000, description=(
        "Largest reply returned, in MB: RunPod drops results over 10 MB on /run and 20 MB on /runsync, so the "
        "default fits both (19 for an endpoint called only with /runsync). Over it, images go to the bucket when "
        "one is set, else the job fails saying what to change."))
    stack_test: bool = Field(False, description=(
        "With no volume at all (under /runpod-volume: it is no mount point and holds nothing; elsewhere: nothing "
        "at MODEL_PATH nor the folder above it; never for a relative MODEL_PATH): serve a tiny random-weight SDXL "
        "built in memory, so RunPod's Hub tests check the image's stack; its images are noise and every reply's "
        "`model.variant` is `stack-test`. Ignored when a volume is there."))
    speed: SpeedOptions = Field(default_factory=SpeedOptions)
    bucket: BucketSettings = Field(default_factory=BucketSettings)
    loras: LoraSettings = Field(default_factory=LoraSettings)
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings)
    controlnets: ControlNetSettings = Field(default_factory=ControlNetSettings)
    ip_adapter: IpAdapterSettings = Field(default_factory=IpAdapterSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)

    @model_validator(mode="after")
    def _graph_shapes_are_job_sizes(self) -> Settings:
        """A shape captured at the start must be one a job can ask for: otherwise its graph is never replayed."""
        for width, height, _ in self.speed.graph_shapes:
            if min(width, height) < MIN_SIDE or max(width, height) > MAX_SIDE or width % 8 or height % 8:
                raise ValueError(f"CUDA_GRAPH_SHAPES lists {width}x{height}, which no job can ask for: sides are "
                                 f"multiples of 8 from {MIN_SIDE} to {MAX_SIDE}")
            if width * height > self.max_pixels:
                raise ValueError(f"CUDA_GRAPH_SHAPES lists {width}x{height}, over MAX_PIXELS={self.max_pixels}")
        return self

    @model_validator(mode="after")
    def _models_are_name_source_pairs(self) -> Settings:
        if self.models is not None:
            model_sources(self.models)
        return self

    @property
    def model_sources(self) -> dict[str, str]:
        """name -> source, in order: MODELS' models, or MODEL_PATH alone under DEFAULT_MODEL_NAME."""
        return model_sources(self.models) if self.models is not None else {DEFAULT_MODEL_NAME: self.model_path}

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings an operator set in the environment (or in `env`), defaults for the rest."""
        env = os.environ if env is None else env
        return _validate(cls, _values(cls, env))


def model_sources(models: str) -> dict[str, str]:
    """MODELS parsed: `NAME=SOURCE,NAME=SOURCE` to {name: source}; a ValueError names what is wrong."""
    sources: dict[str, str] = {}
    for pair in models.split(","):
        name, equals, source = (part.strip() for part in pair.partition("="))
        if not equals or not source:
            raise ValueError(f"MODELS: {pair.strip()!r} is not NAME=SOURCE (a folder or a Hub id ORG/NAME)")
        if not re.fullmatch(MODEL_NAME_PATTERN, name):
            raise ValueError(f"MODELS: the name {name!r} is not one a job can send: letters, digits, '.', '_' and "
                             "'-', 1-64 of them")
        if name in sources:
            raise ValueError(f"MODELS names {name!r} twice")
        sources[name] = source
    return sources


def setting_from_env(name: str, env: Mapping[str, str] | None = None) -> Any:
    """One setting alone (the volume check's MODEL_PATH, MODEL_CACHE, LORA_DIR...), whatever the others hold."""
    fields = dict(environment_fields())
    field = fields[name.upper()]
    value = _read(name, field, os.environ if env is None else env)
    return field.get_default(call_default_factory=True) if value is _UNSET else value


def environment_fields(model: type[BaseModel] = Settings) -> list[tuple[str, FieldInfo]]:
    """(variable, field) for every setting, in the order README's environment table lists them."""
    rows: list[tuple[str, FieldInfo]] = []
    for name, field in model.model_fields.items():
        rows += environment_fields(field.annotation) if _is_model(field.annotation) else [(name.upper(), field)]
    return rows


def _values(model: type[BaseModel], env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if _is_model(field.annotation):
            values[name] = _values(field.annotation, env)
            continue
        value = _read(name, field, env)
        if value is not _UNSET:
            values[name] = value
    return values


_UNSET = object()


def _read(name: str, field: FieldInfo, env: Mapping[str, str]) -> Any:
    """The field's variable parsed, or _UNSET when it is unset or empty (the default applies)."""
    raw = env.get(name.upper(), "").strip()
    return _parse(name.upper(), raw, field.annotation) if raw else _UNSET


def _validate(model: type[BaseModel], values: dict[str, Any]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(_sentence(exc)) from None


def _parse(variable: str, raw: str, annotation: Any) -> Any:
    """The variable's text as the field's type, or SettingsError naming the variable, the value and the rule."""
    kind = field_types(annotation)[0]
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        by_lower = {str(c).lower(): c for c in choices}
        if raw.lower() in by_lower:
            return by_lower[raw.lower()]
        raise SettingsError(f"{variable} must be one of {', '.join(map(str, choices))}, not {_quoted(raw)}")
    if kind is bool:
        if raw.lower() in TRUE_WORDS:
            return True
        if raw.lower() in FALSE_WORDS:
            return False
        if _is_optional(annotation) and raw.lower() == "auto":
            return None
        also = ", 0 or auto" if _is_optional(annotation) else " or 0"
        raise SettingsError(f"{variable} must be 1{also}, not {_quoted(raw)}")
    if kind is int:
        if _is_optional(annotation) and raw.lower() == "auto":
            return None
        if not re.fullmatch(r"\d{1,18}", raw):  # 18 digits: more pixels than any GPU holds, and within int()'s limit
            also = " or auto" if _is_optional(annotation) else ""
            raise SettingsError(f"{variable} must be a whole number of at most 18 digits{also}, not {_quoted(raw)}")
        return int(raw)
    return raw


def _quoted(raw: str, limit: int = 40) -> str:
    """A value in a sentence: quoted, and cut so that a hostile one cannot flood the log or the replies."""
    return repr(raw if len(raw) <= limit else raw[: limit - 3] + "...")


def _sentence(exc: ValidationError) -> str:
    """One line for the first error: the variable, the value, what is allowed."""
    error = exc.errors(include_url=False)[0]
    message = error["msg"].removeprefix("Value error, ")
    location = [str(part) for part in error["loc"] if part not in NESTED]
    if not location:  # a cross-check between settings: its message names the variables
        return message
    variable = location[-1].upper()
    if error["type"] == "string_pattern_mismatch" and variable == "DEVICE":
        message = "must be auto, cpu, cuda or cuda:N"
    return f"{variable}={_quoted(str(error.get('input')))} is refused: {message[0].lower()}{message[1:]}"


def field_types(annotation: Any) -> list[Any]:
    """The types a field's annotation allows, None left out: `bool | None` gives [bool]."""
    return [a for a in get_args(annotation) if a is not type(None)] if _is_optional(annotation) else [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_optional(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)

