"""Uploads against a real S3-compatible server on loopback (moto's): the bytes come back over HTTP from the URL
the reply gives, and each failure is one sentence without the credentials."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from sdxl_worker.delivery.bucket import Bucket, BucketError
from sdxl_worker.settings import Settings, SettingsError
from tests.helpers import free_port, s3_user, start_s3_server, stop

pytestmark = pytest.mark.slow


def bucket_for(env: dict[str, str]) -> Bucket:
    return Bucket(Settings.from_env(env).bucket)


def fetch(url: str) -> tuple[bytes, str]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read(), reply.headers["Content-Type"]


def test_uploads_come_back_from_their_presigned_urls(bucket_env: dict[str, str]) -> None:
    bucket = bucket_for({**bucket_env, "BUCKET_PREFIX": "/sdxl/runs/"})
    images = [b"\x89PNG first", b"\x89PNG second"]
    uploads = bucket.upload("job-42", images, [7, 8], "png")
    assert [u.key for u in uploads] == ["sdxl/runs/job-42/0-7.png", "sdxl/runs/job-42/1-8.png"]
    for upload, data in zip(uploads, images, strict=True):
        assert "X-Amz-Signature=" in upload.url and "X-Amz-Expires=3600" in upload.url
        assert fetch(upload.url) == (data, "image/png")


def test_a_public_bucket_gives_plain_urls_and_job_ids_cannot_make_paths(bucket_env: dict[str, str]) -> None:
    bucket = bucket_for({**bucket_env, "BUCKET_PUBLIC_URL": "https://images.example.com/"})
    (upload,) = bucket.upload("../../etc/x y", [b"jpeg bytes"], [3], "jpeg")
    assert upload.key == ".._.._etc_x_y/0-3.jpg"
    assert upload.url == "https://images.example.com/.._.._etc_x_y/0-3.jpg"


def test_a_missing_bucket_is_one_sentence(bucket_env: dict[str, str]) -> None:
    with pytest.raises(BucketError, match=r"bucket 'nowhere' .* failed \(NoSuchBucket: .*\); none of the job's "
                                          r"images is stored\.$") as caught:
        bucket_for({**bucket_env, "BUCKET_NAME": "nowhere"}).upload("j", [b"x"], [1], "png")
    assert bucket_env["BUCKET_SECRET_ACCESS_KEY"] not in str(caught.value)


def test_an_endpoint_that_is_down_fails_within_seconds() -> None:
    env = {"BUCKET_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "BUCKET_ACCESS_KEY_ID": "AKIADOWN",
           "BUCKET_SECRET_ACCESS_KEY": "down-secret", "BUCKET_NAME": "images"}
    started = time.monotonic()
    with pytest.raises(BucketError, match=r"Could not connect to the endpoint URL") as caught:
        bucket_for(env).upload("j", [b"x"], [1], "png")
    assert time.monotonic() - started < 20
    assert "down-secret" not in str(caught.value) and "AKIADOWN" not in str(caught.value)


def test_wrong_credentials_are_refused_without_echoing_them(tmp_path: Path) -> None:
    """A server that checks signatures: the right key uploads, a wrong secret is one sentence without either."""
    process, endpoint = start_s3_server(tmp_path / "moto.log", authenticate=True)
    try:
        env = s3_user(endpoint, "private")
        assert bucket_for(env).upload("j", [b"ok"], [1], "png")[0].key == "j/0-1.png"
        wrong = {**env, "BUCKET_SECRET_ACCESS_KEY": "not-the-secret"}
        with pytest.raises(BucketError, match="SignatureDoesNotMatch") as caught:
            bucket_for(wrong).upload("j", [b"x"], [1], "png")
        text = str(caught.value)
        assert "not-the-secret" not in text and env["BUCKET_ACCESS_KEY_ID"] not in text
    finally:
        stop(process)


def test_bucket_settings_are_all_or_none() -> None:
    with pytest.raises(SettingsError, match="BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY unset"):
        Settings.from_env({"BUCKET_ENDPOINT_URL": "https://s3.example.com", "BUCKET_NAME": "images"})
    assert not Settings.from_env({}).bucket.configured


def test_the_secret_never_appears_in_the_settings_text(bucket_env: dict[str, str]) -> None:
    settings = Settings.from_env(bucket_env)
    assert bucket_env["BUCKET_SECRET_ACCESS_KEY"] not in repr(settings) + str(settings) + settings.model_dump_json()


def test_an_upload_writes_nothing_to_disk(bucket_env: dict[str, str], tmp_path: Path) -> None:
    """Under the guard that records every file opened for writing outside TMPDIR: the images go from memory."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    code = ("import json, sys; from sdxl_worker.settings import Settings; from sdxl_worker.delivery.bucket import "
            "Bucket; env = json.loads(sys.argv[1]); "
            "print(Bucket(Settings.from_env(env).bucket).upload('guarded', [b'x' * 5_000_000], [1], 'png')[0].key)")
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests' / 'guard'}{os.pathsep}{ROOT}",
           "GUARD_LOG": str(tmp_path / "guard.log"), "GUARD_ALLOWED": str(tmpdir), "TMPDIR": str(tmpdir),
           "HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-c", code, json.dumps(bucket_env)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "guarded/0-1.png", run.stderr[-2000:]
    assert not (tmp_path / "guard.log").exists(), (tmp_path / "guard.log").read_text()
    assert not [p for p in tmpdir.rglob("*") if p.is_file()]


@pytest.mark.parametrize("url", ["127.0.0.1:9000", "s3.example.com", "ftp://s3.example.com", "https://", "http://a b"])
def test_an_endpoint_that_is_not_a_url_is_a_setting_refused_at_start(url: str) -> None:
    """Not at the first job as boto3's `ValueError: Invalid endpoint`: the worker's start names the variable."""
    env = {"BUCKET_ENDPOINT_URL": url, "BUCKET_ACCESS_KEY_ID": "AKIA", "BUCKET_SECRET_ACCESS_KEY": "s",
           "BUCKET_NAME": "images"}
    with pytest.raises(SettingsError, match=r"^BUCKET_ENDPOINT_URL=.* is refused: must be an http:// or https:// URL "
                                            "with a host"):
        Settings.from_env(env)
    with pytest.raises(SettingsError, match=r"^BUCKET_PUBLIC_URL=.* is refused"):
        Settings.from_env({"BUCKET_PUBLIC_URL": url})


def test_an_upload_failing_part_way_leaves_nothing_in_the_bucket(bucket_env: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The first of three images is stored on the real server, the second refused: the first is deleted again."""
    from botocore.exceptions import ClientError

    bucket = bucket_for(bucket_env)
    put = bucket.client.put_object
    calls = []

    def second_refused(**kwargs: object) -> object:
        calls.append(kwargs["Key"])
        if len(calls) == 2:
            error = {"Error": {"Code": "SlowDown", "Message": "Please reduce your request rate."}}
            raise ClientError(error, "PutObject")
        return put(**kwargs)

    monkeypatch.setattr(bucket.client, "put_object", second_refused)
    with pytest.raises(BucketError, match=r"failed \(SlowDown: Please reduce your request rate\.\); none of the job's "
                                          r"images is stored\.$"):
        bucket.upload("partial", [b"one", b"two", b"three"], [1, 2, 3], "png")
    assert calls == ["partial/0-1.png", "partial/1-2.png"]
    listed = bucket.client.list_objects_v2(Bucket=bucket_env["BUCKET_NAME"], Prefix="partial/")
    assert listed.get("KeyCount", 0) == 0


def test_an_upload_abandoned_at_the_deadline_leaves_nothing_in_the_bucket(bucket_env: dict[str, str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The first image stored, the second still going at BUCKET_UPLOAD_TIMEOUT_S: the job fails then, and once the
    late request ends, both objects are deleted from the real server."""
    bucket = bucket_for({**bucket_env, "BUCKET_UPLOAD_TIMEOUT_S": "5"})
    put = bucket.client.put_object
    stored = []

    def second_late(**kwargs: object) -> object:
        if kwargs["Key"].startswith("late/1-"):
            time.sleep(6.5)
        reply = put(**kwargs)
        stored.append(kwargs["Key"])
        return reply

    monkeypatch.setattr(bucket.client, "put_object", second_late)
    with pytest.raises(BucketError, match=r"not finished after BUCKET_UPLOAD_TIMEOUT_S=5 s"):
        bucket.upload("late", [b"one", b"two"], [1, 2], "png")
    deadline = time.monotonic() + 20  # the late request ends 1.5 s after the deadline; its clean-up follows
    while time.monotonic() < deadline:
        listed = bucket.client.list_objects_v2(Bucket=bucket_env["BUCKET_NAME"], Prefix="late/")
        if len(stored) == 2 and listed.get("KeyCount", 0) == 0:
            break
        time.sleep(0.2)
    assert stored == ["late/0-1.png", "late/1-2.png"] and listed.get("KeyCount", 0) == 0, listed.get("Contents")


def test_a_server_that_trickles_bytes_cannot_hold_the_job_past_the_deadline() -> None:
    """boto3's read timeout is per read: a server sending a byte a second would hold an upload for ever."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    stop_serving = threading.Event()

    def trickle() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nx-amz-meta-slow: " + b"z" * 1000:
                if stop_serving.wait(0.5):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    threading.Thread(target=trickle, daemon=True).start()
    env = {"BUCKET_ENDPOINT_URL": f"http://127.0.0.1:{listener.getsockname()[1]}", "BUCKET_ACCESS_KEY_ID": "AKIA",
           "BUCKET_SECRET_ACCESS_KEY": "slow-secret", "BUCKET_NAME": "images", "BUCKET_UPLOAD_TIMEOUT_S": "5"}
    started = time.monotonic()
    try:
        with pytest.raises(BucketError, match=r"failed \(not finished after BUCKET_UPLOAD_TIMEOUT_S=5 s\); any of the "
                                              r"job's images it stored are deleted when the request ends\.$"):
            bucket_for(env).upload("slow", [b"x" * 1000], [1], "png")
        assert time.monotonic() - started < 10
    finally:
        stop_serving.set()
        listener.close()
