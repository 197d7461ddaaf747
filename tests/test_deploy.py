"""deploy_volume_optimized.sh against a stub docker and a stub RunPod API on loopback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import ROOT

KEY = "rp-SECRET-key-0123456789"


class FakeRunPod:
    """Answers the GraphQL requests the runpod SDK sends, remembering templates and endpoints."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.templates: list[dict] = []
        self.endpoints: list[dict] = []

    def answer(self, query: str) -> dict:
        if "podTemplates" in query:
            return {"myself": {"podTemplates": [{k: v for k, v in t.items() if k != "env"} for t in self.templates]}}
        if "saveTemplate" in query:
            name = query.split('name: "', 1)[1].split('"', 1)[0]
            env = [{"key": k, "value": v} for k, v in re.findall(r'\{ key: "([^"]*)", value: "([^"]*)" \}', query)]
            template = {"id": f"tpl-{len(self.templates) + 1}", "name": name, "isServerless": True, "env": env}
            self.templates.append(template)
            return {"saveTemplate": template}
        if "endpoints" in query:  # an endpoint's variables are its template's
            return {"myself": {"endpoints": [{**e, "env": self.template(e["templateId"])["env"]}
                                             for e in self.endpoints]}}
        if "saveEndpoint" in query:
            name = query.split('name: "', 1)[1].split('"', 1)[0]
            template_id = query.split('templateId: "', 1)[1].split('"', 1)[0]
            endpoint = {"id": f"ep-{len(self.endpoints) + 1}", "name": name, "templateId": template_id,
                        "workersMin": 0, "workersMax": 3, "idleTimeout": 5}
            self.endpoints.append(endpoint)
            return {"saveEndpoint": endpoint}
        if "updateEndpointTemplate" in query:
            endpoint_id = query.split('endpointId: "', 1)[1].split('"', 1)[0]
            template_id = query.split('templateId: "', 1)[1].split('"', 1)[0]
            for endpoint in self.endpoints:
                if endpoint["id"] == endpoint_id:
                    endpoint["templateId"] = template_id
            return {"updateEndpointTemplate": {"id": endpoint_id, "templateId": template_id}}
        raise AssertionError(f"unexpected query {query}")

    def template(self, template_id: str) -> dict:
        return next(t for t in self.templates if t["id"] == template_id)

    @property
    def mutations(self) -> list[str]:
        return [r["query"] for r in self.requests if r["query"].lstrip().startswith("mutation")]


@pytest.fixture
def runpod_api() -> Iterator[tuple[FakeRunPod, str]]:
    fake = FakeRunPod()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
            payload = json.dumps({"data": fake.answer(body["query"])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def docker_stub(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    (bin_dir / "docker").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\n')
    (bin_dir / "docker").chmod(0o755)
    return bin_dir, log


def deploy(*flags: str, env: dict[str, str], bin_dir: Path | None = None) -> subprocess.CompletedProcess:
    path = f"{bin_dir}:{os.environ['PATH']}" if bin_dir else os.environ["PATH"]
    full_env = {"PATH": path, "HOME": os.environ.get("HOME", "/tmp"), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", "deploy_volume_optimized.sh", *flags], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


BASE = {"IMAGE": "acme/photonicfusion-worker:1.2.0", "NETWORK_VOLUME_ID": "vol-42", "RUNPOD_API_KEY": KEY}


def test_builds_pushes_and_creates(runpod_api, docker_stub) -> None:
    fake, url = runpod_api
    bin_dir, log = docker_stub
    run = deploy("--workers-max", "5", "--gpu-types", "ADA_24", env={**BASE, "RUNPOD_API_BASE_URL": url},
                 bin_dir=bin_dir)
    assert run.returncode == 0, run.stderr
    assert log.read_text().splitlines() == [
        "build --platform linux/amd64 -f Dockerfile.volume_optimized -t acme/photonicfusion-worker:1.2.0 .",
        "push acme/photonicfusion-worker:1.2.0",
    ]
    queries = [r["query"] for r in fake.requests]
    template = next(q for q in queries if "saveTemplate" in q)
    assert 'imageName: "acme/photonicfusion-worker:1.2.0"' in template
    assert 'volumeMountPath: "/runpod-volume"' in template and "isServerless: true" in template
    assert '{ key: "MODEL_PATH", value: "/runpod-volume/photonicfusion-sdxl" }' in template
    assert '{ key: "HF_HUB_OFFLINE", value: "1" }' in template
    endpoint = next(q for q in queries if "saveEndpoint" in q)
    for field in ('networkVolumeId: "vol-42"', 'templateId: "tpl-1"', "workersMax: 5", 'gpuIds: "ADA_24"',
                  "flashBootType: FLASHBOOT", 'allowedCudaVersions: "13.0"', "idleTimeout: 5"):
        assert field in endpoint
    assert all(r["auth"] == f"Bearer {KEY}" and r["path"] == "/graphql" for r in fake.requests)
    assert "ENDPOINT_ID=ep-1" in run.stdout and "bash smoke_test.sh" in run.stdout
    assert KEY not in run.stdout + run.stderr


def test_rerun_updates_and_never_duplicates(runpod_api, docker_stub) -> None:
    fake, url = runpod_api
    bin_dir, _ = docker_stub
    env = {**BASE, "RUNPOD_API_BASE_URL": url}
    assert deploy(env=env, bin_dir=bin_dir).returncode == 0
    again = deploy(env=env, bin_dir=bin_dir)
    assert again.returncode == 0, again.stderr
    assert (len(fake.templates), len(fake.endpoints)) == (1, 1)
    assert "already exists; reusing it" in again.stdout
    newer = deploy(env={**env, "IMAGE": "acme/photonicfusion-worker:1.3.0"}, bin_dir=bin_dir)
    assert newer.returncode == 0, newer.stderr
    assert (len(fake.templates), len(fake.endpoints)) == (2, 1)
    assert fake.endpoints[0]["templateId"] == "tpl-2"
    assert sum("saveEndpoint" in r["query"] for r in fake.requests) == 1
    assert "now uses template tpl-2" in newer.stdout


def test_dry_run_changes_nothing(runpod_api, docker_stub) -> None:
    fake, url = runpod_api
    bin_dir, log = docker_stub
    run = deploy("--dry-run", env={**BASE, "RUNPOD_API_BASE_URL": url}, bin_dir=bin_dir)
    assert run.returncode == 0, run.stderr
    assert fake.mutations == [] and not log.exists()
    assert "+ docker build --platform linux/amd64 -f Dockerfile.volume_optimized" in run.stdout
    assert "+ docker push acme/photonicfusion-worker:1.2.0" in run.stdout
    assert "saveTemplate" in run.stdout and "saveEndpoint" in run.stdout and "Bearer ***" in run.stdout
    assert KEY not in run.stdout + run.stderr


@pytest.mark.parametrize(
    ("drop", "flags", "words"),
    [
        ("RUNPOD_API_KEY", (), "RUNPOD_API_KEY is not set"),
        ("NETWORK_VOLUME_ID", (), "NETWORK_VOLUME_ID (or --volume-id) is required"),
        ("IMAGE", (), "IMAGE (or --image name:tag) is required"),
        (None, ("--workers-min", "4", "--workers-max", "2"), "--workers-min (4) is above --workers-max (2)"),
        (None, ("--bogus",), "unknown flag --bogus (see --help)"),
    ],
)
def test_missing_input_fails_before_any_command(runpod_api, docker_stub, drop, flags, words) -> None:
    fake, url = runpod_api
    bin_dir, log = docker_stub
    env = {k: v for k, v in {**BASE, "RUNPOD_API_BASE_URL": url}.items() if k != drop}
    run = deploy(*flags, env=env, bin_dir=bin_dir)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"deploy_volume_optimized.sh: {words}"]
    assert fake.requests == [] and not log.exists()


def test_missing_docker_fails_before_any_command(runpod_api, tmp_path: Path) -> None:
    fake, url = runpod_api
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    (empty / "bash").symlink_to("/bin/bash")
    run = subprocess.run(["bash", "deploy_volume_optimized.sh"], cwd=ROOT, capture_output=True, text=True,
                         env={**BASE, "PATH": str(empty), "PYTHON": sys.executable, "RUNPOD_API_BASE_URL": url})
    assert run.returncode == 2 and "docker is not installed" in run.stderr
    assert fake.requests == []


def test_a_python_without_runpod_is_one_line_naming_the_package(tmp_path: Path) -> None:
    bare = tmp_path / "bare"  # a venv of its own: no packages but pip's
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    run = subprocess.run(["bash", "deploy_volume_optimized.sh", "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, env={**BASE, "PYTHON": str(bare / "bin" / "python")})
    assert run.returncode != 0 and "the runpod package is missing" in run.stderr, run.stderr


def test_dry_run_needs_no_docker(runpod_api, tmp_path: Path) -> None:
    """A dry run prints the docker commands it would run: it must work where docker is not installed."""
    fake, url = runpod_api
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    (empty / "bash").symlink_to("/bin/bash")
    run = subprocess.run(["bash", "deploy_volume_optimized.sh", "--dry-run"], cwd=ROOT, capture_output=True,
                         text=True, env={**BASE, "PATH": str(empty), "PYTHON": sys.executable,
                                         "RUNPOD_API_BASE_URL": url})
    assert run.returncode == 0, run.stderr
    assert "+ docker build --platform linux/amd64" in run.stdout and "ENDPOINT_ID=<endpoint id>" in run.stdout
    assert fake.mutations == []


def test_help_lists_every_flag_with_its_variable() -> None:
    run = subprocess.run(["bash", "deploy_volume_optimized.sh", "--help"], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "PYTHON": sys.executable})
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: deploy_volume_optimized.sh")
    for flag, variable in (("--workers-max", "WORKERS_MAX"), ("--gpu-types", "GPU_TYPES"),
                           ("--volume-id", "NETWORK_VOLUME_ID"), ("--dry-run", None), ("--skip-build", None)):
        assert flag in run.stdout and (variable is None or variable in run.stdout)
    # The defaults README promises "--help" shows, a variable's value in their place when it is set.
    text = " ".join(run.stdout.split())
    for shown in ("WORKERS_MIN (default: 0)", "WORKERS_MAX (default: 3)", "FLASHBOOT (default: on)",
                  "(default: /runpod-volume/photonicfusion-sdxl)"):
        assert shown in text, shown
    override = subprocess.run(["bash", "deploy_volume_optimized.sh", "--help"], cwd=ROOT, capture_output=True,
                              text=True, env={"PATH": os.environ["PATH"], "PYTHON": sys.executable,
                                              "WORKERS_MAX": "7"})
    assert "WORKERS_MAX (default: 7)" in " ".join(override.stdout.split())


def test_an_env_file_sets_the_workers_settings_and_a_redeploy_keeps_what_the_console_added(
        runpod_api, docker_stub, tmp_path: Path) -> None:
    fake, url = runpod_api
    bin_dir, _ = docker_stub
    env_file = tmp_path / "endpoint.env"
    env_file.write_text("# the endpoint's settings\nLORA_DIR=/runpod-volume/my-loras\nMAX_PIXELS=1048576\n\n"
                        "BUCKET_ENDPOINT_URL=https://s3.example.com\nBUCKET_NAME=images\nBUCKET_ACCESS_KEY_ID=AKIA1\n"
                        "export BUCKET_SECRET_ACCESS_KEY='s3-SECRET-value'\n")
    env = {**BASE, "RUNPOD_API_BASE_URL": url}
    first = deploy("--env-file", str(env_file), env=env, bin_dir=bin_dir)
    assert first.returncode == 0, first.stderr
    variables = {e["key"]: e["value"] for e in fake.templates[0]["env"]}
    assert variables["LORA_DIR"] == "/runpod-volume/my-loras" and variables["MAX_PIXELS"] == "1048576"
    assert variables["BUCKET_SECRET_ACCESS_KEY"] == "s3-SECRET-value"
    fake.templates[0]["env"].append({"key": "RESULT_MAX_MB", "value": "19"})  # set by hand in RunPod's console

    newer = {**env, "IMAGE": "acme/photonicfusion-worker:1.3.0"}
    dry = deploy("--dry-run", "--env-file", str(env_file), env=newer, bin_dir=bin_dir)
    assert dry.returncode == 0, dry.stderr
    assert fake.mutations[2:] == [], "a dry run reads the endpoint and changes nothing"
    assert "its variables stay as they are" in dry.stdout and "kept: " in dry.stdout
    assert "RESULT_MAX_MB" in dry.stdout.split("kept: ", 1)[1].splitlines()[0]

    env_file.write_text(env_file.read_text().replace("my-loras", "loras-v2"))
    again = deploy("--env-file", str(env_file), env=newer, bin_dir=bin_dir)
    assert again.returncode == 0, again.stderr
    assert fake.endpoints[0]["templateId"] == "tpl-2"
    variables = {e["key"]: e["value"] for e in fake.template("tpl-2")["env"]}
    assert variables["RESULT_MAX_MB"] == "19", "the console's variable is carried to the new template"
    assert variables["LORA_DIR"] == "/runpod-volume/loras-v2"
    assert "~ LORA_DIR: /runpod-volume/my-loras -> /runpod-volume/loras-v2" in again.stdout
    for run in (first, dry, again):
        assert "s3-SECRET-value" not in run.stdout + run.stderr and KEY not in run.stdout + run.stderr


@pytest.mark.parametrize(("text", "words"), [
    ("LORA_DIRS=/x\n", "line 1: LORA_DIRS is not a worker setting (docs/settings.md). Did you mean 'LORA_DIR'?"),
    ("MAX_PIXELS=lots\n", "MAX_PIXELS"),
    ("just words\n", "line 1: not NAME=value"),
])
def test_a_bad_env_file_fails_before_any_command(runpod_api, docker_stub, tmp_path: Path, text: str,
                                                 words: str) -> None:
    fake, url = runpod_api
    bin_dir, log = docker_stub
    env_file = tmp_path / "endpoint.env"
    env_file.write_text(text)
    run = deploy("--env-file", str(env_file), env={**BASE, "RUNPOD_API_BASE_URL": url}, bin_dir=bin_dir)
    assert run.returncode == 2 and words in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert fake.requests == [] and not log.exists()


def test_an_unreachable_api_is_one_line_and_a_dry_run_still_shows_the_requests(docker_stub) -> None:
    """README's dry run pasted with a key on a machine that cannot reach RunPod (or with a wrong key)."""
    bin_dir, _ = docker_stub
    env = {**BASE, "RUNPOD_API_BASE_URL": "http://127.0.0.1:9"}  # nothing listens on the discard port
    dry = deploy("--dry-run", env=env, bin_dir=bin_dir)
    assert dry.returncode == 0, dry.stderr
    assert "RunPod's API could not be read (ConnectionError: " in dry.stdout and "saveTemplate" in dry.stdout
    assert "Traceback" not in dry.stdout + dry.stderr
    real = deploy("--skip-build", env=env, bin_dir=bin_dir)
    assert real.returncode == 1 and "Traceback" not in real.stderr
    assert real.stderr.startswith("deploy_volume_optimized.sh: RunPod's API could not be read (ConnectionError: ")
    assert real.stderr.rstrip().endswith("check RUNPOD_API_KEY and the network") and len(real.stderr.splitlines()) == 1
    assert KEY not in dry.stdout + dry.stderr + real.stdout + real.stderr
