"""The image's CUDA flavours: which torch build, which base image, which lock, which RunPod hosts.

A host runs an image whose CUDA runtime is at most what its NVIDIA driver supports; RunPod reports each host by
that CUDA version and an endpoint's `allowedCudaVersions` keeps it to the hosts listed. torch's wheels bring their
own CUDA libraries, so the flavour is torch's build, and the base image matches it.

`Dockerfile.volume_optimized` has one stage per flavour (`FROM <base> AS <name>`) and `ARG CUDA_FLAVOUR` picks
one; `.runpod/hub.json`, `.runpod/tests.json` and the deploy script's default take the default flavour's
`allowed_cuda_versions` from here; tests check all of them against this table.

    python -m dev.cuda_flavours FLAVOUR   # the lock file and uv's extra arguments for scripts/lock.sh
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class CudaFlavour:
    name: str
    base_image: str
    lock: str
    # uv pip compile's arguments for this torch build: PyPI's torch 2.11.0 is the CUDA 13.0 one.
    uv_args: tuple[str, ...]
    min_driver: str
    # RunPod's host CUDA versions the image runs on: the build's own and every newer one RunPod lists.
    allowed_cuda_versions: tuple[str, ...]
    status: str


FLAVOURS = {
    "cu130": CudaFlavour(
        "cu130", "nvidia/cuda:13.0.1-runtime-ubuntu24.04", "requirements.lock", (), "580", ("13.0",),
        "locked here from PyPI; every GPU figure in benchmarks/RESULTS.md is of this build (H200)"),
    "cu128": CudaFlavour(
        "cu128", "nvidia/cuda:12.8.1-runtime-ubuntu24.04", "requirements-cu128.lock", ("--torch-backend", "cu128"),
        "570", ("12.8", "12.9", "13.0"),
        "declared, not locked: its torch build is only on download.pytorch.org, which this project's build machine "
        "cannot reach (`bash scripts/lock.sh cu128` where it can); never run on a GPU"),
}
# The most hosts among the flavours that are locked and measured: cu128 would reach hosts with drivers 570-579
# too (RunPod's fleet minimum was CUDA 12.4 at the end of 2025), once it is locked and run.
DEFAULT = "cu130"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in FLAVOURS:
        print(f"usage: python -m dev.cuda_flavours {{{','.join(FLAVOURS)}}}", file=sys.stderr)
        return 2
    flavour = FLAVOURS[args[0]]
    print(" ".join((flavour.lock, *flavour.uv_args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
