"""Say whether a network volume holds a servable PhotonicFusion SDXL pipeline, and if not, exactly why.

A worker that finds out at load time (or worse, at the first job) that a file is missing or cut
short costs a cold start and a failed request; the operator then has to guess. This check reads
only directory listings, JSON configs and safetensors headers, so it takes well under a second even
on a full-size volume, and names the path at fault; every read is guarded, so no file can crash it. It
refuses what the loader would refuse, down to each tensor's name and shape (sdxl_worker/weights/
architecture.py). Without --tensors it never imports torch, so the container's HEALTHCHECK and the
operator's shell can run it cheaply.

    python volume_check.py [PATH] [--json] [--tensors] [--lora-dir DIR] [--embeddings-dir DIR] [--controlnet-dir DIR]

PATH defaults to $MODEL_PATH, else /runpod-volume/photonicfusion-sdxl; a Hugging Face repo id ORG/NAME[@REVISION]
is looked for in $MODEL_CACHE (RunPod's cached models, /runpod-volume/huggingface-cache/hub), then in HF_HOME's
cache. Exit 0: loadable; 1: incomplete or corrupt; 2: the volume, the model folder or the cached repo is missing.
The LoRAs in $LORA_DIR (else /runpod-volume/loras), the textual-inversion embeddings in $EMBEDDINGS_DIR (else
/runpod-volume/embeddings) and the ControlNets in $CONTROLNET_DIR (else /runpod-volume/controlnets) are listed
after the model, a broken one with its reason; they never change the exit code: a job that uses a broken one gets
that reason, and every other job is served. With MODELS set (several models) and no PATH, each model is checked and
named; the exit code is the worst of theirs, and the add-ons are checked against the first.
"""

from __future__ import annotations

import argparse
import json
import sys

from sdxl_worker.sentences import without_packages

try:
    from sdxl_worker.controlnets.files import DEFAULT_CONTROLNET_DIR
    from sdxl_worker.embeddings.files import DEFAULT_EMBEDDINGS_DIR
    from sdxl_worker.logs import configure_logging
    from sdxl_worker.loras.files import DEFAULT_LORA_DIR
    from sdxl_worker.settings import DEFAULT_MODEL_PATH, SettingsError, model_sources, setting_from_env
    from sdxl_worker.volume.check import check_controlnets, check_embeddings, check_loras, check_volume
    from sdxl_worker.volume.report import ControlNetReport, EmbeddingReport, LoraReport
except ModuleNotFoundError as missing:  # started by a Python without the worker's packages
    raise SystemExit(without_packages(missing, "volume_check.py")) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help=f"model folder, or a Hub id ORG/NAME[@REVISION] in a model cache "
                        f"(default: $MODEL_PATH or {DEFAULT_MODEL_PATH})")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--tensors", action="store_true", help="also compare the tensors of components whose config "
                        "is not SDXL base 1.0's with the model built from it (imports torch: seconds, not 0.1 s)")
    parser.add_argument("--lora-dir", help=f"LoRA folder (default: $LORA_DIR or {DEFAULT_LORA_DIR})")
    parser.add_argument("--embeddings-dir", help=f"embeddings folder (default: $EMBEDDINGS_DIR or "
                                                 f"{DEFAULT_EMBEDDINGS_DIR})")
    parser.add_argument("--controlnet-dir", help=f"ControlNet folder (default: $CONTROLNET_DIR or "
                                                 f"{DEFAULT_CONTROLNET_DIR})")
    args = parser.parse_args(argv)
    configure_logging("WARNING", stream=sys.stderr)  # --tensors imports the model libraries: their notices quieted
    try:
        models = setting_from_env("models") if args.path is None else None
        sources = model_sources(models) if models else {"": args.path or setting_from_env("model_path")}
    except (SettingsError, ValueError) as exc:
        print(f"❌ {exc}")
        return 1
    reports = {name: check_volume(source, tensors=args.tensors, model_cache=setting_from_env("model_cache"))
               for name, source in sources.items()}
    report = next(iter(reports.values()))
    model_path = report.model_path  # a Hub id's cached snapshot: the add-ons are checked against its configs
    try:
        loras: LoraReport | str = check_loras(args.lora_dir or setting_from_env("lora_dir"),
                                              setting_from_env("lora_max_mb"))
    except SettingsError as exc:  # the worker answers jobs with it; the model's verdict stands
        loras = f"LoRAs not checked: {exc}"
    try:
        embeddings: EmbeddingReport | str = check_embeddings(
            args.embeddings_dir or setting_from_env("embeddings_dir"), model_path,
            setting_from_env("embedding_max_vectors"))
    except SettingsError as exc:
        embeddings = f"Embeddings not checked: {exc}"
    try:
        controlnets: ControlNetReport | str = check_controlnets(
            args.controlnet_dir or setting_from_env("controlnet_dir"), model_path)
    except SettingsError as exc:
        controlnets = f"ControlNets not checked: {exc}"
    folders = {"loras": loras, "embeddings": embeddings, "controlnets": controlnets}
    add_ons = {key: value if isinstance(value, str) else value.to_dict() for key, value in folders.items()}
    if args.json:
        checked = ({"models": {name: each.to_dict() for name, each in reports.items()}} if models else
                   report.to_dict())
        print(json.dumps({**checked, **add_ons}, indent=2))
    else:
        for name, each in reports.items():
            if models:
                print(f"model {name!r} (MODELS):")
            print(each.render())
        for value in folders.values():
            print(value if isinstance(value, str) else value.render())
    return max(each.exit_code for each in reports.values())


if __name__ == "__main__":
    sys.exit(main())
