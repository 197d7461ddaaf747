"""Make a network volume right for the worker, offline, from any pod with the volume attached (CPU pods too).

    python prepare_volume.py add-fp16 MODEL_DIR [--drop-standard] [--dry-run] [--json] [--progress]
    python prepare_volume.py from-single-file CHECKPOINT.safetensors MODEL_DIR [--config DIR] [--vae DIR]
                                             [--dry-run] [--json] [--progress]
    python prepare_volume.py convert-bin MODEL_DIR [--dry-run] [--json] [--progress]
    python prepare_volume.py plan MODEL_DIR [--json]
    python prepare_volume.py compile MODEL_DIR [--shapes WxH,...] [--device cuda|cpu] [--json]

`add-fp16` writes the fp16 variant of every model component whose fp16 set is missing or broken, from its
standard files (sdxl_worker/prepare/fp16_set.py): without it every cold start reads twice the bytes.
`--drop-standard` then deletes the standard files, only after re-reading every fp16 tensor and finding it equal
to its source cast. `from-single-file` converts an SDXL single-file checkpoint into a new diffusers folder with
the fp16 variant (sdxl_worker/prepare/single_file.py). `convert-bin` writes safetensors files from components'
pickled `.bin` weights, which the worker never loads, refusing any pickle that is not plain tensors
(sdxl_worker/prepare/bin_weights.py). `plan` (and `--dry-run`) says what would be written, how
many bytes and the free space, and writes nothing. `compile` compiles the UNet ahead of time for the worker's torch,
device and dtype, one package a size (sdxl_worker/prepare/compile.py): a worker with AOT=auto (the default) then
runs those sizes compiled with no compiling at start.

Before the first byte, the free space is checked. Every file is written under a hidden temporary name, fsynced
and renamed into place (an index last; a new folder is renamed as a whole), so a crash or kill at any moment
leaves the volume as servable as before, and a rerun removes the leftovers and finishes. Both commands end with
the volume check's verdict and the load plan the worker will use.

Exit 0: done, or nothing to do; 1: failed, nothing half-written visible; 2: bad usage or path.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from sdxl_worker.sentences import without_packages

try:
    from sdxl_worker.logs import configure_logging
    from sdxl_worker.prepare.commands import add_fp16, convert_bin, from_single_file, progress_bar
    from sdxl_worker.prepare.compile import compile_packages, parse_shapes
    from sdxl_worker.prepare.fp16_set import PrepareError
    from sdxl_worker.prepare.pipeline_files import ConfigFolderError
except ModuleNotFoundError as missing:  # started by a Python without the worker's packages
    raise SystemExit(without_packages(missing, "prepare_volume.py")) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add-fp16", help="write the fp16 set where it is missing or broken")
    add.add_argument("model_dir", type=Path)
    add.add_argument("--drop-standard", action="store_true",
                     help="then delete the standard files, after verifying every fp16 tensor against them")
    convert = commands.add_parser("from-single-file", help="convert an SDXL single-file checkpoint")
    convert.add_argument("checkpoint", type=Path)
    convert.add_argument("model_dir", type=Path)
    convert.add_argument("--config", type=Path, help="a diffusers SDXL folder whose configs and tokenizers to use "
                         "(default: SDXL base 1.0's, shipped)")
    convert.add_argument("--vae", type=Path, help="a diffusers VAE folder, for a checkpoint without a VAE "
                         "(or to replace its own)")
    bins = commands.add_parser("convert-bin", help="write safetensors from components' .bin weights")
    bins.add_argument("model_dir", type=Path)
    plan = commands.add_parser("plan", help="what add-fp16 would write; writes nothing")
    plan.add_argument("model_dir", type=Path)
    aot = commands.add_parser("compile", help="compile the UNet ahead of time for this torch and device")
    aot.add_argument("model_dir", type=Path)
    aot.add_argument("--shapes", default="1024x1024", help="image sizes WxH, comma-separated (default 1024x1024)")
    aot.add_argument("--device", choices=("cuda", "cpu"), default=None,
                     help="where the worker runs (default: cuda when there is one, else cpu)")
    for sub in (add, convert, bins, plan, aot):
        sub.add_argument("--json", action="store_true", help="print a machine-readable summary")
    for sub in (add, convert, bins):
        sub.add_argument("--dry-run", action="store_true", help="say what would be written; write nothing")
        sub.add_argument("--progress", action="store_true", default=None,
                         help="show the progress bar even when stderr is not a terminal")
    args = parser.parse_args(argv)
    configure_logging("WARNING", stream=sys.stderr)  # stdout is the summary (JSON with --json)
    progress = progress_bar(getattr(args, "progress", None))
    try:
        if args.command == "from-single-file":
            summary = from_single_file(args.checkpoint, args.model_dir, config_dir=args.config, vae_dir=args.vae,
                                       dry_run=args.dry_run, progress=progress)
        elif args.command == "compile":
            try:
                shapes = parse_shapes(args.shapes)
            except ValueError as exc:
                parser.error(f"--shapes: {exc}")
            summary = compile_packages(args.model_dir, shapes, args.device or default_device())
        elif args.command == "convert-bin":
            summary = convert_bin(args.model_dir, dry_run=args.dry_run, progress=progress)
        else:
            dry_run = args.command == "plan" or args.dry_run
            summary = add_fp16(args.model_dir, drop_standard=getattr(args, "drop_standard", False), dry_run=dry_run,
                               progress=progress)
    except (PrepareError, ConfigFolderError) as exc:
        code = exc.exit_code if isinstance(exc, PrepareError) else 2
        if args.json:
            print(json.dumps({"command": args.command, "status": "failed", "error": str(exc), "exit_code": code}))
        else:
            print(f"❌ {exc}", file=sys.stderr)
        return code
    if args.json:
        print(json.dumps({**asdict(summary), "exit_code": summary.exit_code}, indent=2))
    else:
        print(summary.render())
    return summary.exit_code


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    sys.exit(main())

