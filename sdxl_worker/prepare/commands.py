"""prepare_volume's commands (the command line is prepare_volume.py): add-fp16, from-single-file, convert-bin and
plan, each returning a Summary of what it did or would do, ending with the volume check's verdict and the load plan
the worker will use. Before the first byte the free space is checked; every file is written under a hidden
temporary name, fsynced and renamed (an index last; a new folder as a whole)."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sdxl_worker.loading.loader import weight_files
from sdxl_worker.loading.plan import plan_load
from sdxl_worker.prepare import bin_weights, fp16_set, single_file
from sdxl_worker.prepare.fp16_set import Float16RangeError, PrepareError
from sdxl_worker.prepare.lock import writer_lock
from sdxl_worker.prepare.pipeline_files import MODEL_COMPONENTS, model_config, write_pipeline_files
from sdxl_worker.sources import cache_refusal
from sdxl_worker.volume.check import check_volume, recheck
from sdxl_worker.volume.report import VolumeReport, format_bytes
from sdxl_worker.weights.safetensors_header import SafetensorsHeaderError, read_safetensors_header
from sdxl_worker.weights.safetensors_io import Progress, fsync_path, partial_path

# Opens a progress display for (total bytes, label), giving the callback to count written bytes with.
ProgressBar = Callable[[int, str], AbstractContextManager[Progress]]


def progress_bar(enabled: bool | None) -> ProgressBar:
    """A tqdm bar over the bytes to write (bytes, rate, ETA) on stderr: on a terminal (None), always, or never."""
    @contextmanager
    def bar(total: int, label: str) -> Iterator[Progress]:
        with tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr, mininterval=0.5,
                  disable=None if enabled is None else not enabled) as shown:
            yield shown.update
    return bar


@dataclass
class Summary:
    """What a command did (or would do), as printed and as `--json` gives it."""

    command: str
    model_path: str
    status: str = "done"  # done | nothing to do | dry run | failed
    actions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    bytes_to_write: int = 0
    free_bytes: int | None = None
    removed_leftovers: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    seconds: float = 0.0
    peak_memory_bytes: int | None = None
    volume_check: dict[str, object] | None = None
    load_plan: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0

    def render(self) -> str:
        lines = [f"prepare_volume {self.command} {self.model_path}"]
        if self.removed_leftovers:
            lines.append(f"  removed {len(self.removed_leftovers)} temporary file(s) an interrupted run left: "
                         + ", ".join(self.removed_leftovers))
        lines += [f"  {action}" for action in self.actions]
        lines += [f"  ❌ {failure}" for failure in self.failures]
        free = format_bytes(self.free_bytes) if self.free_bytes is not None else "n/a"
        if self.status == "dry run":
            lines.append(f"Dry run: would write {format_bytes(self.bytes_to_write)}; {free} free. Nothing written.")
        elif self.status == "nothing to do":
            done = {"convert-bin": "no component has .bin weights that it lacks as safetensors",
                    "compile": "every package asked for is compiled already"}.get(
                self.command, "the volume already has every fp16 set")
            lines.append(f"Nothing to do: {done}. Nothing written.")
        elif self.written and self.command == "compile":
            peak = f"; peak memory {format_bytes(self.peak_memory_bytes)}" if self.peak_memory_bytes else ""
            lines.append(f"Compiled {len(self.written)} package(s), {format_bytes(self.bytes_to_write)}, in "
                         f"{self.seconds:.1f} s{peak}")
        elif self.written:
            rate = self.bytes_to_write / self.seconds / 1e6 if self.seconds else 0.0
            peak = f"; peak memory {format_bytes(self.peak_memory_bytes)}" if self.peak_memory_bytes else ""
            lines.append(f"Wrote {format_bytes(self.bytes_to_write)} in {self.seconds:.1f} s ({rate:.0f} MB/s); "
                         f"{free} free before{peak}")
        if self.freed_bytes:
            lines.append(f"Deleted the standard files: {format_bytes(self.freed_bytes)} freed")
        if self.volume_check is not None:
            icon = "✅" if self.volume_check["exit_code"] == 0 else "❌"
            lines.append(f"Volume check: {icon} {self.volume_check['summary']}")
        if self.load_plan is not None:
            lines.append(f"Load plan on a GPU: {self.load_plan}")
        return "\n".join(lines)


def load_plan_line(report: VolumeReport) -> str | None:
    """What the worker will read at each cold start on a GPU, in words."""
    if not report.loadable:
        return None
    plan = plan_load(report, "cuda")
    what = {"fp16": "fp16 variant", "standard": "standard files cast to fp16 (the fallback)"}.get(plan.label, "a mix")
    reasons = f" ({'; '.join(plan.reasons)})" if plan.reasons else ""
    return f"{what}, {format_bytes(plan.bytes_to_read)} per cold start{reasons}"


def peak_memory() -> int | None:
    """This process's peak resident memory (Linux's VmHWM: since exec, unlike getrusage's, which counts the
    parent's pages a fork started with)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    line = next((line for line in status.splitlines() if line.startswith("VmHWM:")), None)
    return int(line.split()[1]) * 1024 if line else None


def finish(summary: Summary, report: VolumeReport) -> Summary:
    """Record the volume check of the result (`report`: checked again where the command wrote); a volume that is
    not loadable is a failure."""
    summary.peak_memory_bytes = peak_memory()
    summary.volume_check = {"exit_code": report.exit_code, "summary": report.summary()}
    summary.load_plan = load_plan_line(report)
    if report.exit_code != 0 and not summary.failures:
        summary.failures.append(f"the volume check still fails: {report.summary()}")
    return summary


def add_fp16(model_path: Path, *, drop_standard: bool = False, dry_run: bool = False,
             progress: ProgressBar | None = None) -> Summary:
    """The `add-fp16` command (see the module docstring)."""
    with _writing(model_path, dry_run, creates=False):
        return _add_fp16(model_path, drop_standard, dry_run, progress)


def _add_fp16(model_path: Path, drop_standard: bool, dry_run: bool, progress: ProgressBar | None) -> Summary:
    summary = Summary("add-fp16", str(model_path))
    progress = progress or progress_bar(False)
    report = check_volume(model_path, tensors=True)
    if report.path_missing or report.pipeline_class is None:
        raise PrepareError(f"{model_path} is not a model folder the worker can read: {report.summary()}", 2)
    plan = fp16_set.plan_fp16(report, fp16_set.free_bytes(model_path))
    summary.bytes_to_write, summary.free_bytes = plan.bytes_to_write, plan.free_bytes
    for work in plan.work:
        files = ", ".join(f"{o.path.name} ({format_bytes(o.bytes)})" for o in work.outputs)
        index = f" and {work.index[0].name}" if work.index else ""
        summary.actions.append(f"{work.name}: {work.reason}: {'would write' if dry_run else 'writing'} {files}{index}")
    summary.actions += [f"{name}: fp16 set complete" for name in plan.complete]
    summary.failures += [f"{name}: {why}" for name, why in plan.blocked.items()]
    if dry_run:
        summary.status = "dry run"
        summary.actions += [f"would remove {p.relative_to(model_path)} (left by an interrupted run)"
                            for p in plan.leftovers]
        return summary
    for path in plan.leftovers:
        path.unlink()
        summary.removed_leftovers.append(str(path.relative_to(model_path)))
    if not plan.work and not drop_standard:
        summary.status = "nothing to do" if not plan.blocked else "failed"
        return finish(summary, report)
    fp16_set.preflight(plan)
    started = time.perf_counter()
    with progress(plan.bytes_to_write, "add-fp16") as bar:
        for work in plan.work:
            try:
                written = fp16_set.write_component(work, bar)
            except (Float16RangeError, SafetensorsHeaderError) as exc:
                summary.failures.append(f"{work.name}: {exc}; no fp16 set written for it")
                continue
            except OSError as exc:  # a full disk, an I/O error on the volume: the component's new files are removed
                summary.failures.append(f"{work.name}: writing its fp16 set failed ({exc.strerror or exc}); "
                                        "no fp16 set written for it, the volume is as before")
                continue
            summary.written += [str(p.relative_to(model_path)) for p in written]
    summary.seconds = time.perf_counter() - started
    report = recheck(report, written_components(summary), tensors=True)
    if drop_standard and not summary.failures:
        dropped = _drop_standard(summary, report)
        report = recheck(report, dropped, tensors=True)
    summary.status = "failed" if summary.failures else "done"
    return finish(summary, report)


def written_components(summary: Summary) -> set[str]:
    """The components a command wrote files into (their folders, as `summary.written` names them)."""
    return {Path(path).parts[0] for path in summary.written}


def _drop_standard(summary: Summary, report: VolumeReport) -> list[str]:
    """Delete every component's standard set once its fp16 set is complete and equal to it, tensor by tensor;
    the components whose files were deleted."""
    model_path = Path(report.model_path)
    models = [c for c in report.components.values() if c.kind == "model"]
    for component in models:
        if component.weight_sets["fp16"].complete and component.weight_sets["standard"].complete:
            problem = fp16_set.verify_fp16_set(model_path / component.name, component)
            if problem:
                summary.failures.append(f"{component.name}: standard files kept: {problem}")
    if summary.failures:
        return []
    dropped = []
    for component in models:
        if not component.weight_sets["standard"].complete:
            continue
        # The index first (the check lists it first): the set disappears at once.
        for path in weight_files(model_path, report, {component.name: "standard"}):
            summary.freed_bytes += path.stat().st_size
            path.unlink()
        fsync_path(model_path / component.name)
        dropped.append(component.name)
        summary.actions.append(f"{component.name}: standard files verified against the fp16 set and deleted")
    return dropped


def convert_bin(model_path: Path, *, dry_run: bool = False, progress: ProgressBar | None = None) -> Summary:
    """The `convert-bin` command (see the module docstring)."""
    with _writing(model_path, dry_run, creates=False):
        return _convert_bin(model_path, dry_run, progress)


def _convert_bin(model_path: Path, dry_run: bool, progress: ProgressBar | None) -> Summary:
    summary = Summary("convert-bin", str(model_path))
    progress = progress or progress_bar(False)
    report = check_volume(model_path, tensors=True)
    if report.path_missing or report.pipeline_class is None:
        raise PrepareError(f"{model_path} is not a model folder the worker can read: {report.summary()}", 2)
    models = {c.name: (c.library, set(c.complete_variants())) for c in report.components.values() if c.kind == "model"}
    work = bin_weights.plan_bins(models, model_path)
    summary.bytes_to_write, summary.free_bytes = sum(w.bytes for w in work), fp16_set.free_bytes(model_path)
    for item in work:
        files = ", ".join(p.name for p in item.sources)
        summary.actions.append(f"{item.name}: {'would convert' if dry_run else 'converting'} {files} to "
                               f"{', '.join(p.name for p in item.targets())}")
    if dry_run or not work:
        summary.status = "dry run" if dry_run else "nothing to do"
        return summary if dry_run else finish(summary, report)
    needed = fp16_set.bytes_needed(summary.bytes_to_write)
    if summary.free_bytes < needed:
        raise PrepareError(fp16_set.space_sentence(model_path, summary.free_bytes, summary.bytes_to_write, needed))
    started = time.perf_counter()
    with progress(summary.bytes_to_write, "convert-bin") as bar:
        for item in work:
            try:
                written = bin_weights.convert(item, bar)
            except bin_weights.BinRefused as exc:
                summary.failures.append(f"{item.name}: {exc}; nothing written for it")
                continue
            except OSError as exc:
                summary.failures.append(f"{item.name}: writing its safetensors failed ({exc.strerror or exc}); "
                                        "nothing written for it, the volume is as before")
                continue
            summary.written += [str(p.relative_to(model_path)) for p in written]
    summary.seconds = time.perf_counter() - started
    summary.status = "failed" if summary.failures else "done"
    return finish(summary, recheck(report, written_components(summary), tensors=True))


def from_single_file(checkpoint: Path, model_path: Path, *, config_dir: Path | None = None,
                     vae_dir: Path | None = None, dry_run: bool = False,
                     progress: ProgressBar | None = None) -> Summary:
    """The `from-single-file` command (see the module docstring)."""
    with _writing(model_path, dry_run, creates=True):
        return _from_single_file(checkpoint, model_path, config_dir, vae_dir, dry_run, progress)


def _writing(model_path: Path, dry_run: bool, *, creates: bool) -> AbstractContextManager[object]:
    """The model folder's writer lock for a command that writes. None for a dry run, nor where the command will
    refuse for want of a folder (the model folder for a command that changes one, its parent for one that creates
    it): a refused command writes nothing, and its sentence names what is there, not the lock."""
    refusal = cache_refusal(model_path)
    if refusal:
        raise PrepareError(refusal, 2)
    needed = model_path.parent if creates else model_path
    return nullcontext() if dry_run or not needed.is_dir() else writer_lock(model_path)


def _from_single_file(checkpoint: Path, model_path: Path, config_dir: Path | None, vae_dir: Path | None,
                      dry_run: bool, progress: ProgressBar | None) -> Summary:
    summary = Summary("from-single-file", str(model_path))
    progress = progress or progress_bar(False)
    if not checkpoint.is_file():
        raise PrepareError(f"checkpoint {checkpoint} does not exist", 2)
    if model_path.exists() and (not model_path.is_dir() or any(model_path.iterdir())):
        raise PrepareError(f"{model_path} already exists and is not empty: choose a new folder", 2)
    if not model_path.parent.is_dir():
        raise PrepareError(f"{model_path.parent} does not exist (is the volume attached?)", 2)
    try:
        info = read_safetensors_header(checkpoint)
    except SafetensorsHeaderError as exc:
        raise PrepareError(f"{exc}") from exc
    refusal = single_file.identify(info)
    if refusal:
        raise PrepareError(refusal)
    counts = single_file.components_in(info)
    absent = [name for name, count in counts.items() if not count and not (name == "vae" and vae_dir)]
    if absent:
        hint = "; pass --vae with a diffusers VAE folder" if absent == ["vae"] else ""
        raise PrepareError(f"{checkpoint.name} has no weights for {', '.join(absent)} "
                           f"({', '.join(single_file.PREFIXES[a] + '*' for a in absent)}){hint}")
    staging = partial_path(model_path)
    source = f"--config {config_dir}" if config_dir else "SDXL base 1.0"
    try:
        configs = {name: model_config(name, config_dir) for name in MODEL_COMPONENTS}
    except OSError as exc:
        raise PrepareError(f"--config {config_dir}: {exc.filename} cannot be read ({exc.strerror})", 2) from exc
    except ValueError as exc:  # JSON that does not parse
        raise PrepareError(f"--config {config_dir}: a model config.json is not valid JSON ({exc})", 2) from exc
    parts = [single_file.plan_component(info, name, staging, configs[name], source)
             for name in MODEL_COMPONENTS if not (name == "vae" and vae_dir)]
    vae = single_file.vae_work(vae_dir, staging) if vae_dir else None
    summary.bytes_to_write = sum(p.bytes for p in parts) + (vae.bytes if vae else 0)
    summary.free_bytes = fp16_set.free_bytes(model_path.parent)
    verb = "would write" if dry_run else "writing"
    summary.actions += [f"{p.name}: {verb} {p.target.name} ({format_bytes(p.bytes)}), {len(p.specs)} tensors"
                        for p in parts]
    if vae:
        size = format_bytes(vae.bytes)
        summary.actions.append(f"vae: {verb} {vae.outputs[0].path.name} ({size}) from --vae {vae_dir}")
    summary.actions.append(f"configs and tokenizers: {source}'s")
    if dry_run:
        summary.status = "dry run"
        return summary
    if staging.exists():
        shutil.rmtree(staging)
        summary.removed_leftovers.append(staging.name)
    needed = fp16_set.bytes_needed(summary.bytes_to_write)
    if summary.free_bytes < needed:
        raise PrepareError(fp16_set.space_sentence(model_path, summary.free_bytes, summary.bytes_to_write, needed))
    started = time.perf_counter()
    published = False
    try:
        staging.mkdir()
        write_pipeline_files(staging, config_dir)
        with progress(summary.bytes_to_write, "from-single-file") as bar:
            for part in parts:
                single_file.write_component(info, part, configs[part.name], bar)
            if vae:
                fp16_set.write_component(vae, bar)
                shutil.copyfile(vae_dir / "config.json", staging / "vae" / "config.json")
        single_file.sync_tree(staging)
        check = check_volume(staging, tensors=True)
        if check.exit_code != 0:
            raise PrepareError(f"the converted folder fails the volume check, so it was not kept: {check.summary()}")
        if model_path.exists():
            model_path.rmdir()
        staging.rename(model_path)
        fsync_path(model_path.parent)
        published = True
    except (Float16RangeError, SafetensorsHeaderError) as exc:
        raise PrepareError(f"{exc}; nothing written") from exc
    except OSError as exc:  # a full disk, an I/O error: the staging folder goes, nothing is published
        raise PrepareError(f"writing {exc.filename or staging} failed ({exc.strerror or exc}); nothing written") \
            from exc
    finally:
        if not published:
            shutil.rmtree(staging, ignore_errors=True)
    summary.written = sorted(str(p.relative_to(model_path)) for p in model_path.rglob("*.safetensors"))
    summary.seconds = time.perf_counter() - started
    return finish(summary, check_volume(model_path, tensors=True))
