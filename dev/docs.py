"""The job contract and reply tables (docs/api.md), the common fields (README.md), the CUDA flavour table
(docs/runpod.md) and the settings table (docs/settings.md), generated
from the job schema, the typed reply, dev/cuda_flavours.py and the settings object.

The descriptions, defaults, bounds and choices live on the fields themselves; the pages hold a copy between
markers, and a test fails when a copy differs.

    python -m dev.docs           # rewrite the pages' generated tables
    python -m dev.docs --check   # exit 1 when a page differs from the fields
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dev.cuda_flavours import DEFAULT, FLAVOURS
from sdxl_worker.contract.job_schema import JobInput
from sdxl_worker.delivery.reply import Reply
from sdxl_worker.settings import environment_fields, field_types

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SETTINGS_PAGE = ROOT / "docs" / "settings.md"
API_PAGE = ROOT / "docs" / "api.md"
RUNPOD_PAGE = ROOT / "docs" / "runpod.md"
PAGES = (README, API_PAGE, SETTINGS_PAGE, RUNPOD_PAGE)
BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z ]+) -->\n).*?(<!-- end generated -->)", re.S)


def contract_table() -> str:
    rows = ["| field | type | default | bounds / choices | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, field in JobInput.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is None:
            default = "required" if field.is_required() else _value(field.default)
            rows.append(f"| `{name}` | {_type(field.annotation)} | {default} | {_bounds(field)} | "
                        f"{field.description} |")
            continue
        # An object, or a list of them: its row, then one row per field of the object.
        model, many = nested
        kind = "array of objects" if many else "object or null"
        rows.append(f"| `{name}` | {kind} | {_value(field.get_default(call_default_factory=True))} | "
                    f"{_bounds(field)} | {field.description} |")
        for sub, subfield in model.model_fields.items():
            default = "required" if subfield.is_required() else _value(subfield.default)
            rows.append(f"| `{name}{'[]' if many else ''}.{sub}` | {_type(subfield.annotation)} | {default} | "
                        f"{_bounds(subfield)} | {subfield.description} |")
    return "\n".join(rows)


def _nested_model(annotation: Any) -> tuple[type[BaseModel], bool] | None:
    """The model of a `list[Model]` field's items (True) or of a `Model` or `Model | None` field (False); None
    otherwise."""
    args = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
    if isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], get_origin(annotation) is list
    return None


def environment_table() -> str:
    rows = ["| variable | default | choices | effect |", "| --- | --- | --- | --- |"]
    for variable, field in environment_fields():
        default = field.get_default(call_default_factory=True)
        if default is None:
            shown = "`auto`" if field_types(field.annotation)[0] in (bool, int) else "unset"
        elif default == "":
            shown = "empty"
        else:
            shown = _flag(default) if isinstance(default, bool) else f"`{default}`"
        rows.append(f"| `{variable}` | {shown} | {_choices(variable, field)} | {field.description} |")
    return "\n".join(rows)


def reply_table() -> str:
    rows = ["| field | type | meaning |", "| --- | --- | --- |"]

    def add(prefix: str, model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            nested = _nested_model(field.annotation)
            optional = "Only when set: " if not field.is_required() and field.default is None else ""
            kind = _reply_type(field.annotation) if nested is None else "array of objects" if nested[1] else "object"
            rows.append(f"| `{prefix}{name}` | {kind} | {optional}{field.description} |")
            if nested is not None:
                add(f"{prefix}{name}{'[]' if nested[1] else ''}.", nested[0])

    add("", Reply)
    return "\n".join(rows)


def _reply_type(annotation: Any) -> str:
    if get_origin(annotation) is list:
        return f"array of {_type(get_args(annotation)[0])}s"
    return _type(annotation).replace(" or null", "")


def cuda_flavours_table() -> str:
    rows = ["| `CUDA_FLAVOUR` | base image | lock | runs on RunPod hosts with | state |",
            "| --- | --- | --- | --- | --- |"]
    for name, flavour in FLAVOURS.items():
        default = " (default)" if name == DEFAULT else ""
        rows.append(f"| `{name}`{default} | `{flavour.base_image}` | `{flavour.lock}` | CUDA "
                    f"{', '.join(flavour.allowed_cuda_versions)} (driver >= {flavour.min_driver}) | {flavour.status} |")
    return "\n".join(rows)


# The fields most jobs set: README's short table (docs/api.md has them all).
COMMON_FIELDS = ("prompt", "negative_prompt", "width", "height", "num_inference_steps", "guidance_scale", "seed",
                 "num_images", "scheduler", "output_format")


def common_fields_table() -> str:
    rows = ["| field | default | bounds / choices |", "| --- | --- | --- |"]
    for name in COMMON_FIELDS:
        field = JobInput.model_fields[name]
        default = "required" if field.is_required() else _value(field.default)
        rows.append(f"| `{name}` | {default} | {_bounds(field)} |")
    return "\n".join(rows)


TABLES = {"common fields": common_fields_table, "job contract": contract_table, "reply": reply_table,
          "environment": environment_table,
          "cuda flavours": cuda_flavours_table}


def update(text: str) -> str:
    """`text` with every generated block replaced by its table, built now."""
    return BLOCK.sub(lambda m: f"{m.group(1)}{TABLES[m.group('name')]()}\n{m.group(3)}", text)


def _type(annotation: Any) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    kinds = ["string" if get_origin(a) is Literal else f"array of {names[get_args(a)[0]]}s" if get_origin(a) is list
             else names[a] for a in field_types(annotation)]
    nullable = type(None) in get_args(annotation)
    return " or ".join(kinds) + (" or null" if nullable else "")


def _bounds(field: FieldInfo) -> str:
    parts = []
    many = "items" if any(get_origin(a) is list for a in field_types(field.annotation)) else "characters"
    for rule in field.metadata:
        for attribute, text in (("ge", ">= {}"), ("le", "<= {}"), ("multiple_of", "multiple of {}"),
                                ("max_length", f"up to {{}} {many}")):
            if getattr(rule, attribute, None) is not None:
                parts.append(text.format(_number(getattr(rule, attribute))))
    if any(getattr(rule, "min_length", None) == 1 for rule in field.metadata):
        parts.insert(0, "not empty")
    literal = next((a for a in field_types(field.annotation) if get_origin(a) is Literal), None)
    if literal is not None:
        parts.append(", ".join(f"`{choice}`" for choice in get_args(literal)))
    return "; ".join(parts) or "any"


def _choices(variable: str, field: FieldInfo) -> str:
    kind = field_types(field.annotation)[0]
    if get_origin(kind) is Literal:
        return ", ".join(f"`{choice}`" for choice in get_args(kind))
    if kind is bool:
        return "`1`, `0`" + (", `auto`" if type(None) in get_args(field.annotation) else "")
    if kind is int:
        low = next((rule.ge for rule in field.metadata if getattr(rule, "ge", None) is not None), 0)
        return f"a whole number >= {_number(low)}" + (", `auto`" if type(None) in get_args(field.annotation) else "")
    if kind is float:
        bounds = [f"{sign} {_number(getattr(rule, key))}" for rule in field.metadata
                  for key, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
                  if getattr(rule, key, None) is not None]
        return " and ".join(["a number " + bounds[0], *bounds[1:]]) if bounds else "a number"
    if field.examples:
        shown = ", ".join(f"`{example}`" for example in field.examples)
        # A pattern makes the examples the choices (DEVICE's); otherwise they are one value of many.
        return shown if any(getattr(rule, "pattern", None) for rule in field.metadata) else f"e.g. {shown}"
    return "a path" if variable.endswith(("_PATH", "_DIR")) else "text"


def _value(value: Any) -> str:
    return "null" if value is None else f"`{value}`"


def _flag(value: bool) -> str:
    return "`1`" if value else "`0`"


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) and value >= 10_000 else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a page differs; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for page in PAGES:
        text = page.read_text()
        updated = update(text)
        if updated == text:
            continue
        stale.append(page.relative_to(ROOT))
        if not args.check:
            page.write_text(updated)
    if args.check and stale:
        names = ", ".join(str(name) for name in stale)
        print(f"{names}: generated tables differ from the fields: run python -m dev.docs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
