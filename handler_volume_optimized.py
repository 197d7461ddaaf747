"""RunPod serverless entrypoint: PhotonicFusion SDXL from a network volume, offline.

Starts the worker (sdxl_worker/serving/worker.py: settings -> volume check -> load plan -> load -> speed options ->
warm-up -> freeze shapes), then runpod.serverless.start with its handler; `--test` is the self-test.

    python handler_volume_optimized.py                       # serverless worker (RunPod)
    python handler_volume_optimized.py --test [--out FILE]   # self-test: check, load, one image
    python handler_volume_optimized.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
    python handler_volume_optimized.py --test_input '{"input": {"prompt": "..."}}' | jq .   # the reply alone
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from sdxl_worker.sentences import without_packages

try:
    from sdxl_worker.loading.plan import reader_name
    from sdxl_worker.serving.models import start_from_env
    from sdxl_worker.serving.runpod_handler import RunpodHandler
    from sdxl_worker.serving.stack_test import STACK_TEST_VARIANT
except ModuleNotFoundError as missing:  # started by a Python without the worker's packages
    raise SystemExit(without_packages(missing, "handler_volume_optimized.py")) from None


def self_test(out: Path | None) -> int:
    """--test: settings, volume check, load, one generation through the handler; ✅/❌ lines, exit 0 or 1."""
    started = time.perf_counter()
    models = start_from_env(warmup=False)
    worker = models.first  # the others are checked in the start's log
    report = worker.report
    if worker.record is not None and worker.record.variant == STACK_TEST_VARIANT:
        print("⚠️ stack test (STACK_TEST=1, no volume): a tiny random-weight SDXL built in memory; the images are "
              "noise, this checks the image's libraries and the job path, not the model")
    elif report is None:
        print(f"❌ settings: {worker.startup_error}")
        return 1
    elif not report.loadable:
        print(report.render())
        print(f"❌ volume check: {report.summary()}")
        return 1
    else:
        print(f"✅ volume check: {report.summary()} ({report.timing()})")
    if worker.pipe is None:
        print(f"❌ load: {worker.startup_error}")
        return 1
    record = worker.record
    start_s = time.perf_counter() - started
    # The load alone (the weights read and placed); the start also imports torch and the libraries and checks the
    # volume, said apart so that a slow read is not hidden behind them or blamed for them.
    if record.variant == STACK_TEST_VARIANT:
        print(f"✅ build: random weights as {record.dtype} on {record.device}, attention {worker.speed.attention}, "
              f"{record.seconds:.2f} s; start {start_s:.2f} s in all")
    else:
        print(f"✅ load: {record.variant} weights as {record.dtype} on {record.device}, "
              f"attention {worker.speed.attention}, {record.bytes_read / 1e9:.2f} GB in {record.seconds:.2f} s by "
              f"{reader_name(record.streams)} ({record.streams_reason}); start {start_s:.2f} s in all")
    size, steps = (1024, 30) if record.device.startswith("cuda") else (256, 4)
    job = {"prompt": "a photonic lighthouse on a cliff at dusk, volumetric light", "width": size, "height": size,
           "num_inference_steps": steps, "seed": 0}
    result = worker.handle({"id": "self-test", "input": job})
    if "error" in result:
        print(f"❌ generation: {result['error']}")
        return 1
    t = result["timings"]
    print(f"✅ generation: {size}x{size}, {steps} steps, seed {result['seed']}: "
          f"inference {t['inference_s']:.2f} s, encode {t['encode_s']:.2f} s, total {t['total_s']:.2f} s")
    from PIL import Image

    data = base64.b64decode(result["images"][0])
    image = Image.open(io.BytesIO(data))
    if image.size != (size, size):
        print(f"❌ output: decoded image is {image.size}, expected {(size, size)}")
        return 1
    saved = ""
    if out is not None:
        out.write_bytes(data)
        saved = f", saved to {out}"
    print(f"✅ output: {result['format']} decodes to {image.size[0]}x{image.size[1]} ({len(data):,} bytes){saved}")
    return 0


class Arguments(argparse.ArgumentParser):
    """The worker's flags; --help lists runpod's too, which pass through to runpod.serverless.start."""

    def format_help(self) -> str:
        from runpod.serverless import parser as runpod_parser

        runpod_flags = runpod_parser.format_help().split("options:", 1)[-1]
        return f"{super().format_help()}\nrunpod's flags (passed through to runpod.serverless.start):{runpod_flags}"


def main(argv: list[str] | None = None) -> int:
    parser = Arguments(description="PhotonicFusion SDXL RunPod worker: serves SDXL from the network volume, offline")
    parser.add_argument("--test", action="store_true", help="self-test: check, load, generate one image, exit")
    parser.add_argument("--out", type=Path, help="with --test: save the image here")
    args, runpod_args = parser.parse_known_args(argv)
    if args.out and not args.test:
        parser.error("--out goes with --test")
    if args.test:
        return self_test(args.out)
    # runpod logs whole job results (base64 images) at INFO and DEBUG; keep its own logger at WARN.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "WARN")
    sys.argv = [sys.argv[0], *runpod_args]
    # On RunPod (its job queue's address set) or serving the local API: the worker as it runs there. Otherwise
    # runpod runs one job here (--test_input, or ./test_input.json when none is given): its reply alone goes to
    # stdout, for `| jq`, and the logs to stderr.
    one_job = "--rp_serve_api" not in runpod_args and not os.environ.get("RUNPOD_WEBHOOK_GET_JOB")
    if one_job and "--test_input" not in runpod_args:
        print(f"Not on RunPod and no --test_input: runpod runs ./test_input.json once ({_describe_test_input()}); "
              "--help for the self-test and the local API.", file=sys.stderr)
    reply_out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr) if one_job else contextlib.nullcontext():
        models = start_from_env()
        import runpod

        handler = RunpodHandler(models)
        if one_job:  # one reply to print: nothing to stream to
            runpod.serverless.start({"handler": printing(handler.reply, reply_out)})
        else:
            # STREAM=1: /run and /runsync answer the stream's chunks as a list (the reply last), as RunPod documents.
            runpod.serverless.start({"handler": handler.for_runpod(), "return_aggregate_stream": True})
    return 0


def _describe_test_input() -> str:
    try:
        job = json.loads(Path("test_input.json").read_text())["input"]
        return f"{job.get('width', 1024)}x{job.get('height', 1024)}, {job.get('num_inference_steps', 30)} steps"
    except (OSError, ValueError, KeyError, TypeError):
        return "a readable one is needed in the current folder"


def printing(handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
             out: TextIO) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]:
    """`handler`, printing each reply to `out` as JSON with its images summarised (runpod's local run prints
    none)."""

    async def handle_and_print(job: dict[str, Any]) -> dict[str, Any]:
        reply = await handler(job)
        print(json.dumps(summarise(reply)), file=out, flush=True)
        return reply

    return handle_and_print


def summarise(reply: dict[str, Any]) -> dict[str, Any]:
    """The reply with each base64 image replaced by its format, size and length (URLs are shown as they are)."""
    if "images" not in reply or reply.get("output") == "url":
        return reply
    return {**reply, "images": [f"<{reply['format']} {reply['width']}x{reply['height']}, {len(image):,} base64 "
                                "characters>" for image in reply["images"]]}


if __name__ == "__main__":
    sys.exit(main())
