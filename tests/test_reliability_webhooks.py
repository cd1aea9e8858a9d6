"""Issue 7.5 — webhook receivers that are down, slow, failing, rate limiting or gone.

Real HTTP servers on 127.0.0.1, one path per behaviour, and the runner in process (as
`videostudio up` runs it) with a short timeout and backoff:

- `down`: nothing listens on the port for the first attempts, then a server starts there;
- `slow`: answers after 1 s, beyond VIDEOSTUDIO_WEBHOOK_TIMEOUT_S (0.3 s), twice, then at once;
- `error`: 500, 500, then 200;
- `limited`: 429 with `Retry-After: 1`, then 200;
- `gone`: 410 — the endpoint is disabled for that job and never called again;
- `broken`: always 500, until the attempt budget (6) is spent.

Every attempt is recorded in the manifest (status code or error, and the delay chosen before
the next one); every request that reached a receiver verifies with `standardwebhooks`, and a
delivery's retries carry the same `webhook-id` and the same bytes.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from standardwebhooks.webhooks import Webhook

from conftest import TEST_SECRET
from core.queue import SqliteQueue
from core.runner import Runner
from core.settings import Settings
from core.stage import Pipeline, StageContext, StageResult
from core.storage import LocalStorage
from reliability import full, record
from schemas.brief import RenderBrief, WebhookSpec
from schemas.events import StorageEvent

JOBS_PER_BEHAVIOUR = full(3, 10)
BASE_S, CAP_S, TIMEOUT_S, MAX_ATTEMPTS = 0.2, 1.6, 0.3, 6
RETRY_AFTER_S = 1


@dataclass
class Hit:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Scripted:
    """Answers by path: a list of (status, headers, delay_s) consumed per webhook-id, then the last one repeats."""

    scripts: dict[str, list[tuple[int, dict[str, str], float]]]
    hits: list[Hit] = field(default_factory=list)
    served: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    def serve(self, port: int = 0) -> ThreadingHTTPServer:
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                scripted.hits.append(Hit(time.monotonic(), self.path, headers, body))
                steps = scripted.scripts[self.path]
                n = scripted.served[(self.path, headers["webhook-id"])]
                scripted.served[(self.path, headers["webhook-id"])] += 1
                status, extra, delay = steps[min(n, len(steps) - 1)]
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender gave up waiting (the slow receiver)

            def log_message(self, *args) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_webhook_receivers_down_slow_failing_limited_gone(tmp_path: Path):
    scripts = {
        "/slow": [(200, {}, 1.0), (200, {}, 1.0), (200, {}, 0.0)],
        "/error": [(500, {}, 0.0), (500, {}, 0.0), (200, {}, 0.0)],
        "/limited": [(429, {"Retry-After": str(RETRY_AFTER_S)}, 0.0), (200, {}, 0.0)],
        "/gone": [(410, {}, 0.0)],
        "/broken": [(500, {}, 0.0)],
        "/down": [(200, {}, 0.0)],
    }
    receiver = Scripted(scripts)
    server = receiver.serve()
    down_port = _free_port()  # nothing listens here until later
    urls = {path: f"http://127.0.0.1:{server.server_port}{path}" for path in scripts}
    urls["/down"] = f"http://127.0.0.1:{down_port}/down"

    def notify(ctx: StageContext) -> StageResult:  # as prepare does: the validated request names the webhook
        url = ctx.storage.get_bytes(ctx.input.key).decode()
        return StageResult(request=RenderBrief(prompt="hi", webhook=WebhookSpec(url=url, events=["job.succeeded",
                                                                                                "job.failed"])))

    storage = LocalStorage(tmp_path / "bucket")
    runner = Runner(storage, SqliteQueue(storage.state_dir / "queue.sqlite3", max_attempts=20),
                    Pipeline(routes={"job": ["a"]}, stages={"a": notify}, classify=lambda s, k: "job"),
                    Settings(bucket=str(storage.root), webhook_secret=TEST_SECRET, webhook_timeout_s=TIMEOUT_S,
                             webhook_backoff_base_s=BASE_S, webhook_backoff_cap_s=CAP_S,
                             webhook_max_attempts=MAX_ATTEMPTS, lease_s=30))
    jobs: dict[str, str] = {}
    for path in scripts:
        for n in range(JOBS_PER_BEHAVIOUR):
            key = f"inbox/{path.strip('/')}-{n}.txt"
            storage.put_bytes(key, urls[path].encode())
            jobs[runner.submit(StorageEvent(bucket=storage.name, key=key))[0]] = path

    late_server = None
    clock = time.monotonic()
    deadline = clock + 120
    while time.monotonic() < deadline:
        runner.work_once()
        manifests = [runner.store.load(job_id) for job_id in jobs]
        # every /down job, counted from before its webhook is even queued: the queue serves the oldest job first
        # (core/queue/sqlite.py), so a young job's stage may still be waiting while an old one's webhook retries
        down_attempts = [len(m.webhooks[0].attempts) if m.webhooks else 0 for m in manifests if jobs[m.job_id] == "/down"]
        if late_server is None and min(down_attempts) >= 2:
            late_server = receiver.serve(down_port)  # the receiver comes back up
        if all(m.webhooks and m.webhooks[0].status != "pending" for m in manifests):
            break
        time.sleep(0.01)
    time.sleep(max(0.0, 1.5 - (time.monotonic() - clock)))  # anything more would reach the receivers now
    while runner.work_once():
        pass
    server.shutdown()
    if late_server is not None:
        late_server.shutdown()

    expected = {"/slow": ("delivered", 3), "/error": ("delivered", 3), "/limited": ("delivered", 2),
                "/gone": ("disabled", 1), "/broken": ("failed", MAX_ATTEMPTS)}
    hits_by_id: dict[str, list[Hit]] = defaultdict(list)
    for hit in receiver.hits:
        payload = Webhook(TEST_SECRET).verify(hit.body, hit.headers)  # every request that arrived is signed
        assert payload["type"] == "job.succeeded"
        hits_by_id[hit.headers["webhook-id"]].append(hit)
    figures: dict[str, dict] = defaultdict(lambda: defaultdict(list))
    backoffs: list[tuple[int, float]] = []
    for job_id, path in jobs.items():
        manifest = runner.store.load(job_id)
        [delivery] = manifest.webhooks
        attempts = delivery.attempts
        hits = hits_by_id[delivery.webhook_id]
        assert len({h.body for h in hits}) <= 1 and all(h.path == path for h in hits)  # same id, same bytes
        if path == "/down":
            assert delivery.status == "delivered" and len(attempts) >= 3
            assert all(a.status_code is None and a.error for a in attempts[:-1]) and attempts[-1].status_code == 200
            assert len(hits) == 1  # the refused attempts never reached anyone; the last did
        else:
            status, count = expected[path]
            assert (delivery.status, len(attempts)) == (status, count), (path, delivery)
            assert len(hits) == count  # every attempt that reached the receiver is recorded, and only those
        if path == "/slow":
            assert all(a.status_code is None and "Timeout" in (a.error or "") for a in attempts[:2])
            assert all(a.duration_ms >= TIMEOUT_S * 1e3 * 0.9 for a in attempts[:2])
        if path == "/limited":
            assert attempts[0].status_code == 429 and attempts[0].next_retry_s >= RETRY_AFTER_S
            assert hits[1].at - hits[0].at >= RETRY_AFTER_S - 0.05  # Retry-After honoured on the wire
        if path == "/gone":
            assert attempts[0].next_retry_s is None
        for n, attempt in enumerate(attempts, start=1):
            assert attempt.attempt == n
            if n == len(attempts):
                assert attempt.next_retry_s is None
            elif path != "/limited":
                assert 0 <= attempt.next_retry_s <= min(CAP_S, BASE_S * 2 ** (n - 1)) + 1e-9, (path, attempt)
                backoffs.append((n, attempt.next_retry_s))
        for before, after, attempt in zip(hits, hits[1:], attempts):  # the wire respects the recorded delay
            assert after.at - before.at >= attempt.next_retry_s - 0.05
        figures[path]["attempts"].append(len(attempts))
        figures[path]["status"].append(delivery.status)
        figures[path]["next_retry_s"].append([a.next_retry_s for a in attempts])
        figures[path]["codes"].append([a.status_code for a in attempts])
    assert len({round(delay, 3) for _, delay in backoffs}) >= 0.8 * len(backoffs)  # full jitter: spread, not fixed
    record("webhooks", {"jobs_per_behaviour": JOBS_PER_BEHAVIOUR, "base_s": BASE_S, "cap_s": CAP_S,
                        "timeout_s": TIMEOUT_S, "max_attempts": MAX_ATTEMPTS, "retry_after_s": RETRY_AFTER_S,
                        "requests_received": len(receiver.hits), "behaviours": json.loads(json.dumps(figures)),
                        "backoffs": backoffs, "wall_s": round(time.monotonic() - clock, 1)})


class _Killed(BaseException):
    """Like SIGKILL: nothing in the runner handles it."""


def test_a_crash_between_the_commit_and_queueing_its_webhook_loses_no_event(tmp_path: Path, webhook_receiver):
    """Killed right after a stage's commit marker (or the job's last one), before its webhook was queued:
    the next worker's reconcile pass queues the events that the committed state implies, once each."""
    url = webhook_receiver.url
    events = ["job.succeeded", "job.failed", "stage.started", "stage.succeeded", "stage.failed"]

    def first(ctx: StageContext) -> StageResult:
        return StageResult(request=RenderBrief(prompt="hi", webhook=WebhookSpec(url=url, events=events)))

    def second(ctx: StageContext) -> StageResult:
        return StageResult(outputs={"out": ctx.put_output_bytes("out.txt", b"x")})

    storage = LocalStorage(tmp_path / "bucket")
    runner = Runner(storage, SqliteQueue(storage.state_dir / "queue.sqlite3", max_attempts=20),
                    Pipeline(routes={"job": ["a", "b"]}, stages={"a": first, "b": second}, classify=lambda s, k: "job"),
                    Settings(bucket=str(storage.root), webhook_secret=TEST_SECRET, lease_s=0.3,
                             webhook_backoff_base_s=0.0))
    storage.put_bytes("inbox/x.txt", b"x")
    job_id, _ = runner.submit(StorageEvent(bucket=storage.name, key="inbox/x.txt"))
    queue_event = runner._queue_webhook_event

    def dies_before(event: str):
        def hook(manifest, name, *, stage=None):
            if name == event:
                raise _Killed
            return queue_event(manifest, name, stage=stage)
        return hook

    for event in ("stage.succeeded", "job.succeeded"):  # killed after stage a's commit, then after the job's
        runner._queue_webhook_event = dies_before(event)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                runner.work_once() or time.sleep(0.01)
            raise AssertionError(f"never reached {event}")
        except _Killed:
            pass
        time.sleep(0.35)  # the dead worker's lease and heartbeat go stale
        runner._queue_webhook_event = queue_event
        runner.reconcile()  # what a restarted `videostudio up` does first
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (runner.work_once() or runner.queue.pending()):
        time.sleep(0.01)
    manifest = runner.store.load(job_id)
    assert manifest.status.value == "succeeded"
    got = sorted((d.event, d.status) for d in manifest.webhooks)
    assert got == sorted([("stage.started", "delivered"), ("stage.succeeded", "delivered"),
                          ("stage.succeeded", "delivered"), ("job.succeeded", "delivered")]), got
    received = [Webhook(TEST_SECRET).verify(h.body, h.headers) for h in webhook_receiver.received]
    assert sorted((r["type"], r["data"]["stage"]) for r in received) == sorted(
        [("stage.started", "b"), ("stage.succeeded", "a"), ("stage.succeeded", "b"), ("job.succeeded", None)])
    runner.reconcile()  # nothing more to repair: no duplicates
    assert len(runner.store.load(job_id).webhooks) == 4
