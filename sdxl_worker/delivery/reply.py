"""The size guard and the choice between base64 images in the reply and URLs from the bucket.

RunPod drops a job result over its payload limit (documented for /runsync: 20 MB): the caller then sees the job
COMPLETED with no output, or an error on job-done. So the worker measures the reply it is about to return, as
JSON, before returning it. Over RESULT_MAX_MB (default 19, under that limit with room for RunPod's envelope):
with a bucket configured and no `output` asked for, the images go to the bucket and the reply carries URLs and
says why; otherwise the job fails with the size, the limit and what to change. A reply RunPod would drop is
never returned.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from sdxl_worker.delivery.bucket import Bucket

RUNPOD_RUNSYNC_LIMIT_MB = 20


class DeliveryError(ValueError):
    """The images cannot be delivered as asked; the message is the one sentence for the caller."""


def reply_bytes(reply: dict[str, Any]) -> int:
    """The reply's size as RunPod sends it on, its JSON encoding, without encoding the images a second time:
    base64 text needs no escaping in JSON, so each image adds exactly its own length."""
    images = reply["images"]
    return len(json.dumps({**reply, "images": [""] * len(images)}).encode()) + sum(len(image) for image in images)


def deliver(reply: dict[str, Any], job_id: str, output: str | None, limit_mb: int,
            bucket: Bucket | None) -> dict[str, Any]:
    """`reply` (base64 images) as it goes back: unchanged, or with bucket URLs in place of the images."""
    size, limit = reply_bytes(reply), limit_mb * 1_000_000
    over = size > limit
    if output == "url" or (output is None and over and bucket is not None):
        if bucket is None:
            raise DeliveryError('output "url" needs a bucket: set BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, '
                                "BUCKET_SECRET_ACCESS_KEY and BUCKET_NAME on the endpoint.")
        started = time.perf_counter()
        uploads = bucket.upload(job_id, [base64.b64decode(image) for image in reply["images"]], reply["seeds"],
                                reply["format"])
        sent = {**reply, "images": [u.url for u in uploads], "output": "url",
                "timings": {**reply["timings"], "upload_s": round(time.perf_counter() - started, 3)}}
        if output is None:
            sent["output_note"] = (f"The reply would have been {size / 1e6:.1f} MB, over RESULT_MAX_MB={limit_mb}: "
                                   "the images were uploaded to the bucket.")
        return sent
    if over:
        remedy = 'send output "url"' if bucket is not None else "configure a bucket (BUCKET_*) to get URLs"
        raise DeliveryError(
            f"The reply would be {size / 1e6:.1f} MB, over RESULT_MAX_MB={limit_mb} (RunPod drops results over "
            f"{RUNPOD_RUNSYNC_LIMIT_MB} MB): use output_format jpeg or webp, a lower quality, fewer images or a "
            f"smaller size, or {remedy}.")
    return {**reply, "output": "base64"}
