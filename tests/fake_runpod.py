"""RunPod's job API as runpod's worker loop calls it (job-take, job-stop, job-done, job-stream), on loopback: the
test hands out jobs and stop signals and reads what the worker posted, in order."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

POLL_S = 2.0  # how long a job-take or job-stop poll is held open with nothing to hand out


@dataclass(frozen=True)
class Post:
    kind: str  # "done" (results and progress updates) or "stream"
    job_id: str
    body: dict[str, Any]
    at: float


class FakeRunpod:
    def __init__(self) -> None:
        self.jobs: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stops: queue.Queue[str] = queue.Queue()
        self.posts: list[Post] = []
        self.changed = threading.Condition()
        self.base = ""

    def env(self) -> dict[str, str]:
        """The variables RunPod sets on a worker, pointing at this server."""
        return {"RUNPOD_WEBHOOK_GET_JOB": f"{self.base}/job-take/$ID?gpu=none",
                "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.base}/job-done/$RUNPOD_POD_ID/$ID?",
                "RUNPOD_WEBHOOK_POST_STREAM": f"{self.base}/job-stream/$RUNPOD_POD_ID/$ID?",
                "RUNPOD_POD_ID": "test-worker"}

    def wait_for(self, found: Callable[[list[Post]], Any], timeout_s: float, what: str) -> Any:
        """The first truthy `found(posts)` as posts arrive; AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not (result := found(list(self.posts))):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout_s:g} s; posts: "
                                         f"{[(p.kind, p.job_id, sorted(p.body)) for p in self.posts]}")
                self.changed.wait(left)
        return result

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def _json(self, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _empty(self) -> None:
                self.send_response(204)
                self.end_headers()

            def do_GET(self) -> None:
                source = fake.jobs if self.path.startswith("/job-take/") else fake.stops
                try:
                    item = source.get(timeout=POLL_S)
                except queue.Empty:
                    return self._empty()
                return self._json(item if source is fake.jobs else {"jobsToStop": [item]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                parts = self.path.split("?")[0].split("/")  # /job-done/<worker>/<job id>
                with fake.changed:
                    fake.posts.append(Post(parts[1].removeprefix("job-"), parts[3], body, time.monotonic()))
                    fake.changed.notify_all()
                self.send_response(200)
                self.end_headers()

        return Handler

    @contextmanager
    def serving(self) -> Iterator[FakeRunpod]:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        server.daemon_threads = True
        self.base = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
