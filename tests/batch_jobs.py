"""Helpers for the batch tests: batch files of tiny renders, a real webhook receiver, and driving a runner
until its queue is empty (in process, as `videostudio up`'s worker does, in lease order)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core.queue import Lease
from core.runner import Runner
from schemas.batch import BatchManifest
from schemas.events import StorageEvent

# The cheapest real render the brief allows: one 16×16 frame, two steps, the tiny random-weights Mochi.
TINY_DEFAULTS = {"model": "tiny", "steps": 2, "num_frames": 1, "fps": 1, "width": 16, "height": 16}
TINY_SINGLE = "prompt: a single brief\nmodel: tiny\nsteps: 2\nnum_frames: 1\nfps: 1\nwidth: 16\nheight: 16\n"


def tiny_csv(rows: int, *, bad: dict[int, str] | None = None, webhook: str | None = None,
             item_events: bool = False) -> str:
    """A CSV batch of `rows` tiny renders; `bad` maps a 0-based row to the raw CSV line that replaces it."""
    header = [f"# defaults: {json.dumps(TINY_DEFAULTS)}"]
    if webhook:
        header.append(f"# webhook: {json.dumps({'url': webhook, 'item_events': item_events})}")
    lines = header + ["prompt,seed,guidance_scale"]
    for n in range(rows):
        lines.append((bad or {}).get(n, f"item {n},{n},4.5"))
    return "\n".join(lines) + "\n"


def submit_batch(runner: Runner, name: str, text: str, *, source: str = "cli") -> tuple[str, bool]:
    runner.storage.put_bytes(f"inbox/{name}", text.encode())
    return runner.submit(StorageEvent(bucket=runner.storage.name, key=f"inbox/{name}", source=source))


def work_all(runner: Runner, *, on_lease=None, limit: int = 1_000_000) -> int:
    """Lease and process messages in the queue's own order until none is ready; how many were processed."""
    processed = 0
    while processed < limit:
        lease: Lease | None = runner.queue.get(lease_s=runner.settings.lease_s)
        if lease is None:
            return processed
        if on_lease is not None:
            on_lease(lease)
        runner.process(lease)
        processed += 1
    return processed


def wait_batch(runner: Runner, batch_id: str, *, timeout: float = 60.0) -> BatchManifest:
    """Work (and reconcile, for retries whose delay has not passed) until the batch has completed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        work_all(runner)
        manifest = runner.batches.store.load(batch_id)
        if manifest is not None and manifest.status.terminal and not any(
                d.status == "pending" for d in manifest.webhooks):
            return manifest
        time.sleep(0.05)
    raise AssertionError(f"batch {batch_id} not finished: {runner.batches.store.load(batch_id)}")


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 that keeps every POST (headers and body) and answers 204."""

    hits: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.hits.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def of_type(self, kind: str) -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in self.hits if json.loads(b)["type"] == kind]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
