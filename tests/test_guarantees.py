"""What the worker this replaces got wrong, proven impossible here: tests that fail if a guarantee breaks.

- no network: the whole worker (start, --test, jobs through runpod's local API) runs in a network
  namespace with no route out, with a guard that fails and records any outbound attempt;
- no container-disk writes: strace and an audit hook see every file opened for writing;
- bad input of any shape gets a one-sentence error (property-based fuzzing), never an exception;
- a soak of mixed jobs: no HTTP 500, every valid job decodes, memory growth bounded and printed;
- no memory kept from one job to the next (RSS with the allocator's free lists handed back);
- faults: files removed or truncated after start, SIGTERM during a job;
- no job field reaches a path, a shell or eval.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dev.controlnet import write_controlnet
from dev.embedding import write_embedding
from dev.hf_cache import cache_repo
from dev.ip_adapter import write_ip_adapter
from dev.lora import write_lora
from sdxl_worker.contract.job_schema import JobInput, JobInputError, parse_job_input
from sdxl_worker.serving.worker import Worker
from tests.helpers import ROOT, cpu_settings, decode, in_ci, request, start_api, stop

GUARD = ROOT / "tests" / "guard"
pytestmark = pytest.mark.slow


def can_unshare_network() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    return subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True).returncode == 0


def guarded_env(tmp_path: Path, **extra: str) -> tuple[dict[str, str], dict[str, Path]]:
    dirs = {name: tmp_path / name for name in ("home", "tmpdir", "out")}
    for path in dirs.values():
        path.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_", "TORCH"))},
        "PYTHONPATH": f"{GUARD}{os.pathsep}{ROOT}",
        "GUARD_LOG": str(tmp_path / "guard.log"),
        "GUARD_ALLOWED": os.pathsep.join(str(dirs[n]) for n in ("tmpdir", "out")),
        "HOME": str(dirs["home"]),
        "TMPDIR": str(dirs["tmpdir"]),
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra,
    }
    return env, dirs


def test_guard_trips_on_a_download_attempt_and_a_disk_write(tmp_path: Path) -> None:
    """The tripwires are live: without this, the isolation test below could pass for the wrong reason."""
    env, _ = guarded_env(tmp_path)
    code = (
        "import socket\n"
        "try:\n    socket.getaddrinfo('huggingface.co', 443)\nexcept OSError as e:\n    print('refused', e)\n"
        f"open({str(tmp_path / 'home' / 'stray.bin')!r}, 'wb').close()\n"
    )
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "refused" in run.stdout, run.stderr
    log = (tmp_path / "guard.log").read_text()
    assert "resolve" in log and "huggingface.co" in log
    assert str(tmp_path / "home" / "stray.bin") in log


WRITE_CALL = re.compile(
    r'^\d+\s+(openat|creat|mkdir|mkdirat|rename|renameat2?)\((?:AT_FDCWD, )?"([^"]+)"(.*)\)\s+=\s+(-?\d+)'
)


def writes_in_trace(trace: Path, allowed: tuple[str, ...]) -> list[str]:
    """Paths the traced processes opened for writing, created or renamed, outside `allowed`."""
    found = []
    for line in trace.read_text(errors="replace").splitlines():
        match = WRITE_CALL.match(line)
        if not match or match.group(4).startswith("-"):
            continue
        call, path, rest = match.group(1), match.group(2), match.group(3)
        if call == "openat" and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC|O_APPEND", rest):
            continue
        if not os.path.abspath(path).startswith(allowed):
            found.append(f"{call} {path}")
    return found


def test_worker_serves_offline_and_writes_nothing_outside_tmp(tiny_volume_source: Path, tmp_path: Path) -> None:
    """The model is a Hub id in RunPod's model cache (the platform's download, laid out as huggingface_hub lays
    it out); the add-ons are on the volume beside it."""
    cache = tmp_path / "runpod-volume" / "huggingface-cache" / "hub"
    snapshot = cache_repo(tiny_volume_source, cache, "Baileyy/photonicfusion-sdxl")
    env, dirs = guarded_env(tmp_path, MODEL_CACHE=str(cache))
    write_lora(tiny_volume_source, tmp_path / "runpod-volume" / "loras" / "style.safetensors")
    write_embedding(tiny_volume_source, tmp_path / "runpod-volume" / "embeddings" / "grainy.safetensors")
    write_controlnet(tiny_volume_source, tmp_path / "runpod-volume" / "controlnets" / "edges")
    write_ip_adapter(tiny_volume_source, tmp_path / "runpod-volume" / "ip-adapter")
    for variable, folder in (("LORA_DIR", "loras"), ("EMBEDDINGS_DIR", "embeddings"),
                             ("CONTROLNET_DIR", "controlnets"), ("IP_ADAPTER_DIR", "ip-adapter")):
        env[variable] = str(tmp_path / "runpod-volume" / folder)
    trace = tmp_path / "trace.log"
    session = [sys.executable, "tests/isolated_session.py", "Baileyy/photonicfusion-sdxl", str(dirs["out"])]
    if shutil.which("strace"):
        # --seccomp-bpf: the process stops at the traced calls only, not at each of its system calls (the same
        # trace; importing the pipeline under strace 13.7 s here against 19.2 s without it, 10.8 s untraced).
        session = ["strace", "--seccomp-bpf", "-f", "-qq", "-e",
                   "trace=openat,creat,mkdir,mkdirat,rename,renameat,renameat2",
                   "-o", str(trace), *session]
    isolated = can_unshare_network()
    if in_ci():
        assert isolated and shutil.which("strace"), ("CI needs strace and a network namespace (unshare -n, ip) for "
                                                     f"this guarantee: strace={shutil.which('strace')}, "
                                                     f"namespace={isolated}")
    netns = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    command = [*netns, *session] if isolated else session
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("SUMMARY "))[8:])

    assert summary["self_test"]["returncode"] == 0, summary["self_test"]["stdout"]
    assert decode(__import__("base64").b64encode((dirs["out"] / "self-test.png").read_bytes())).size == (256, 256)
    jobs = summary["jobs"]
    assert [j["http"] for j in jobs] == [200] * 12
    assert [(j["status"], j["images"]) for j in jobs[:3] + jobs[5:]] == [("COMPLETED", 1)] * 10  # 5-11: features
    assert [j["status"] for j in jobs[3:5]] == ["FAILED", "FAILED"]
    assert all(isinstance(j["error"], str) for j in jobs[3:5])
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal so the exit status says why.
    assert summary["api_returncode"] in (0, -signal.SIGTERM)
    api_log = (dirs["out"] / "api.log").read_text()
    assert "Application shutdown complete" in api_log
    served = f"model: Hugging Face repo Baileyy/photonicfusion-sdxl (revision main, commit {snapshot.name[:12]})"
    assert served in api_log

    guard_log = tmp_path / "guard.log"
    assert not guard_log.exists(), guard_log.read_text()
    assert not Path("/tmp/pwned").exists()
    if trace.exists():
        allowed = (str(dirs["tmpdir"]), str(dirs["out"]), str(guard_log), str(trace), "/dev/", "/proc/")
        assert writes_in_trace(trace, allowed) == []
    assert list(dirs["home"].iterdir()) == [], "no HF or torch cache folders may appear in HOME"
    print(f"\nisolated run: network namespace={isolated}, strace={trace.exists()}, "
          f"{len(jobs)} jobs through /runsync + --test, 0 outbound attempts, 0 writes outside the temp dir")


def test_soak_mixed_jobs(tiny_volume_source: Path, tmp_path: Path) -> None:
    """200 mixed jobs, a third invalid, over HTTP: no 500s, the right status each time, and memory levels off.

    RSS is compared from job 50 on: glibc's arenas grow over the first jobs of the mix (+19 to +154 MiB
    over all 200 in six runs here, three of them at the commit before this change) and then stay, +0.2 to
    +17.4 MiB over the last 150 in five runs. A leak shows there; test_jobs_keep_no_memory finds small ones.
    """
    import random

    process, base = start_api(tiny_volume_source, tmp_path / "api.log")
    schedulers = ["default", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_karras", "ddim", "unipc"]
    rng = random.Random(7)
    counts = {"jobs": 0, "valid": 0, "invalid": 0}

    def rss_kib() -> int:
        status = Path(f"/proc/{process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1))

    try:
        for warm in range(5):
            request(base, "/runsync", {"input": {"prompt": "warm", "width": 256, "height": 256,
                                                 "num_inference_steps": 1, "seed": warm}})
        rss_first = rss_kib()
        for n in range(200):
            if n == 50:
                rss_start = rss_kib()
            valid = n % 3 != 0
            job = {"prompt": f"soak job {n}", "width": rng.choice([256, 320]), "height": rng.choice([256, 264]),
                   "num_inference_steps": rng.choice([1, 2]), "scheduler": rng.choice(schedulers),
                   "output_format": rng.choice(["png", "jpeg", "webp"]), "seed": n,
                   "num_images": rng.choice([1, 1, 2])}
            if job["output_format"] == "png":
                job.pop("output_format")
            if not valid:
                job.update(rng.choice([{"width": 257}, {"num_images": 9}, {"steps": 3}, {"prompt": " "},
                                       {"guidance_scale": float("inf")}, {"scheduler": "plms"}]))
            status, reply = request(base, "/runsync", {"input": job})
            counts["jobs"] += 1
            assert status == 200, (status, job)
            if valid:
                assert reply["status"] == "COMPLETED", reply
                for image in reply["output"]["images"]:
                    assert decode(image).size == (job["width"], job["height"])
                counts["valid"] += 1
            else:
                assert reply["status"] == "FAILED" and isinstance(reply["error"], str), reply
                counts["invalid"] += 1
        rss_end = rss_kib()
    finally:
        stop(process)
    growth_mib = (rss_end - rss_start) / 1024
    print(f"\nsoak: {counts['jobs']} jobs ({counts['valid']} valid, {counts['invalid']} invalid), no HTTP 500; "
          f"server RSS {rss_first / 1024:.0f} -> {rss_start / 1024:.0f} (job 50) -> {rss_end / 1024:.0f} MiB "
          f"({growth_mib:+.1f} MiB)")
    assert growth_mib < 64
    log = (tmp_path / "api.log").read_text()
    assert "iVBORw0KGgo" not in log, "a PNG payload reached the log"


def test_jobs_keep_no_memory(tiny_volume_source: Path) -> None:
    """The soak's RSS growth is glibc keeping freed memory, not a leak: handed back, RSS returns to its level.

    Measured here: over 600 mixed jobs RSS rose from 525 to ~605 MiB, and each malloc_trim(0) brought it
    back to 526 MiB. A job that retained its image (196 KB at 256x256) would add 12 MB over these 60.
    """
    import ctypes
    import ctypes.util
    import random

    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    if libc is None or not hasattr(libc, "malloc_trim"):
        pytest.skip("needs glibc's malloc_trim to see live memory through RSS")

    def trimmed_rss_mib() -> float:
        libc.malloc_trim(0)
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    worker = Worker.start(cpu_settings(tiny_volume_source))
    worker.progress = lambda job, update: None
    rng = random.Random(3)
    schedulers = ["default", "euler_ancestral", "dpmpp_2m", "ddim", "unipc"]

    def jobs(count: int, offset: int) -> None:
        for n in range(offset, offset + count):
            job = {"prompt": f"leak check {n}", "width": rng.choice([256, 264]), "height": 256,
                   "num_inference_steps": 1, "scheduler": rng.choice(schedulers), "seed": n,
                   "output_format": rng.choice(["png", "jpeg", "webp"])}
            assert "images" in worker.handle({"id": str(n), "input": job})

    jobs(20, 0)  # every code path and size once: caches, lazily built objects
    before = trimmed_rss_mib()
    jobs(60, 20)
    after = trimmed_rss_mib()
    print(f"\nlive memory over 60 jobs: {before:.0f} -> {after:.0f} MiB ({after - before:+.1f} MiB)")
    assert after - before < 8


JSON_SCALARS = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | \
    st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=50)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
FIELD_VALUES = {
    "prompt": st.text(min_size=0, max_size=30) | st.just("x" * 3000) | JSON_SCALARS,
    "negative_prompt": st.text(max_size=20) | JSON_SCALARS,
    "width": st.sampled_from([256, 264, 512, 255, 0, -8, 4096, 2**40]) | JSON_SCALARS,
    "height": st.sampled_from([256, 272, 2048, 2056]) | JSON_SCALARS,
    "num_inference_steps": st.integers(min_value=-5, max_value=3) | st.just(101) | JSON_SCALARS,
    "guidance_scale": st.floats(allow_nan=True, allow_infinity=True) | JSON_SCALARS,
    "seed": st.integers(min_value=-1, max_value=2**33) | JSON_SCALARS,
    "num_images": st.integers(min_value=-1, max_value=6) | JSON_SCALARS,
    "scheduler": st.sampled_from(["default", "ddim", "unipc", "k_euler", ""]) | JSON_SCALARS,
    "output_format": st.sampled_from(["png", "jpeg", "webp", "gif"]) | JSON_SCALARS,
    "quality": st.integers(min_value=-1, max_value=101) | JSON_SCALARS,
}
VALID_SMALL_JOBS = st.fixed_dictionaries(
    {"prompt": st.text(min_size=1, max_size=40).filter(str.strip)},
    optional={"width": st.sampled_from([256, 264]), "height": st.sampled_from([256, 272]),
              "num_inference_steps": st.integers(1, 2), "guidance_scale": st.floats(0, 30),
              "seed": st.integers(0, 2**32 - 1), "num_images": st.integers(1, 2),
              "scheduler": st.sampled_from(["default", "euler_ancestral", "dpmpp_sde_karras", "ddim"]),
              "negative_prompt": st.text(max_size=20)},
).map(lambda job: {"width": 256, "height": 256, "num_inference_steps": 1, **job})
JOB_INPUTS = st.fixed_dictionaries({"prompt": FIELD_VALUES["prompt"]},
                                   optional={k: v for k, v in FIELD_VALUES.items() if k != "prompt"}) | \
    st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=5) | JSON_VALUES | VALID_SMALL_JOBS


def one_sentence(error: object) -> bool:
    return isinstance(error, str) and error and "\n" not in error and "Traceback" not in error and len(error) < 4000


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=JOB_INPUTS)
def test_fuzz_schema_accepts_or_explains(raw: object) -> None:
    try:
        job = parse_job_input(raw)
    except JobInputError as exc:
        assert one_sentence(str(exc))
    else:
        assert isinstance(job, JobInput)
        assert 256 <= job.width <= 2048 and job.width % 8 == 0 and math.isfinite(job.guidance_scale)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(raw=JOB_INPUTS)
def test_fuzz_handler_never_raises(fuzz_worker: Worker, raw: object) -> None:
    reply = fuzz_worker.handle({"id": "fuzz", "input": raw})
    assert isinstance(reply, dict)
    if "error" in reply:
        event("refused")
        assert one_sentence(reply["error"]) and set(reply) <= {"error", "refresh_worker"}
    else:
        event("generated")
        assert len(reply["images"]) == raw.get("num_images", 1)
        assert decode(reply["images"][0]).size == (raw["width"], raw["height"])


@pytest.fixture(scope="module")
def fuzz_worker(tiny_volume_source: Path) -> Worker:
    """A real worker whose MAX_PIXELS keeps the valid jobs the fuzzer finds small enough for a CPU."""
    return Worker.start(cpu_settings(tiny_volume_source, max_pixels=272 * 272), warmup=False)


def test_files_removed_or_truncated_after_start(volume: Path) -> None:
    worker = Worker.start(cpu_settings(volume), warmup=False)
    job = {"id": "after", "input": {"prompt": "x", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 3}}
    before = worker.handle(job)
    shutil.rmtree(volume / "unet")
    os.truncate(volume / "vae" / "diffusion_pytorch_model.safetensors", 100)
    after = worker.handle(job)
    assert after["images"] == before["images"], "weights are in memory: the worker keeps serving identically"
    from sdxl_worker.volume.check import check_volume

    report = check_volume(volume)
    assert report.exit_code == 1 and "unet: folder" in report.summary()  # what the HEALTHCHECK reports


def test_sigterm_during_a_job_finishes_it_and_exits_cleanly(tiny_volume_source: Path, tmp_path: Path) -> None:
    import threading

    process, base = start_api(tiny_volume_source, tmp_path / "api.log")
    replies: list = []
    job = {"input": {"prompt": "long", "width": 512, "height": 512, "num_inference_steps": 40, "seed": 1}}
    client = threading.Thread(target=lambda: replies.append(request(base, "/runsync", job, timeout=300)))
    client.start()
    time.sleep(1.5)
    started = time.monotonic()
    os.kill(process.pid, signal.SIGTERM)
    try:
        code = process.wait(timeout=240)
    finally:
        stop(process) if process.poll() is None else None
    client.join(timeout=30)
    log = (tmp_path / "api.log").read_text()
    # uvicorn finishes the request in flight, shuts down, then re-raises SIGTERM as the exit status.
    assert code in (0, -signal.SIGTERM), log[-2000:]
    assert "Application shutdown complete" in log and "Traceback" not in log
    status, reply = replies[0]
    assert status == 200 and reply["status"] == "COMPLETED"
    assert decode(reply["output"]["images"][0]).size == (512, 512)
    assert reply["output"]["timings"]["total_s"] > 1.5, "the job must still have been running at SIGTERM"
    print(f"\nSIGTERM mid-job: the job completed, then the server shut down after {time.monotonic() - started:.1f} s")


# Everything the image runs: the entry points and the whole package (dev tooling is not copied into it).
RUNTIME_MODULES = ["handler_volume_optimized.py", "model_loader.py", "volume_check.py",
                   *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "sdxl_worker").rglob("*.py"))]
FORBIDDEN_CALLS = {"eval", "exec", "system", "popen", "Popen", "check_output", "check_call", "spawnl", "execv"}
# prepare_volume's converter of .bin weights names pickle's error (torch's weights-only loader raises it); the
# worker never imports it (test below).
PICKLE_ERRORS_ONLY = "sdxl_worker/prepare/bin_weights.py"


@pytest.mark.parametrize("module", RUNTIME_MODULES)
def test_no_shell_or_eval_in_the_serving_path(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text())
    forbidden = ("subprocess", "shlex") if module == PICKLE_ERRORS_ONLY else ("subprocess", "pickle", "shlex")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] in forbidden for n in names), module
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            builtin_compile = name == "compile" and isinstance(func, ast.Name)  # torch.compile is fine
            assert name not in FORBIDDEN_CALLS and not builtin_compile, f"{module}:{node.lineno} calls {name}"


def test_the_worker_never_imports_the_bin_converter() -> None:
    code = ("import sys, handler_volume_optimized, volume_check, model_loader; "
            "print(sorted(m for m in sys.modules if 'bin_weights' in m or m == 'pickle'))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "sdxl_worker.prepare.bin_weights" not in run.stdout.splitlines()[-1]


def test_job_fields_are_plain_values_not_paths() -> None:
    for name, field in JobInput.model_fields.items():
        assert field.annotation is not None
        assert "Path" not in str(field.annotation), name
    # Path-like and shell-like prompts are just text to the model.
    job = parse_job_input({"prompt": "../../etc/passwd; $(reboot)", "negative_prompt": "/runpod-volume"})
    assert job.prompt == "../../etc/passwd; $(reboot)"
