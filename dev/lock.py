"""The image's lock and the test tools' lock, kept in step with their requirements, and the venv held to both.

`requirements.lock` holds every Python package the image installs, transitive ones included, with hashes, for the
image's Python 3.12 on x86_64 Linux (uv resolves it from requirements.txt: scripts/lock.sh). The test venv is
that lock itself (torch's CUDA build included: it runs on a CPU) plus `requirements-dev.lock`: the test tools of
requirements-dev.txt and what they need beyond the image's lock, resolved under it and hashed, so a test tool can
never move a package the image ships. scripts/setup_venv.sh syncs the venv to exactly the two.

    python -m dev.lock           # write requirements-dev.lock (uv, PyPI), then check
    python -m dev.lock --check   # exit 1 when the requirements, the locks or this interpreter's packages disagree
    python -m dev.lock --block NAME  # one locked package's pin and hashes (setup_venv.sh bootstraps uv with it)
    python -m dev.lock --carried # the lock's part the GPU check carries (scripts/gpu_wheels.sh), to stdout
    python -m dev.lock --versions  # every locked package: the version this interpreter runs, and where from
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS, LOCK = ROOT / "requirements.txt", ROOT / "requirements.lock"
DEV_REQUIREMENTS, DEV_LOCK = ROOT / "requirements-dev.txt", ROOT / "requirements-dev.lock"
# torch's CUDA build and what only it brings: a lent GPU machine has its own (DEVICE_PROVIDES).
CUDA_ONLY = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
# What a lent GPU machine brings itself (Python 3.12, torch 2.11.0+cu130, as the H200 runs recorded): torch's CUDA
# build and what installing torch brings, plus the largest wheels the carry (64 MiB with the tree) cannot also hold
# and the GPU check does not import (boto3's set: bucket delivery; cryptography, uvloop: runpod's pod and HTTP
# extras; hf-xet: downloads; opencv, 64 MB alone: a ControlNet job's canny edges). `--versions` prints the device's
# version of each beside the lock's.
DEVICE_PROVIDES = re.compile(r"^(numpy|scipy|pillow|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|"
                             r"typing-extensions|setuptools|boto3|botocore|s3transfer|jmespath|cryptography|"
                             r"uvloop|hf-xet|opencv-python-headless)$")
SOURCE_HASH = re.compile(r"^# (\S+) sha256: ([0-9a-f]{64})$", re.M)
# uv pip compile's target: the image's interpreter and platform, whatever machine locks.
TARGET = ("--python-version", "3.12", "--python-platform", "x86_64-manylinux_2_28")


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """`name==version` lines of a requirements-format text, by normalised name."""
    return {normalise(m.group(1)): m.group(2) for line in text.splitlines() if (m := PIN.match(line.strip()))}


def file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def blocks(lock_text: str) -> dict[str, str]:
    """Each package's block of a lock (its pin, hashes and `# via` lines), by normalised name."""
    return {normalise(m.group(1)): block.rstrip("\n") + "\n"
            for block in re.split(r"\n(?=[A-Za-z0-9])", lock_text) if (m := PIN.match(block))}


def dev_lock_text(compiled: str, lock_text: str) -> str:
    """requirements-dev.lock from uv's resolution of requirements-dev.txt under the image's lock: only what the
    image's lock does not hold, each with its hashes."""
    image = pins(lock_text)
    moved = {name: version for name, version in pins(compiled).items() if name in image and image[name] != version}
    if moved:
        raise ValueError(f"the test tools need other versions of the image's packages: {moved}")
    head = (f"# The test tools' packages beyond requirements.lock, resolved under it by `python -m dev.lock` (uv pip\n"
            f"# compile for Python 3.12 on x86_64 Linux, with hashes); scripts/setup_venv.sh installs both locks.\n"
            f"# requirements-dev.txt sha256: {file_hash(DEV_REQUIREMENTS)}\n"
            f"# requirements.lock sha256: {file_hash(LOCK)}\n")
    return head + "".join(block for name, block in sorted(blocks(compiled).items()) if name not in image)


def compile_dev_lock() -> str:
    """uv's resolution of requirements-dev.txt, constrained to the image's lock (needs PyPI)."""
    uv = Path(sys.executable).with_name("uv")
    return subprocess.run([str(uv), "--no-python-downloads", "pip", "compile", str(DEV_REQUIREMENTS), "-c", str(LOCK),
                           *TARGET, "--generate-hashes", "--no-header", "--quiet"],
                          check=True, capture_output=True, text=True).stdout


def carried_lock(lock_text: str) -> str:
    """The lock without what the GPU machine provides: the wheels scripts/gpu_wheels.sh fetches, hashes kept."""
    kept = [block for name, block in sorted(blocks(lock_text).items())
            if not CUDA_ONLY.match(name) and not DEVICE_PROVIDES.match(name)]
    return "# The part of requirements.lock the GPU check carries (python -m dev.lock --carried).\n" + "".join(kept)


def same_version(installed: str, locked: str) -> bool:
    """An installed version is the locked one: torch's local tag (+cu130) names the build, not another version."""
    return installed.split("+")[0] == locked


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
        rows.append((name, version, running if same_version(running, version) else f"{running} DIFFERS", where))
    return rows


def _lock_problems(lock: Path, sources: tuple[Path, ...], wanted: dict[str, str], beside: dict[str, str],
                   remake: str) -> list[str]:
    """How a lock disagrees with the files it was made from: their recorded hashes, the pins of `wanted` (found in
    the lock or in `beside`, the lock installed with it), a package without a hash."""
    if not lock.is_file():
        return [f"{lock.name} is missing: {remake}"]
    text = lock.read_text()
    recorded = dict(SOURCE_HASH.findall(text))
    found = [f"{lock.name} was not made from this {source.name}: {remake}" for source in sources
             if recorded.get(source.name) != file_hash(source)]
    locked = {**beside, **pins(text)}
    found += [f"{sources[0].name} pins {name}=={version}, the lock has {locked.get(name, 'nothing')}"
              for name, version in wanted.items() if locked.get(name) != version]
    held = blocks(text)
    if not held or any("--hash=sha256:" not in block for block in held.values()):
        found.append(f"{lock.name} has a package without a hash")
    return found


def problems() -> list[str]:
    """Every way the requirements and the two locks disagree, in words."""
    image = pins(LOCK.read_text())
    found = _lock_problems(LOCK, (REQUIREMENTS,), pins(REQUIREMENTS.read_text()), {}, "run bash scripts/lock.sh")
    found += _lock_problems(DEV_LOCK, (DEV_REQUIREMENTS, LOCK), pins(DEV_REQUIREMENTS.read_text()), image,
                            "run python -m dev.lock")
    if DEV_LOCK.is_file() and (repeated := sorted(set(pins(DEV_LOCK.read_text())) & set(image))):
        found.append(f"requirements-dev.lock repeats the image's packages {repeated}: run python -m dev.lock")
    return found


def venv_drift() -> list[str]:
    """Every way this interpreter's packages differ from the two locks: the image's Python, each locked package at
    its version (torch's build tag aside), nothing installed that neither lock holds."""
    import importlib.metadata
    import sysconfig

    found = [] if sys.version_info[:2] == (3, 12) else [f"Python {sys.version.split()[0]}, not the image's 3.12"]
    wanted = {**pins(LOCK.read_text()), **pins(DEV_LOCK.read_text())}
    # The interpreter's own package folders, not sys.path: importing setuptools (torch's C++ builds do) appends its
    # vendored packages' folder, whose metadata would read as installed packages.
    folders = sorted({sysconfig.get_path("purelib"), sysconfig.get_path("platlib")})
    installed = {normalise(dist.metadata["Name"]): dist.version
                 for dist in importlib.metadata.distributions(path=folders)}
    for name, version in sorted(wanted.items()):
        if name not in installed:
            found.append(f"{name}=={version} is locked but not installed")
        elif not same_version(installed[name], version):
            found.append(f"{name} is {installed[name]}, the lock has {version}")
    found += [f"{name} {installed[name]} is installed but in neither lock"
              for name in sorted(set(installed) - set(wanted))]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when they disagree; write nothing")
    parser.add_argument("--block", metavar="NAME", help="print one locked package's pin and hashes")
    parser.add_argument("--carried", action="store_true", help="print the lock's part the GPU check carries")
    parser.add_argument("--versions", action="store_true", help="print each locked package's running version")
    args = parser.parse_args(argv)
    if args.block:
        found = {**blocks(LOCK.read_text()), **blocks(DEV_LOCK.read_text())}.get(normalise(args.block))
        if found is None:
            print(f"{args.block} is in neither lock", file=sys.stderr)
            return 1
        print(found, end="")
        return 0
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
        DEV_LOCK.write_text(dev_lock_text(compile_dev_lock(), LOCK.read_text()))
    found = problems() + (venv_drift() if args.check else [])
    for problem in found:
        print(problem, file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
