"""Load the SDXL pipeline from a volume, offline, in the precision the volume and the device allow: the whole path
(check, plan, load; sdxl_worker/loading/) in one call, for tools and users' scripts.

    from model_loader import load_pipeline
    pipe, record = load_pipeline("/runpod-volume/photonicfusion-sdxl")      # DEVICE auto: CUDA when there is one

    python model_loader.py PATH [--device auto] [--streams N]              # load once, print how, as JSON

Exit 0: loaded; 1: the volume cannot be served or a component would not load, said in one sentence.
"""

from __future__ import annotations

import argparse
import json
import sys

from sdxl_worker.loading.loader import ComponentLoadError, LoadRecord, load_pipeline
from sdxl_worker.loading.plan import LoadPlan, VolumeNotLoadable, plan_load
from sdxl_worker.logs import configure_logging

__all__ = ["ComponentLoadError", "LoadPlan", "LoadRecord", "VolumeNotLoadable", "load_pipeline", "plan_load"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="the model folder, or a Hub id ORG/NAME[@REVISION] in a model cache")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--streams", type=int, help="parallel streams reading the weights (0: the libraries' "
                        "loader; default: by the device and the filesystem, as LOAD_STREAMS=auto)")
    args = parser.parse_args(argv)
    configure_logging("WARNING", stream=sys.stderr)  # stdout is the record (JSON); libraries' notices quieted
    try:
        _, record = load_pipeline(args.path, args.device, streams=args.streams)
    except (VolumeNotLoadable, ComponentLoadError) as exc:
        print(f"❌ {exc}", file=sys.stderr)
        return 1
    print(json.dumps(record.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
