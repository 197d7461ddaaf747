"""Shared fixtures: tiny synthetic volumes (built once per session, copied per test), a network guard, and the
session's write guard (tests/write_guard.py)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import pytest
from hypothesis.configuration import set_hypothesis_home_dir

from dev.synthetic_volume import LAYOUTS, build_volume
from tests.helpers import ROOT, cpu_settings, in_ci, start_s3_server, stop
from tests.write_guard import WriteGuard, isolate

# Everything a session writes besides pytest's own tmp_path folders (kept for failed tests only, last run only:
# pyproject.toml) lives in one folder removed when the session ends: HOME, hypothesis' caches, torch's compile
# caches, and the temp folder of the session and the processes it starts (torch puts its precompiled headers
# under the temp folder, whatever TORCHINDUCTOR_CACHE_DIR says).
SESSION = Path(tempfile.mkdtemp(prefix="tests-session-"))
# Hypothesis keeps no example database, and its caches go to the session folder: not into the repository.
hypothesis.settings.register_profile("no-database", database=None)
hypothesis.settings.load_profile("no-database")
set_hypothesis_home_dir(str(SESSION / "hypothesis"))
# The tests compile the tiny UNet and VAE decoder for the CPU several times (COMPILE=1, the AOT packages, the
# benchmark's compiled scenario). Inductor's SIMD kernels for the CPU cost g++ about twice the time of plain C++
# ones (the whole tiny UNet: 67.6 s against 34.9 s here), and no GPU worker runs either (its kernels are Triton):
# the tests, and the processes they start, compile plain ones. Read when torch's inductor is imported.
os.environ.setdefault("TORCHINDUCTOR_VEC_ISA_OK", "0")


def is_xdist_worker(config: pytest.Config) -> bool:
    """A test process of pytest-xdist: the process that started it guards the whole run, and set HOME, the temp
    folder and the caches before it started the workers, which inherit them."""
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    workers = getattr(config.option, "numprocesses", None)
    if not is_xdist_worker(config) and isinstance(workers, int) and workers > 1:
        # One torch thread a test process (and the processes it starts): as many processes as cores, none
        # oversubscribed. Set before the workers start, which inherit it.
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_sessionstart(session: pytest.Session) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is not None:
        factory.getbasetemp()  # pytest's folders stay where its retention finds them
    if is_xdist_worker(session.config):
        return
    (SESSION / "tmp").mkdir()
    os.environ["TMPDIR"] = tempfile.tempdir = str(SESSION / "tmp")
    guard = WriteGuard(ROOT, home=SESSION / "home")
    isolate(guard, SESSION / "caches")
    session.config.stash[GUARD] = guard


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    guard = session.config.stash.get(GUARD, None)
    violations = guard.violations() if guard else []
    if violations:
        print("\nwrite guard: the tests wrote outside their temp folders:\n  " + "\n  ".join(violations[:50]))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    shutil.rmtree(SESSION, ignore_errors=True)


GUARD = pytest.StashKey[WriteGuard]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that start processes or servers first: the two test processes take the longest ones while the
    many short ones are still left to even out their ends."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# Modules whose tests share nothing costly (each starts its own process): spread test by test.
SPREAD_MODULES = {"tests/benchmarks/test_benchmark.py"}


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """A module's tests to one test process, so that its module fixtures (a compile, a server, a shared run, a
    loaded worker) run once; modules handed out one at a time, in the order above, to whichever process is free.
    (xdist's `loadgroup` marks do nothing under pytest 9.2: it renames `item._nodeid`, which pytest no longer
    reads.) An explicit `--dist` other than the default keeps xdist's own."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return nodeid if module in SPREAD_MODULES else module

    config.option.loadscopereorder = False  # keep the order above, not the largest module first
    return ModuleScheduling(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """In CI (.ci/run sets CI=true) a skip is a failure saying what was missing: a guarantee that needs a real
    component (FUSE, a tmpfs mount, glibc) is never reported green untested."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every component the tests need must be present: {reason}"


@pytest.fixture(scope="session")
def tiny_volume_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both variants plus the flax/onnx/single-file decoys a real volume carries; never modified."""
    return build_volume(tmp_path_factory.mktemp("source") / "photonicfusion-sdxl", "tiny", extras=True)


@pytest.fixture(scope="session")
def sharded_volume_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Standard weights only, every model over 1 MB split into shards with an index."""
    return build_volume(tmp_path_factory.mktemp("sharded") / "photonicfusion-sdxl", "tiny", ["standard"],
                        shard_bytes=1_000_000)


def private_copy(source: Path, tmp_path: Path) -> Path:
    """A copy of a session volume at <tmp>/runpod-volume/photonicfusion-sdxl, free to damage."""
    target = tmp_path / "runpod-volume" / "photonicfusion-sdxl"
    shutil.copytree(source, target)
    return target


@pytest.fixture
def volume(tiny_volume_source: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny volume, free to damage."""
    return private_copy(tiny_volume_source, tmp_path)


@pytest.fixture
def sharded_volume(sharded_volume_source: Path, tmp_path: Path) -> Path:
    return private_copy(sharded_volume_source, tmp_path)


@pytest.fixture(scope="session", params=LAYOUTS)
def layout_volume_source(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny volume (both variants, the same weights as tiny_volume_source) named as each kind of file users
    bring: today's libraries' names, the published SDXL repositories' (transformers 4 text encoders, a sharded
    standard UNet), and older conversions' (stored position_ids, deprecated VAE attention names)."""
    return build_volume(tmp_path_factory.mktemp(f"layout-{request.param}") / "photonicfusion-sdxl", "tiny",
                        layout=request.param)


@pytest.fixture
def layout_volume(layout_volume_source: Path, tmp_path: Path) -> Path:
    """A private copy of one layout's volume, free to damage."""
    return private_copy(layout_volume_source, tmp_path)


@pytest.fixture(scope="session")
def fp32_volume_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Standard (float32) weights only, one file per model: the volume this project was born from."""
    return build_volume(tmp_path_factory.mktemp("fp32") / "photonicfusion-sdxl", "tiny", ["standard"])


@pytest.fixture
def fp32_volume(fp32_volume_source: Path, tmp_path: Path) -> Path:
    return private_copy(fp32_volume_source, tmp_path)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto's) on loopback for the session, with a bucket named "images"."""
    import boto3

    process, endpoint = start_s3_server(tmp_path_factory.mktemp("s3") / "moto.log")
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="images")
    yield endpoint
    stop(process)


S3_CREDENTIALS = {"BUCKET_ACCESS_KEY_ID": "AKIAWORKERTEST", "BUCKET_SECRET_ACCESS_KEY": "worker-secret-value",
                  "BUCKET_NAME": "images", "BUCKET_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def bucket_env(s3_server: str) -> dict[str, str]:
    """The worker's bucket variables for the session's S3 server (never modified: tests spread it)."""
    return {"BUCKET_ENDPOINT_URL": s3_server, **S3_CREDENTIALS}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every outbound connection or name lookup fail loudly, and record the attempts."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[:2]))
        raise AssertionError(f"network access attempted: {args[:2]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture(scope="session")
def worker(tiny_volume_source: Path):
    """One worker loaded on the CPU for the session, as the handler starts it (warm-up included)."""
    from sdxl_worker.serving.worker import Worker

    started = Worker.start(cpu_settings(tiny_volume_source), warmup=True)
    assert started.pipe is not None, started.startup_error
    return started
