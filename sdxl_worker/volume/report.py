"""What the volume check found: findings, weight sets, component and volume reports, the LoRA, embeddings and
ControlNet folders."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from sdxl_worker.controlnets.files import ControlNetFolder
from sdxl_worker.embeddings.files import EmbeddingFile
from sdxl_worker.loras.files import LoraFile
from sdxl_worker.weights.layout import (
    VARIANTS,
    Variant,
)
from sdxl_worker.weights.safetensors_header import SafetensorsInfo

Status = Literal["ok", "warn", "fail"]


ICONS: dict[str, str] = {"ok": "✅", "warn": "⚠️", "fail": "❌"}


ComponentKind = Literal["model", "tokenizer", "scheduler", "processor"]


@dataclass
class Finding:
    """One line of the report: a check's outcome and the path it is about."""

    status: Status
    message: str
    path: str | None = None
    component: str | None = None  # the component whose check found it; None for the folder as a whole

    @property
    def text(self) -> str:
        """The message, with the path at fault appended unless the message already names it."""
        if self.path is None or self.status == "ok" or self.path in self.message:
            return self.message
        return f"{self.message} [{self.path}]"

    def render(self) -> str:
        return f"{ICONS[self.status]} {self.text}"


@dataclass
class WeightSet:
    """One component's files for one variant, and whether they are all there and intact."""

    variant: Variant
    present: bool = False
    complete: bool = False
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    parameters: int = 0
    problem: str | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    # Each file's parsed header, in load order: the read-once loader reads the data from these, not the headers again.
    headers: list[SafetensorsInfo] = field(default_factory=list, repr=False)

    def paths(self, folder: Path) -> list[Path]:
        """The set's files in the component's `folder`, in load order (an index first)."""
        return [folder / name for name in self.files]

    @property
    def sharded(self) -> bool:
        """Listed by a shard index (diffusers renames old tensor names only in single files)."""
        return any(f.endswith(".json") for f in self.files)


@dataclass
class ComponentReport:
    """What model_index.json says a component is, and what the folder holds for it."""

    name: str
    library: str
    class_name: str
    kind: ComponentKind
    ok: bool = True
    weight_sets: dict[str, WeightSet] = field(default_factory=dict)
    max_length: int | None = None  # a tokenizer's model_max_length

    def complete_variants(self) -> list[Variant]:
        return [v for v in VARIANTS if v in self.weight_sets and self.weight_sets[v].complete]


@dataclass
class PlanOption:
    """Whether the whole pipeline can load from one weight set, and how many bytes that reads."""

    possible: bool
    bytes: int
    missing_in: list[str]


@dataclass
class VolumeReport:
    """Everything the check found; the loader plans from it and the CLI prints it."""

    model_path: str
    volume_root: str
    findings: list[Finding] = field(default_factory=list)
    components: dict[str, ComponentReport] = field(default_factory=dict)
    pipeline_class: str | None = None
    pipeline_config: dict[str, object] = field(default_factory=dict)
    plans: dict[str, PlanOption] = field(default_factory=dict)
    free_bytes: dict[str, int | None] = field(default_factory=dict)
    path_missing: bool = False
    seconds: float = 0.0  # the check's own time
    import_s: float = 0.0  # importing torch and the libraries first, for the tensor check
    source: dict[str, object] | None = None  # ModelSource.to_dict(): a folder, or a Hub repo's cached snapshot

    def add(self, status: Status, message: str, path: Path | str | None = None) -> None:
        self.findings.append(Finding(status, message, str(path) if path is not None else None))

    @property
    def problems(self) -> list[str]:
        return [f.text for f in self.findings if f.status == "fail"]

    @property
    def loadable(self) -> bool:
        """True when every component can be loaded from at least one complete weight set."""
        if self.path_missing or self.pipeline_class is None or not self.components:
            return False
        if not all(c.ok for c in self.components.values()):
            return False
        return all(c.complete_variants() for c in self.components.values() if c.kind == "model")

    @property
    def exit_code(self) -> int:
        if self.path_missing:
            return 2
        return 0 if self.loadable and not self.problems else 1

    @property
    def cached(self) -> bool:
        """Whether a Hub repo's snapshot in a model cache is what was checked."""
        return self.source is not None and self.source["kind"] == "cache"

    @property
    def model(self) -> str:
        """The model as the summary names it: `at FOLDER`, or the Hub repo and commit a cache served."""
        if self.cached:
            return f"{self.source['repo_id']}@{str(self.source['commit'])[:12]} (cached)"
        return f"at {self.model_path}"

    def summary(self) -> str:
        """One sentence for a log line or a job's error: the verdict and the first problem."""
        more = f" (+{len(self.problems) - 1} more problems)" if len(self.problems) > 1 else ""
        if self.loadable:
            possible = [name for name, plan in self.plans.items() if plan.possible] or ["per-component mix"]
            verdict = f"model {self.model} is loadable ({', '.join(possible)})"
            # Served, from the sets that are intact; exit 1 all the same, so a broken file is never left unnoticed.
            return f"{verdict}, but a file needs fixing: {self.problems[0]}{more}" if self.problems else verdict
        first = self.problems[0] if self.problems else "no complete weight set for some component"
        return f"model {self.model} is not loadable: {first}{more}"

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        for component in data["components"].values():  # the tensor shapes: thousands of lines, no verdict
            for weights in component["weight_sets"].values():
                weights.pop("shapes")
                weights.pop("headers")
        data.update(loadable=self.loadable, exit_code=self.exit_code, summary=self.summary())
        return data

    def timing(self) -> str:
        """How long the check took, and apart from it how long importing the libraries for the tensor check took."""
        imports = f"; importing torch and the model libraries for it: {self.import_s:.2f} s more" \
            if self.import_s >= 0.01 else ""
        return f"checked in {self.seconds:.2f} s{imports}"

    def render(self) -> str:
        lines = [f"Volume check of {self.model_path}"]
        lines += [f.render() for f in self.findings]
        if self.plans:
            parts = []
            for name, plan in self.plans.items():
                if plan.possible:
                    parts.append(f"{name}: possible, reads {format_bytes(plan.bytes)}")
                else:
                    why = f"incomplete in {', '.join(plan.missing_in)}" if plan.missing_in else "volume not loadable"
                    parts.append(f"{name}: not possible ({why})")
            lines.append("Load plans: " + "; ".join(parts))
        free = ", ".join(f"{where} {format_bytes(n) if n is not None else 'n/a'}"
                         for where, n in self.free_bytes.items())
        lines.append(f"Free space: {free}")
        icon = ICONS["ok"] if self.exit_code == 0 else ICONS["warn"] if self.loadable else ICONS["fail"]
        lines.append(f"{icon} {self.summary()} ({self.timing()})")
        return "\n".join(lines)


@dataclass
class FolderReport:
    """A folder of add-ons a job may name (LoRAs, embeddings, ControlNets): each usable one, each broken one with its
    reason. Subclasses say what the folder is called, what its absence means and how one usable item reads."""

    folder: str
    present: bool
    usable: list[Any]
    broken: dict[str, str]

    title: ClassVar[str]
    absent: ClassVar[str]  # what a missing folder means for jobs

    def item(self, found: Any) -> tuple[str, dict[str, object]]:
        """One usable item: its line after the name, and its JSON fields beside the name."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, object]:
        return {"folder": self.folder, "present": self.present, "broken": self.broken,
                "usable": [{"name": found.name, **self.item(found)[1]} for found in self.usable]}

    def render(self) -> str:
        if not self.present:
            return f"{self.title}: no folder {self.folder} ({self.absent})"
        lines = [f"{self.title} in {self.folder}: {len(self.usable)} usable, {len(self.broken)} broken"]
        lines += [f"{ICONS['ok']} {found.name}: {self.item(found)[0]}" for found in self.usable]
        lines += [f"{ICONS['fail']} {reason}" for reason in self.broken.values()]
        return "\n".join(lines)


class LoraReport(FolderReport):
    title, absent = "LoRAs", "jobs that name a LoRA are refused; the rest are served"

    def item(self, found: LoraFile) -> tuple[str, dict[str, object]]:
        return (f"{found.format}, {', '.join(found.parts)}, rank {found.rank}, {format_bytes(found.bytes)}",
                {"bytes": found.bytes, "format": found.format, "parts": list(found.parts), "rank": found.rank})


class EmbeddingReport(FolderReport):
    """Checked against the model's text-encoder widths."""

    title, absent = "Embeddings", "every prompt word is text"

    def item(self, found: EmbeddingFile) -> tuple[str, dict[str, object]]:
        return f"{found.vectors} vector(s)", {"vectors": found.vectors}


class ControlNetReport(FolderReport):
    """Checked against the model's UNet config."""

    title, absent = "ControlNets", "jobs that name a ControlNet are refused; the rest are served"

    def item(self, found: ControlNetFolder) -> tuple[str, dict[str, object]]:
        return (f"{', '.join(found.weights)}, {format_bytes(found.bytes)}",
                {"bytes": found.bytes, "variants": list(found.weights)})


def format_bytes(n: int) -> str:
    """Bytes for a person: GB from 0.1 GB up, else MB."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
