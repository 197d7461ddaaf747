"""Say whether a folder holds a servable SDXL pipeline, and if not, exactly why: directory listings, JSON configs and
safetensors headers only (see volume_check.py, the command over it). Every read is guarded, so no file can crash it;
it refuses what the loader would refuse, down to each tensor's name and shape (sdxl_worker/weights/architecture.py).
Without `tensors` it never imports torch."""

from __future__ import annotations

import contextlib
import difflib
import importlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from sdxl_worker.controlnets.files import scan as scan_controlnets
from sdxl_worker.embeddings.files import scan as scan_embeddings
from sdxl_worker.loras.files import scan
from sdxl_worker.sentences import bounded
from sdxl_worker.sources import DEFAULT_MODEL_CACHE, ModelSource, SourceError, cached_repo_ids, resolve_source
from sdxl_worker.volume.report import (
    ComponentKind,
    ComponentReport,
    ControlNetReport,
    EmbeddingReport,
    LoraReport,
    PlanOption,
    VolumeReport,
    WeightSet,
    format_bytes,
)
from sdxl_worker.volume.sdxl import MODELS, SDXL_CLASSES, SDXL_REQUIRED, SUPPORTED_PIPELINES
from sdxl_worker.weights import architecture
from sdxl_worker.weights.files import present, read_text_bounded, special_kind
from sdxl_worker.weights.layout import (
    VARIANTS,
    WEIGHT_PREFIX,
    Variant,
    index_file_names,
    single_file_name,
)
from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, read_safetensors_header


def check_volume(path: str | os.PathLike[str], *, tensors: bool = False,
                 model_cache: str = DEFAULT_MODEL_CACHE) -> VolumeReport:
    """Check the diffusers layout at `path` (see module docstring) without reading any tensor.

    `path` is a folder, or a Hub id `ORG/NAME[@REVISION]` served from a model cache (`model_cache`, RunPod's, then
    HF_HOME's): the report's `model_path` is then the snapshot folder the loader reads. With `tensors`, a component
    whose config is not SDXL base 1.0's also gets its tensor names and shapes compared, from the model built on the
    meta device (imports torch; the worker's start does this).
    """
    started = time.perf_counter()
    if tensors:
        # The libraries that build a component on the meta device, imported first: their import is seconds of a
        # start, said apart from the check's own time (a fraction of a second). Missing, each component's tensor
        # comparison says so.
        with contextlib.suppress(ImportError):
            import torch  # noqa: F401

            for library, class_name in MODELS.values():  # the libraries import each class lazily, at first use
                getattr(importlib.import_module(library), class_name)
    imported = time.perf_counter()
    try:
        source = resolve_source(str(path), model_cache)
    except SourceError as exc:
        report = VolumeReport(model_path=str(path), volume_root=model_cache, path_missing=True)
        report.add("fail", str(exc))
        report.seconds, report.import_s = time.perf_counter() - imported, imported - started
        return report
    model_path = source.folder
    volume_root = source.cache_dir or model_path.parent
    report = VolumeReport(model_path=str(model_path), volume_root=str(volume_root), source=source.to_dict())
    report.free_bytes = {"volume": _free_bytes(volume_root), "container root /": _free_bytes(Path("/"))}
    try:
        if _check_location(report, source, volume_root, Path(model_cache)):
            entries = _read_model_index(report, model_path)
            if entries is not None:
                _check_components(report, model_path, entries, tensors)
                _check_stray_root_files(report, model_path)
                report.plans = _plans(report)
    # A listing or stat that fails (an I/O error on a network volume, a permission): a finding, not a crash.
    except OSError as exc:
        report.add("fail", f"{_unreadable(exc, model_path)}", exc.filename or model_path)
    report.seconds, report.import_s = time.perf_counter() - imported, imported - started
    return report


def _check_location(report: VolumeReport, source: ModelSource, volume_root: Path, model_cache: Path) -> bool:
    model_path = source.folder
    if source.kind == "cache":
        report.add("ok", f"model: {source.describe()}")
        return True
    if not volume_root.is_dir():
        report.path_missing = True
        report.add(
            "fail",
            f"volume root {volume_root} does not exist: is the network volume attached to this endpoint "
            "(it mounts at /runpod-volume on serverless workers)?",
            volume_root,
        )
        return False
    report.add("ok", f"volume root {volume_root} is present")
    if model_path.exists() and not model_path.is_dir():
        report.path_missing = True
        report.add("fail", f"model folder {model_path} is a file, not a folder: MODEL_PATH names the folder that "
                   "holds model_index.json", model_path)
        return False
    if not model_path.is_dir():
        report.path_missing = True
        held = sorted(p.name for p in volume_root.iterdir())
        others = [name for name in held if name != model_path.name]
        hint = difflib.get_close_matches(model_path.name, others, n=1, cutoff=0.5)
        listing = ", ".join(bounded(name) for name in held[:20]) + (f", ... ({len(held)} entries)" if len(held) > 20
                                                                   else "")
        message = f"model folder {model_path} does not exist; the volume holds: {listing or 'nothing'}"
        if hint:
            message += f". Did you mean {volume_root / hint[0]} (set MODEL_PATH)?"
        cached = cached_repo_ids(model_cache)
        if cached:  # RunPod mounted its model cache, not a volume holding the folder
            message += (f". RunPod's model cache {model_cache} holds {', '.join(map(bounded, cached[:5]))}: set "
                        f"MODEL_PATH={cached[0]} to serve it")
        report.add("fail", message, model_path)
        return False
    report.add("ok", f"model folder {model_path} exists")
    return True


# Where a cached repo that needs converting is converted to: a network volume, seen from a pod.
CONVERTED = "/workspace/photonicfusion-sdxl"
NOT_IN_CACHE = (f"the worker never writes into a model cache; then attach the volume and set "
                f"MODEL_PATH=/runpod-volume/{Path(CONVERTED).name}")


def _single_file_advice(report: VolumeReport, model_path: Path) -> str:
    """For a cached repo that holds a single-file checkpoint instead: the command that makes a servable folder."""
    checkpoints = sorted(p.name for p in model_path.glob("*") if p.suffix in (".safetensors", ".ckpt"))
    if not report.cached or not checkpoints:
        return ""
    return (f"; the repo holds the single-file checkpoint {bounded(checkpoints[0])}: convert it into a folder "
            f"(`python prepare_volume.py from-single-file {model_path / checkpoints[0]} {CONVERTED}`): {NOT_IN_CACHE}")


def _read_model_index(report: VolumeReport, model_path: Path) -> dict[str, tuple[str, str]] | None:
    """model_index.json's components, each (library, class) checked against what the worker loads."""
    index_path = model_path / "model_index.json"
    if not present(index_path):
        report.add("fail", "model_index.json is missing: this is not a diffusers pipeline folder"
                   + _single_file_advice(report, model_path), index_path)
        return None
    index, problem = _parse_json(index_path)
    if problem is not None:
        report.add("fail", f"model_index.json {problem}", index_path)
        return None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        report.add("fail", "model_index.json has no _class_name naming the pipeline class", index_path)
        return None
    pipeline = index["_class_name"]
    if pipeline not in SUPPORTED_PIPELINES:
        served = SUPPORTED_PIPELINES[0]
        report.add("fail", f"model_index.json names {bounded(pipeline)}; this worker serves {served}", index_path)
        return None
    entries: dict[str, tuple[str, str]] = {}
    for name, entry in index.items():
        if name.startswith("_") or entry is None or entry in ([None], [None, None]):
            continue
        if not isinstance(entry, list):
            continue  # a pipeline setting, like force_zeros_for_empty_prompt
        problem = _entry_problem(name, entry)
        if problem:
            report.add("fail", f"model_index.json: {problem}", index_path)
            return None
        entries[name] = (entry[0], entry[1])
    missing = [c for c in SDXL_REQUIRED if c not in entries]
    if missing:
        report.add("fail", f"model_index.json names no {', '.join(missing)}: an SDXL pipeline needs them", index_path)
        return None
    report.pipeline_class = pipeline
    report.pipeline_config = {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}
    report.add("ok", f"model_index.json: {pipeline} with {len(entries)} components")
    return entries


def _entry_problem(name: str, entry: list) -> str | None:
    """Why model_index.json's entry for `name` is not one the worker loads, or None."""
    if len(entry) != 2 or not all(isinstance(part, str) for part in entry):
        return f"{bounded(name)} must be [library, class], got {bounded(json.dumps(entry))}"
    library, class_name = entry
    if name not in SDXL_CLASSES:
        pipeline = SUPPORTED_PIPELINES[0]
        return f"{bounded(name)} ({bounded(library)}.{bounded(class_name)}) is not a component {pipeline} takes"
    if library not in WEIGHT_PREFIX:
        return f"{name}: library {bounded(library)!r} is not one this worker loads (diffusers or transformers)"
    if class_name not in SDXL_CLASSES[name]:
        allowed = " or ".join(sorted(SDXL_CLASSES[name])) if len(SDXL_CLASSES[name]) < 4 else "a diffusers scheduler"
        return f"{name}: {bounded(class_name)} is not a class this worker loads as {name} (expected {allowed})"
    return None


def _component_kind(class_name: str) -> ComponentKind:
    if "Tokenizer" in class_name:
        return "tokenizer"
    if class_name.endswith("Scheduler"):
        return "scheduler"
    if class_name.endswith(("FeatureExtractor", "ImageProcessor", "Processor")):
        return "processor"
    return "model"


def recheck(report: VolumeReport, names: Iterable[str], *, tensors: bool = False) -> VolumeReport:
    """`report` with the named components checked again (the files a command wrote or removed) and the load plans
    made again; every other component's findings as they were. The model index and the rest are not read again."""
    names = set(names) & set(report.components)
    started = time.perf_counter()
    model_path = Path(report.model_path)
    fresh = VolumeReport(model_path=report.model_path, volume_root=report.volume_root)
    for name in names:
        old = report.components[name]
        _check_component(fresh, model_path, name, old.library, old.class_name, tensors)
    merged = replace(report, findings=[], components={
        name: fresh.components.get(name, component) for name, component in report.components.items()})
    for finding in report.findings:
        if finding.component not in names:
            merged.findings.append(finding)
        elif finding.component in fresh.components:  # the first of its old findings: all its new ones, in place
            merged.findings += [f for f in fresh.findings if f.component == finding.component]
            del fresh.components[finding.component]
    merged.findings += [f for f in fresh.findings if f.component in fresh.components]
    merged.free_bytes = {"volume": _free_bytes(Path(report.volume_root)), "container root /": _free_bytes(Path("/"))}
    merged.plans = _plans(merged)
    merged.seconds = time.perf_counter() - started
    return merged


def _check_components(report: VolumeReport, model_path: Path, entries: dict[str, tuple[str, str]],
                      tensors: bool) -> None:
    for name, (library, class_name) in entries.items():
        _check_component(report, model_path, name, library, class_name, tensors)
    _check_tokenizer_lengths(report)


def _missing_folder_advice(name: str) -> str:
    """What to do about a component folder model_index.json names and the model lacks."""
    where = f"copy the model's {name}/ folder (its config and files) from where the model came from; an upload " \
            "that stopped early leaves folders out"
    if name == "vae":  # SDXL fine-tunes nearly all keep SDXL's own VAE, published on its own
        return f"{where}. A fine-tune that shipped without one uses SDXL's: madebyollin/sdxl-vae-fp16-fix (fp16-safe)"
    return where


def _check_component(report: VolumeReport, model_path: Path, name: str, library: str, class_name: str,
                     tensors: bool) -> None:
    """Check one component's folder into `report`; its findings are marked as its own (see recheck)."""
    component = ComponentReport(name, library, class_name, _component_kind(class_name))
    report.components[name] = component
    folder = model_path / name
    first = len(report.findings)
    try:
        if not folder.is_dir():
            component.ok = False
            report.add("fail", f"{name}: folder {folder} is missing ({class_name}): {_missing_folder_advice(name)}",
                       folder)
        elif _special_files(report, component, folder):
            pass
        elif component.kind == "model":
            _check_model(report, component, folder, tensors)
        elif component.kind == "tokenizer":
            _check_tokenizer(report, component, folder)
        elif component.kind == "scheduler":
            _check_scheduler(report, component, folder)
        else:
            _check_processor(report, component, folder)
    # A file or folder of this component that cannot be listed or read: this component is broken.
    except OSError as exc:
        component.ok = False
        report.add("fail", f"{name}: {_unreadable(exc, folder)}", exc.filename or folder)
    for finding in report.findings[first:]:
        finding.component = name


def _special_files(report: VolumeReport, component: ComponentReport, folder: Path) -> bool:
    """A FIFO, device or socket among the component's files (links followed): the libraries would block on it or
    read it without end at the load, so the component is broken. True when there is one."""
    found = []
    for entry in os.scandir(folder):
        try:
            kind = special_kind(os.stat(entry.path).st_mode)
        except OSError:  # a broken link: the file checks that need it say so
            continue
        if kind is not None and kind != "a folder":
            found.append(f"{bounded(entry.name)} is {kind}")
    if found:
        component.ok = False
        report.add("fail", f"{component.name}: {', '.join(found[:3])}, not a file: the loader would block on it or "
                   "read it without end", folder)
    return bool(found)


def _parse_json(path: Path) -> tuple[object, str | None]:
    """The JSON value in `path`, or (None, why there is none): unreadable, not UTF-8, not JSON, nested too deep,
    or holding a number too long to convert."""
    try:
        text = read_text_bounded(path)
        if not text.strip():
            return None, "is empty"
        return json.loads(text), None
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    except RecursionError:
        return None, "is not usable JSON (nested too deeply)"
    # json.JSONDecodeError, UnicodeDecodeError and int()'s digit limit are all ValueErrors.
    except ValueError as exc:
        return None, f"is not valid JSON ({bounded(exc)})"


def _load_json_object(report: VolumeReport, component: ComponentReport, path: Path) -> dict | None:
    """Read a JSON object the component cannot load without; a failure marks the component broken."""
    name = component.name
    if not present(path):
        report.add("fail", f"{name}: {path.name} is missing", path)
    else:
        data, problem = _parse_json(path)
        if problem is not None:
            report.add("fail", f"{name}: {path.name} {problem}", path)
        elif isinstance(data, dict) and data:
            return data
        else:
            report.add("fail", f"{name}: {path.name} is not a non-empty JSON object", path)
    component.ok = False
    return None


def _check_model(report: VolumeReport, component: ComponentReport, folder: Path, tensors: bool) -> None:
    name = component.name
    config = _load_json_object(report, component, folder / "config.json")
    if config is not None:
        declared = config.get("_class_name") or (config.get("architectures") or [None])[0]
        if declared and declared != component.class_name:
            report.add("warn", f"{name}: config.json declares {bounded(declared)}, model_index.json "
                       f"{component.class_name}", folder / "config.json")
        else:
            report.add("ok", f"{name}: config.json valid ({component.class_name})")
    expected = _expected_tensors(report, component, config, tensors)
    used: set[str] = set()
    for variant in VARIANTS:
        weights = check_weight_set(component.library, folder, variant)
        if weights.complete and expected is not None:
            weights.problem = architecture.compare(expected, weights.shapes, single_file=not weights.sharded)
            weights.complete = weights.problem is None
        component.weight_sets[variant] = weights
        used.update(weights.files)
        label = "fp16 variant" if variant == "fp16" else "standard weights"
        if weights.complete:
            count = len(weights.files)
            size = format_bytes(weights.bytes)
            report.add("ok", f"{name}: {label} complete, {count} file{'s' * (count > 1)}, {size}")
        elif weights.present:
            report.add("fail", f"{name}: {label} broken: {weights.problem}", folder)
        else:
            report.add("warn", f"{name}: no {label} ({weights.problem})", folder)
    if not component.complete_variants():
        component_bins = sorted(p.name for p in folder.glob("*.bin"))
        if component_bins:
            convert = (f"copy the snapshot to a folder of its own and convert that (`cp -rL {report.model_path} "
                       f"{CONVERTED} && python prepare_volume.py convert-bin {CONVERTED}`): {NOT_IN_CACHE}"
                       if report.cached else f"convert them with `python prepare_volume.py convert-bin "
                       f"{report.model_path}`")
            report.add("fail", f"{name}: only .bin weights ({_names(component_bins)}); this worker loads "
                       f"safetensors only: {convert}", folder)
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in used and p.name != "config.json")
    if others:
        report.add("ok", f"{name}: ignoring {len(others)} other file(s), not read: {_names(others)}")


def _expected_tensors(report: VolumeReport, component: ComponentReport, config: dict | None,
                      tensors: bool) -> architecture.Expected | None:
    """The tensors the component's config describes: SDXL's from the manifest, others from the meta device when
    `tensors` (else None, with a warning that they went unchecked)."""
    if config is None:
        return None
    expected = architecture.expected_from_manifest(component.name, component.class_name, config)
    if expected is not None:
        return expected
    if not tensors:
        report.add("warn", f"{component.name}: config differs from SDXL base 1.0's: its tensor names and shapes are "
                   "compared by the worker at start (and by volume_check.py --tensors), not here")
        return None
    try:
        return architecture.expected_from_meta(component.library, component.class_name, config)
    except architecture.UnsupportedNaming as exc:
        component.ok = False
        report.add("fail", f"{component.name}: its tensors cannot be compared: {bounded(exc, 200)}")
    except ImportError as exc:  # an image without torch or the model's library cannot load anything either
        component.ok = False
        report.add("fail", f"{component.name}: its tensors cannot be compared: {bounded(exc)}")
    # The library refuses this config (an unknown option, a wrong type): the loader would refuse it too.
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        component.ok = False
        report.add("fail", f"{component.name}: config.json describes no model {component.class_name} can build "
                   f"({type(exc).__name__}: {bounded(exc)})", report.model_path)
    return None


def check_weight_set(library: str, folder: Path, variant: Variant) -> WeightSet:
    """One variant's files in a component folder, from their headers: present, complete, bytes, shapes."""
    weights = WeightSet(variant)
    single = folder / single_file_name(library, variant)
    index = next((folder / n for n in index_file_names(library, variant) if present(folder / n)), None)
    # diffusers prefers a shard index when both exist; transformers the single file.
    use_index = index is not None and (library == "diffusers" or not present(single))
    if use_index:
        weights.present = True
        weights.files.append(index.name)
        weights.bytes += index.stat().st_size
        weights.problem = _check_sharded(weights, index)
    elif present(single):
        weights.present = True
        weights.files.append(single.name)
        weights.problem = _add_safetensors(weights, single)
    else:
        weights.problem = f"no {single.name} nor {index_file_names(library, variant)[0]}"
        return weights
    weights.complete = weights.problem is None
    return weights


def _add_safetensors(weights: WeightSet, path: Path, expected: set[str] | None = None) -> str | None:
    """Count one safetensors file into the set; return why it is unusable, or None.

    `expected`: tensor names a shard index places in this file, checked against the same header read.
    """
    try:
        info = read_safetensors_header(path)
    except SafetensorsHeaderError as exc:
        return str(exc)
    weights.bytes += info.file_bytes
    weights.parameters += info.parameter_count
    weights.headers.append(info)
    weights.shapes.update(info.shapes)
    absent = (expected or set()) - info.tensor_names
    if absent:
        return f"{path}: lacks {len(absent)} tensors its shard index places there, e.g. {bounded(min(absent))}"
    return None


def _check_sharded(weights: WeightSet, index: Path) -> str | None:
    data, problem = _parse_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if problem is not None:
        return f"{index}: shard index {problem}"
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        return f"{index}: shard index has no weight_map of tensor names to file names"
    problems = []
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if path.parent != index.parent:
            problems.append(f"{index.name} places tensors in {bounded(shard)}, outside the component's folder")
            continue
        weights.files.append(path.name)
        if not present(path):
            problems.append(f"shard {path} listed in {index.name} is missing")
            continue
        problem = _add_safetensors(weights, path, {t for t, s in weight_map.items() if s == shard})
        if problem:
            problems.append(problem)
    return "; ".join(problems) or None


def _check_tokenizer(report: VolumeReport, component: ComponentReport, folder: Path) -> None:
    name = component.name
    has_fast = (folder / "tokenizer.json").is_file()
    has_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    if not (has_fast or has_bpe):
        component.ok = False
        report.add("fail", f"{name}: neither tokenizer.json nor vocab.json + merges.txt", folder)
        return
    for vocab_file in ("tokenizer.json", "vocab.json", "merges.txt"):
        path = folder / vocab_file
        if path.is_file() and path.stat().st_size == 0:
            component.ok = False
            report.add("fail", f"{name}: {vocab_file} is empty", path)
    config = _load_json_object(report, component, folder / "tokenizer_config.json")
    if config is None:
        return
    max_length = config.get("model_max_length")
    positions = _text_positions(Path(report.model_path), name)
    if not isinstance(max_length, int) or isinstance(max_length, bool) or not 0 < max_length <= positions:
        component.ok = False
        report.add("fail", f"{name}: tokenizer_config.json has no usable model_max_length (got {bounded(max_length)}; "
                   f"its text encoder has {positions} positions, CLIP's 77)", folder / "tokenizer_config.json")
        return
    component.max_length = max_length
    files = "tokenizer.json" if has_fast else "vocab.json + merges.txt"
    report.add("ok", f"{name}: {files}, model_max_length {max_length}")


def _text_positions(model_path: Path, tokenizer: str) -> int:
    """How many token positions the tokenizer's text encoder has (its config's max_position_embeddings; 77,
    CLIP's, when that is unreadable: the encoder's own check reports it)."""
    encoder = tokenizer.replace("tokenizer", "text_encoder")
    config, _ = _parse_json(model_path / encoder / "config.json")
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    return positions if isinstance(positions, int) and not isinstance(positions, bool) and positions > 0 else 77


def _check_tokenizer_lengths(report: VolumeReport) -> None:
    """SDXL puts the two text encoders' outputs side by side, token by token: their lengths must agree."""
    lengths = {c.name: c.max_length for c in report.components.values() if c.max_length is not None}
    if len(set(lengths.values())) > 1:
        for name in lengths:
            report.components[name].ok = False
        report.add("fail", "tokenizers disagree on model_max_length (" + ", ".join(
            f"{name} {length}" for name, length in lengths.items()) + "): SDXL joins their encodings token by token")


def _check_scheduler(report: VolumeReport, component: ComponentReport, folder: Path) -> None:
    config = _load_json_object(report, component, folder / "scheduler_config.json")
    if config is not None:
        report.add("ok", f"{component.name}: scheduler_config.json valid ({component.class_name})")


def _check_processor(report: VolumeReport, component: ComponentReport, folder: Path) -> None:
    config = _load_json_object(report, component, folder / "preprocessor_config.json")
    if config is not None:
        report.add("ok", f"{component.name}: preprocessor_config.json valid")


def _check_stray_root_files(report: VolumeReport, model_path: Path) -> None:
    others = sorted(p.name for p in model_path.iterdir() if p.is_file() and p.name != "model_index.json")
    if others:
        report.add("ok", f"model folder: ignoring {len(others)} other file(s), not read: {_names(others)}")


def _unreadable(exc: OSError, fallback: Path) -> str:
    return f"{exc.filename or fallback} cannot be read ({exc.strerror or exc})"


def _names(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(bounded(name) for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _plans(report: VolumeReport) -> dict[str, PlanOption]:
    models = [c for c in report.components.values() if c.kind == "model"]
    plans = {}
    for variant in VARIANTS:
        missing = [c.name for c in models if not (variant in c.weight_sets and c.weight_sets[variant].complete)]
        total = sum(c.weight_sets[variant].bytes for c in models if not missing)
        plans[variant] = PlanOption(possible=not missing and report.loadable, bytes=total, missing_in=missing)
    return plans


def _free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def check_loras(folder: str | os.PathLike[str], max_mb: int) -> LoraReport:
    """Every LoRA file in `folder`, from its header alone; never raises."""
    path = Path(folder)
    usable, broken = scan(path, max_mb * 1_000_000)
    return LoraReport(str(path), path.is_dir(), usable, broken)


def check_embeddings(folder: str | os.PathLike[str], model_path: str | os.PathLike[str],
                     max_vectors: int) -> EmbeddingReport | str:
    """Every embedding in `folder`, from its header, against the text encoders' widths in `model_path`'s configs;
    a sentence instead when those cannot be read. Never raises."""
    path = Path(folder)
    if not path.is_dir():
        return EmbeddingReport(str(path), False, [], {})
    try:
        widths = tuple(int(_config(model_path, part)["hidden_size"]) for part in ("text_encoder", "text_encoder_2"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"Embeddings in {path} not checked: the text encoders' configs cannot be read ({bounded(exc, 200)})"
    usable, broken = scan_embeddings(path, widths, max_vectors)  # type: ignore[arg-type]
    return EmbeddingReport(str(path), True, usable, broken)


def check_controlnets(folder: str | os.PathLike[str], model_path: str | os.PathLike[str]) -> ControlNetReport | str:
    """Every ControlNet in `folder`, from its config and headers, against `model_path`'s UNet config; a sentence
    instead when that cannot be read. Never raises."""
    path = Path(folder)
    if not path.is_dir():
        return ControlNetReport(str(path), False, [], {})
    try:
        unet = _config(model_path, "unet")
    except (OSError, ValueError) as exc:
        return f"ControlNets in {path} not checked: the UNet's config cannot be read ({bounded(exc, 200)})"
    usable, broken = scan_controlnets(path, unet)
    return ControlNetReport(str(path), True, usable, broken)


def _config(model_path: str | os.PathLike[str], component: str) -> dict:
    config = json.loads(read_text_bounded(Path(model_path) / component / "config.json"))
    if not isinstance(config, dict):
        raise ValueError(f"{component}/config.json is not a JSON object")
    return config
