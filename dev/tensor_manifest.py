"""Write the manifest of SDXL base 1.0's tensor names, shapes and naming rules (sdxl_worker/weights/architecture.py).

    python -m dev.tensor_manifest     # rewrite sdxl_worker/assets/sdxl-base-1.0/tensors.json

Built from the shipped configs on the meta device with the pinned libraries; a test fails when the shipped
manifest differs from what this builds.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from dev.synthetic_volume import component_config
from sdxl_worker.logs import configure_logging
from sdxl_worker.prepare.pipeline_files import ASSETS, MODEL_COMPONENTS
from sdxl_worker.weights.architecture import MANIFEST, expected_from_meta, shape_config


def build_manifest() -> dict[str, Any]:
    index = json.loads((ASSETS / "model_index.json").read_text())
    manifest = {}
    for component in MODEL_COMPONENTS:
        library, class_name = index[component]
        config = component_config("full", component)
        expected = expected_from_meta(library, class_name, config)
        manifest[component] = {"class": class_name, "config": shape_config(config),
                               "names": expected.rules.to_dict(),
                               "tensors": {name: list(shape) for name, shape in sorted(expected.shapes.items())}}
    return manifest


def main() -> int:
    configure_logging("WARNING", stream=sys.stderr)  # without the libraries' import notices
    MANIFEST.write_text(json.dumps(build_manifest(), separators=(",", ":"), sort_keys=True) + "\n")
    print(MANIFEST)
    return 0


if __name__ == "__main__":
    sys.exit(main())
