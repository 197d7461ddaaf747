"""The image's Dockerfile holds what the worker needs at run time (Docker itself cannot build here)."""

from __future__ import annotations

import ast
import fnmatch
import re

from dev.cuda_flavours import DEFAULT, FLAVOURS
from tests.helpers import ROOT

DOCKERFILE = (ROOT / "Dockerfile.volume_optimized").read_text()


def _instructions(name: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.split(None, 1)[:1] == [name]]


def test_image_has_the_c_compiler_that_compile_needs() -> None:
    """COMPILE=1: Triton builds its launcher stubs with a C compiler at run time; the CUDA runtime base has none."""
    installs = [cmd for run in _instructions("RUN") for cmd in run.split("&&") if "apt-get install" in cmd]
    packages = {word.split("=")[0] for cmd in installs for word in cmd.split() if not word.startswith("-")}
    assert {"gcc", "g++", "libc6-dev"} <= packages, installs


def test_image_keeps_every_cache_on_the_volume() -> None:
    """The container disk is small and a full one kills the worker: caches belong on the network volume."""
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(_instructions("ENV"))))
    assert env["COMPILE_CACHE_DIR"] == "/runpod-volume/.cache/torch-compile"
    for name in ("HF_HOME", "TORCH_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert env[name].startswith("/runpod-volume/"), (name, env[name])
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"


def test_image_copies_every_local_module_the_handler_and_tools_import() -> None:
    """The worker, its HEALTHCHECK and prepare_volume.py (run from a pod with the image) find all they import."""
    copied = {word for cmd in _instructions("COPY") if not cmd.startswith("--from") for word in cmd.split()[:-1]}
    seen: set[str] = set()
    pending = ["handler_volume_optimized", "volume_check", "prepare_volume"]
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        path = ROOT / (module.replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            pending += [n for n in names if (ROOT / (n.replace(".", "/") + ".py")).exists()]
    allowed = set((ROOT / ".dockerignore").read_text().split())
    for module in seen:
        top = module.split(".")[0]
        name = f"{top}.py" if (ROOT / f"{top}.py").exists() else top
        assert name in copied, f"{module} is not copied into the image: {copied}"
        assert {f"!{name}", f"!{name}/"} & allowed, f"{module} is excluded by .dockerignore"
    assert re.search(r'CMD \["python", "-u", "handler_volume_optimized.py"\]', DOCKERFILE)


def test_every_file_the_image_copies_passes_the_dockerignore() -> None:
    """A source .dockerignore leaves out is missing from the build context: `docker build` fails at its COPY."""
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().split() if line.startswith("!")]
    for copy in _instructions("COPY"):
        if copy.startswith("--from"):
            continue
        for source in copy.split()[:-1]:
            matched = sorted(ROOT.glob(source))
            assert matched, f"COPY {source}: nothing in the repository matches"
            for path in matched:
                name = path.relative_to(ROOT).as_posix()
                assert any(fnmatch.fnmatch(name, pattern) for pattern in allowed), f"{name}: left out by .dockerignore"


def test_each_cuda_flavour_is_a_stage_with_its_base_and_lock() -> None:
    found = re.findall(r"^FROM (\S+) AS (cu\d+)\nENV WORKER_LOCK=(\S+)$", DOCKERFILE, re.M)
    stages = {name: (base, lock) for base, name, lock in found}
    assert stages == {name: (f.base_image, f.lock) for name, f in FLAVOURS.items()}
    assert re.search(r"^ARG CUDA_FLAVOUR=(\S+)$", DOCKERFILE, re.M).group(1) == DEFAULT
    assert re.search(r"^FROM \$\{CUDA_FLAVOUR\} AS worker$", DOCKERFILE, re.M)
    assert (ROOT / FLAVOURS[DEFAULT].lock).is_file()
    # The base's CUDA is the torch build's: cu130 on nvidia/cuda:13.0.x.
    for name, flavour in FLAVOURS.items():
        assert flavour.base_image.startswith(f"nvidia/cuda:{name[2:-1]}.{name[-1]}."), flavour.base_image
        assert flavour.allowed_cuda_versions[0] == f"{name[2:-1]}.{name[-1]}"


def test_a_baked_model_is_a_stage_that_checks_the_folder_it_serves() -> None:
    """`--target baked --build-context model=FOLDER`: the folder copied where MODEL_PATH points, the volume check run
    at build time (a broken folder fails the build), the worker's start and HEALTHCHECK inherited unchanged."""
    stage = DOCKERFILE.split("\nFROM worker AS baked\n", 1)[1].split("\nFROM ", 1)[0]
    target = re.search(r"^COPY --from=model \. (\S+)$", stage, re.M).group(1)
    assert re.search(rf"^ENV MODEL_PATH={target}$", stage, re.M)
    assert re.search(r"^RUN python volume_check.py$", stage, re.M)
    assert not re.search(r"^(HEALTHCHECK|CMD|ENTRYPOINT)", stage, re.M)
    assert DOCKERFILE.rstrip().endswith("\nFROM worker"), "the default target stays the worker without a model"
    assert "--target baked --build-context model=" in DOCKERFILE
