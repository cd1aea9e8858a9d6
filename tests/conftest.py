"""Shared fixtures: a real HTTP webhook receiver, `videostudio up` as a subprocess, and waiting helpers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
CLI = str(Path(sys.executable).with_name("videostudio"))
TEST_SECRET = "whsec_" + "dGVzdC1zZWNyZXQtZm9yLXZpZGVvc3R1ZGlvLXRlc3Rz"  # base64 of a test-only key

TINY_BRIEF = """\
prompt: "A serene mountain landscape at dawn"
preset: fast
steps: {steps}
num_frames: 13
fps: 12
width: 64
height: 48
seed: {seed}
model: tiny
"""


@dataclass
class ReceivedHook:
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that records every POST; `responses` scripts its status codes."""

    url: str
    received: list[ReceivedHook] = field(default_factory=list)
    responses: list[tuple[int, dict[str, str]]] = field(default_factory=list)

    def wait_for(self, predicate: Callable[[list[ReceivedHook]], bool], timeout: float = 60.0) -> list[ReceivedHook]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.received):
                return self.received
            time.sleep(0.05)
        raise AssertionError(f"webhook receiver: condition not met in {timeout}s; got {len(self.received)} requests")

    def events(self) -> list[str]:
        return [json.loads(hook.body)["type"] for hook in self.received]


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver: WebhookReceiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            receiver.received.append(ReceivedHook({k.lower(): v for k, v in self.headers.items()}, body))
            status, headers = receiver.responses.pop(0) if receiver.responses else (200, {})
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = WebhookReceiver(url=f"http://127.0.0.1:{server.server_port}/hooks/videostudio")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


def drop_by_rename(bucket: Path, name: str, content: str | bytes) -> Path:
    """Write a hidden temp file in inbox/ and rename it into place, as careful uploaders do."""
    inbox = bucket / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    tmp = inbox / f".{name}.uploading"
    tmp.write_bytes(content.encode() if isinstance(content, str) else content)
    final = inbox / name
    os.replace(tmp, final)
    return final


def find_job(bucket: Path, input_key: str) -> dict | None:
    for path in sorted((bucket / "jobs").glob("*/manifest.json")):
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, FileNotFoundError):
            continue
        if manifest["input"]["key"] == input_key:
            return manifest
    return None


def wait_for_job(bucket: Path, input_key: str, predicate: Callable[[dict], bool] | None = None,
                 timeout: float = 120.0, proc: subprocess.Popen | None = None) -> dict:
    """Poll until the job for `input_key` satisfies `predicate` (default: finished)."""
    predicate = predicate or (lambda m: m["status"] in ("succeeded", "failed", "cancelled"))
    deadline = time.monotonic() + timeout
    manifest = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{read_log(proc)}")
        manifest = find_job(bucket, input_key)
        if manifest is not None and predicate(manifest):
            return manifest
        time.sleep(0.1)
    raise AssertionError(f"job for {input_key} not done in {timeout}s; last manifest: {json.dumps(manifest)[:2000]}")


def worker_env(**overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "VIDEOSTUDIO_WEBHOOK_SECRET": TEST_SECRET,
        "VIDEOSTUDIO_WATCH_QUIET_S": "0.3",
        "VIDEOSTUDIO_LEASE_S": "4",
        "VIDEOSTUDIO_RECONCILE_INTERVAL_S": "1",
        "VIDEOSTUDIO_WEBHOOK_BACKOFF_BASE_S": "0.2",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(overrides)
    return env


def start_up(bucket: Path, log_path: Path, **env: str) -> subprocess.Popen:
    handle = open(log_path, "ab")
    proc = subprocess.Popen([CLI, "up", "--bucket", str(bucket)], stdout=handle, stderr=subprocess.STDOUT,
                            env=worker_env(**env), start_new_session=True, cwd=bucket.parent)
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(root: Path, log_path: Path, env: dict[str, str], *, timeout_s: float) -> tuple[subprocess.Popen, str]:
    """`videostudio serve` on a free port with the bucket `root/bucket`; returns once /health answers 200."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([CLI, "serve", "--bucket", str(root / "bucket"), "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
        time.sleep(0.2)


def read_log(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text(errors="replace")[-4000:]  # type: ignore[attr-defined]


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def up_process(tmp_path: Path):
    """Start `videostudio up` on a fresh bucket; always stopped after the test."""
    started: list[subprocess.Popen] = []

    def start(bucket: Path | None = None, **env: str) -> subprocess.Popen:
        proc = start_up(bucket or tmp_path / "bucket", tmp_path / "up.log", **env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop(proc)


# Real S3 servers for the S3 backend and the cloud journey (moto's server mode, a one-node Ceph RGW).
from s3_servers import S3Server, ceph_rgw, moto_server, s3_env, s3_server  # noqa: E402,F401
