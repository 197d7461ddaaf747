"""Upload a job's images to an S3-compatible bucket, from memory, and give back URLs to fetch them.

The settings use the variable names RunPod's own `rp_upload` helper reads (BUCKET_ENDPOINT_URL,
BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY), so an endpoint set up for other RunPod workers works unchanged.
rp_upload itself writes each image to the container disk first; here boto3 (what rp_upload uses underneath)
uploads the encoded bytes directly. Every failure (wrong credentials, unknown bucket, endpoint down, timeout)
is one sentence without the credentials in it, and the job fails: a job never completes without its images.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from sdxl_worker.sentences import bounded

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
# Seconds: a bucket that does not answer must not hold a job (and its GPU) for boto3's default of minutes.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30
REQUIRED = ("bucket_endpoint_url", "bucket_access_key_id", "bucket_secret_access_key", "bucket_name")


class BucketError(RuntimeError):
    """An upload that failed; the message is one sentence, without credentials."""


class BucketSettings(BaseModel):
    """Where results go when they do not fit in the reply; all four of endpoint, key id, secret and name, or none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket_endpoint_url: str | None = Field(None, examples=["https://s3.eu-west-1.amazonaws.com"], description=(
        "S3-compatible endpoint (AWS, R2, B2, MinIO...); with the three below, results can go to the bucket."))
    bucket_access_key_id: str | None = Field(None, description=(
        "The bucket's access key id (RunPod's name for it, as rp_upload reads it)."))
    bucket_secret_access_key: SecretStr | None = Field(None, description=(
        "Its secret; never logged or returned."))
    bucket_name: str | None = Field(None, examples=["my-images"], description="The bucket.")
    bucket_prefix: str = Field("", max_length=200, examples=["sdxl/"], description=(
        "Object keys are `PREFIX/JOB_ID/INDEX-SEED.EXT`."))
    bucket_region: str | None = Field(None, examples=["us-east-1"], description=(
        "The region to sign for, where the endpoint needs one."))
    bucket_url_expiry_s: int = Field(3600, ge=60, le=604_800, description=(
        "Seconds a presigned URL stays valid (S3 allows up to 7 days)."))
    bucket_public_url: str | None = Field(None, examples=["https://images.example.com"], description=(
        "Base URL of a public bucket: replies give `BASE/KEY` instead of presigned URLs."))

    bucket_upload_timeout_s: int = Field(60, ge=5, le=900, description=(
        "Seconds the whole upload of a job's images may take (a server that stalls or trickles bytes cannot hold "
        "the job longer); past it the job fails and what was stored is deleted."))

    @field_validator("bucket_endpoint_url", "bucket_public_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in value):
            raise ValueError("must be an http:// or https:// URL with a host, e.g. https://s3.eu-west-1.amazonaws.com")
        return value

    @model_validator(mode="after")
    def _all_or_none(self) -> BucketSettings:
        given = [name for name in REQUIRED if getattr(self, name)]
        if given and len(given) < len(REQUIRED):
            missing = ", ".join(name.upper() for name in REQUIRED if name not in given)
            raise ValueError(f"bucket upload needs {', '.join(n.upper() for n in REQUIRED)}: {missing} unset")
        return self

    @property
    def configured(self) -> bool:
        return all(getattr(self, name) for name in REQUIRED)


@dataclass(frozen=True)
class Upload:
    """One stored image: its object key and the URL the reply gives for it."""

    key: str
    url: str


class Bucket:
    """A configured bucket; the boto3 client is made at the first upload (boto3 is imported only then)."""

    def __init__(self, settings: BucketSettings) -> None:
        if not settings.configured:
            raise ValueError("bucket settings are incomplete")
        self.settings = settings
        self._client: Any = None

    def upload(self, job_id: str, images: list[bytes], seeds: list[int], output_format: str) -> list[Upload]:
        """Put each image under `PREFIX/JOB_ID/INDEX-SEED.EXT` and return where they can be fetched: all of them
        within BUCKET_UPLOAD_TIMEOUT_S, or BucketError with none left stored."""
        keys = [self.key(job_id, index, seed, output_format) for index, seed in enumerate(seeds)]
        attempt = _Attempt()
        # boto3's timeouts bound each socket read, not a request: a server trickling bytes keeps one going for as
        # long as it likes. The uploads run on their own thread; the job waits for them up to the deadline.
        thread = threading.Thread(target=self._put_all, args=(keys, images, output_format, attempt), daemon=True,
                                  name=f"upload-{keys[0]}")
        thread.start()
        thread.join(self.settings.bucket_upload_timeout_s)
        with attempt.lock:
            if not attempt.done:
                attempt.abandoned = True  # the thread deletes what it stored once its request ends
                detail = f"not finished after BUCKET_UPLOAD_TIMEOUT_S={self.settings.bucket_upload_timeout_s} s"
                raise BucketError(self._sentence(detail, attempt.stored, cleaned=False))
        if len(attempt.stored) < len(keys):
            left = self._delete(attempt.stored)
            raise BucketError(self._sentence(attempt.error or "the upload stopped", left))
        return [Upload(key, self.url(key)) for key in keys]

    def _put_all(self, keys: list[str], images: list[bytes], output_format: str, attempt: _Attempt) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for key, data in zip(keys, images, strict=True):
                if attempt.abandoned:
                    return
                self.client.put_object(Bucket=self.settings.bucket_name, Key=key, Body=data,
                                       ContentType=CONTENT_TYPES[output_format])
                with attempt.lock:
                    attempt.stored.append(key)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            attempt.error = f"{error.get('Code', 'error')}: {error.get('Message', '')}"
        except BotoCoreError as exc:  # the endpoint unreachable, a timeout
            attempt.error = str(exc)
        finally:
            with attempt.lock:
                attempt.done = True
                if attempt.abandoned:  # the job has failed already: nothing of it may stay in the bucket
                    self._delete(attempt.stored)

    def _delete(self, keys: list[str]) -> list[str]:
        """Delete these objects; the keys that could not be deleted."""
        from botocore.exceptions import BotoCoreError, ClientError

        left = []
        for key in keys:
            try:
                self.client.delete_object(Bucket=self.settings.bucket_name, Key=key)
            except (ClientError, BotoCoreError):
                left.append(key)
        return left

    def key(self, job_id: str, index: int, seed: int, output_format: str) -> str:
        safe_id = re.sub(r"[^A-Za-z0-9._-]", "_", job_id)[:64] or "job"
        name = f"{safe_id}/{index}-{seed}.{EXTENSIONS[output_format]}"
        prefix = self.settings.bucket_prefix.strip("/")
        return f"{prefix}/{name}" if prefix else name

    def url(self, key: str) -> str:
        if self.settings.bucket_public_url:
            return f"{self.settings.bucket_public_url.rstrip('/')}/{key}"
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.settings.bucket_name,
                                                                        "Key": key},
                                                  ExpiresIn=self.settings.bucket_url_expiry_s)

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(signature_version="s3v4", connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                            retries={"max_attempts": 2, "mode": "standard"})
            secret = self.settings.bucket_secret_access_key
            self._client = boto3.client(
                "s3", endpoint_url=self.settings.bucket_endpoint_url, region_name=self.settings.bucket_region,
                aws_access_key_id=self.settings.bucket_access_key_id,
                aws_secret_access_key=secret.get_secret_value() if secret else None, config=config)
        return self._client

    def _sentence(self, detail: str, left: Sequence[str] = (), cleaned: bool = True) -> str:
        """One sentence on a failed upload, the credentials cut out of whatever the server or library said, and
        what, if anything, is still in the bucket."""
        secret = self.settings.bucket_secret_access_key
        for value in (self.settings.bucket_access_key_id, secret.get_secret_value() if secret else None):
            if value:
                detail = detail.replace(value, "***")
        detail = bounded(detail, 300)
        if not cleaned:
            stored = "; any of the job's images it stored are deleted when the request ends"
        elif left:
            stored = f"; {len(left)} of the job's images could not be deleted from it, e.g. {bounded(left[0], 120)}"
        else:
            stored = "; none of the job's images is stored"
        return (f"Uploading the images to bucket {self.settings.bucket_name!r} at {self.settings.bucket_endpoint_url} "
                f"failed ({detail}){stored}.")


@dataclass
class _Attempt:
    """One job's uploads, shared with the thread making them."""

    stored: list[str] = field(default_factory=list)
    error: str | None = None
    done: bool = False
    abandoned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
