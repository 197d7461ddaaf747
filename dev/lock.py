"""The image's lock and the CPU venv's constraints, kept in step with requirements.txt.

`requirements.lock` holds every Python package the image installs, transitive ones included, with hashes, for the
image's Python 3.12 on x86_64 Linux (uv resolves it from requirements.txt: scripts/lock.sh). `constraints-cpu.txt`
is the same versions without hashes and without what only torch's CUDA build brings (its CUDA libraries and
triton): the CPU test venv installs requirements-dev.txt under it, so the tests run the image's versions of
everything the two share, torch's CPU build aside.

    python -m dev.lock           # write constraints-cpu.txt from requirements.lock
    python -m dev.lock --check   # exit 1 when requirements.txt, the lock and the constraints disagree
    python -m dev.lock --carried # the lock's part the GPU check carries (scripts/gpu_wheels.sh), to stdout
    python -m dev.lock --versions  # every locked package: the version this interpreter runs, and where from
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS, LOCK, CONSTRAINTS = ROOT / "requirements.txt", ROOT / "requirements.lock", ROOT / "constraints-cpu.txt"
# Only torch's CUDA build needs these; the CPU venv's torch is 2.13.0's CPU build (requirements-cpu.txt).
CUDA_ONLY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
# Locked at releases for Python >= 3.12 (the image's); the CPU venv runs this machine's Python 3.11, where pip takes
# their newest 3.11 releases (networkx 3.6.1, scipy 1.17.1 seen here). Neither is imported by the worker's code.
PYTHON_312_ONLY = ("networkx", "scipy")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
# What a lent GPU machine brings itself (Python 3.12, torch 2.11.0+cu130, as the H200 runs recorded): torch's CUDA
# build and what installing torch brings, plus the largest wheels the carry (64 MiB with the tree) cannot also hold
# and the GPU check does not import (boto3's set: bucket delivery; cryptography, uvloop: runpod's pod and HTTP
# extras; hf-xet: downloads; opencv, 64 MB alone: a ControlNet job's canny edges). `--versions` prints the device's
# version of each beside the lock's.
DEVICE_PROVIDES = re.compile(r"^(numpy|scipy|pillow|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|"
                             r"typing-extensions|setuptools|boto3|botocore|s3transfer|jmespath|cryptography|"
                             r"uvloop|hf-xet|opencv-python-headless)$")
SOURCE_HASH = re.compile(r"^# requirements\.txt sha256: ([0-9a-f]{64})$", re.M)


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """`name==version` lines of a requirements-format text, by normalised name."""
    return {normalise(m.group(1)): m.group(2) for line in text.splitlines() if (m := PIN.match(line.strip()))}


def source_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def constraints_text(lock_text: str) -> str:
    shared = {name: version for name, version in sorted(pins(lock_text).items())
              if not CUDA_ONLY.match(name) and name not in PYTHON_312_ONLY}
    head = ("# Generated from requirements.lock by `python -m dev.lock` (scripts/lock.sh): the image's versions for\n"
            "# the CPU venv, without torch's CUDA build, what only it needs, and the releases for Python >= 3.12 only\n"
            f"# ({', '.join(PYTHON_312_ONLY)}).\n")
    return head + "".join(f"{name}=={version}\n" for name, version in shared.items())


def blocks(lock_text: str) -> dict[str, str]:
    """Each package's block of the lock (its pin, hashes and `# via` lines), by normalised name."""
    return {normalise(m.group(1)): block.rstrip("\n") + "\n"
            for block in re.split(r"\n(?=[A-Za-z0-9])", lock_text) if (m := PIN.match(block))}


def carried_lock(lock_text: str) -> str:
    """The lock without what the GPU machine provides: the wheels scripts/gpu_wheels.sh fetches, hashes kept."""
    kept = [block for name, block in sorted(blocks(lock_text).items())
            if not CUDA_ONLY.match(name) and not DEVICE_PROVIDES.match(name)]
    return "# The part of requirements.lock the GPU check carries (python -m dev.lock --carried).\n" + "".join(kept)


def version_rows(lock_text: str) -> list[tuple[str, str, str, str]]:
    """(package, locked, this interpreter's, where from) for every locked package, differing ones marked."""
    import importlib.metadata

    rows = []
    for name, version in sorted(pins(lock_text).items()):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            rows.append((name, version, "missing", "-"))
            continue
        running = dist.version
        where = str(dist.locate_file(""))
        same = running.split("+")[0] == version  # torch's local tag (+cu130) names the build, not another version
        rows.append((name, version, running if same else f"{running} DIFFERS", where))
    return rows


def problems() -> list[str]:
    """Every way requirements.txt, the lock and the constraints disagree, in words."""
    lock_text = LOCK.read_text()
    found = []
    recorded = SOURCE_HASH.search(lock_text)
    if recorded is None or recorded.group(1) != source_hash():
        found.append("requirements.lock was not made from this requirements.txt: run bash scripts/lock.sh")
    locked = pins(lock_text)
    for name, version in pins(REQUIREMENTS.read_text()).items():
        if locked.get(name) != version:
            found.append(f"requirements.txt pins {name}=={version}, the lock has {locked.get(name, 'nothing')}")
    if "--hash=sha256:" not in lock_text or any(
            "--hash=sha256:" not in block for block in re.split(r"\n(?=[A-Za-z0-9])", lock_text) if PIN.match(block)):
        found.append("requirements.lock has a package without a hash")
    if not CONSTRAINTS.is_file() or CONSTRAINTS.read_text() != constraints_text(lock_text):
        found.append("constraints-cpu.txt differs from requirements.lock: run python -m dev.lock")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when they disagree; write nothing")
    parser.add_argument("--carried", action="store_true", help="print the lock's part the GPU check carries")
    parser.add_argument("--versions", action="store_true", help="print each locked package's running version")
    args = parser.parse_args(argv)
    if args.carried:
        print(carried_lock(LOCK.read_text()), end="")
        return 0
    if args.versions:
        rows = version_rows(LOCK.read_text())
        print("| package | locked | ran with | from |\n| --- | --- | --- | --- |")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        differing = sum("DIFFERS" in running or running == "missing" for _, _, running, _ in rows)
        print(f"{len(rows) - differing} of {len(rows)} locked packages at the lock's version; {differing} not")
        return 0
    if not args.check:
        CONSTRAINTS.write_text(constraints_text(LOCK.read_text()))
    found = problems()
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
