"""Webhooks: Standard Webhooks signatures, ids, URL redaction, one POST against a real local server, backoff."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core.webhooks import (
    USER_AGENT,
    generate_secret,
    next_delay,
    post_once,
    redact_url,
    signed_headers,
    webhook_id,
)

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a fixed, valid base64 secret
BODY = json.dumps({"type": "job.succeeded", "data": {"job_id": "sunrise-0123456789abcdef"}}).encode()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The local server must be reached directly even where a proxy is configured.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


# -- signatures --------------------------------------------------------------

def test_signed_headers_verify_with_standardwebhooks() -> None:
    msg_id = webhook_id("job-1", "job.succeeded", "https://example.com/hook")
    headers = signed_headers(SECRET, msg_id, BODY)
    assert headers["webhook-id"] == msg_id
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == USER_AGENT
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(BODY, headers) == json.loads(BODY)


def test_tampered_body_fails_verification() -> None:
    headers = signed_headers(SECRET, "msg_abc", BODY)
    tampered = BODY.replace(b"succeeded", b"failed")
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(tampered, headers)


def test_wrong_secret_or_changed_id_fails_verification() -> None:
    headers = signed_headers(SECRET, "msg_abc", BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(BODY, {**headers, "webhook-id": "msg_other"})


def test_signature_with_explicit_time_in_any_zone() -> None:
    now = datetime.now(timezone.utc)
    for tz in (timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))):
        headers = signed_headers(SECRET, "msg_tz", BODY, now=now.astimezone(tz))
        assert int(headers["webhook-timestamp"]) == int(now.timestamp())
        Webhook(SECRET).verify(BODY, headers)


def test_unsigned_when_no_secret() -> None:
    headers = signed_headers(None, "msg_abc", BODY)
    assert "webhook-signature" not in headers
    assert headers["webhook-id"] == "msg_abc"


def test_generate_secret_is_usable_and_random() -> None:
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    Webhook(first).verify(BODY, signed_headers(first, "msg_x", BODY))


# -- ids and redaction -------------------------------------------------------

def test_webhook_id_stable_and_distinct() -> None:
    a = webhook_id("job-1", "job.succeeded", "https://example.com/hook")
    assert a == webhook_id("job-1", "job.succeeded", "https://example.com/hook")
    assert a.startswith("msg_")
    others = {
        webhook_id("job-1", "job.failed", "https://example.com/hook"),
        webhook_id("job-1", "stage.started", "https://example.com/hook"),
        webhook_id("job-2", "job.succeeded", "https://example.com/hook"),
        webhook_id("job-1", "job.succeeded", "https://example.com/other"),
    }
    assert a not in others and len(others) == 4


@pytest.mark.parametrize("url,expected", [
    ("https://user:pw@example.com:8443/hook?token=abc#frag", "https://example.com:8443/hook"),
    ("https://example.com/hook?sig=secret", "https://example.com/hook"),
    ("https://token@example.com/a/b", "https://example.com/a/b"),
    ("http://127.0.0.1:9000/cb", "http://127.0.0.1:9000/cb"),
    ("http://[::1]:8080/x?t=1", "http://[::1]:8080/x"),
])
def test_redact_url(url: str, expected: str) -> None:
    redacted = redact_url(url)
    assert redacted == expected
    for secret in ("pw", "token", "abc", "secret", "frag", "t=1"):
        if secret not in expected:
            assert secret not in redacted


# -- post_once against a real local server -----------------------------------

class _Handler(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if self.path == "/slow":
            time.sleep(1.0)
        status, extra = {
            "/ok": (200, {}),
            "/accepted": (204, {}),
            "/error": (500, {}),
            "/busy": (429, {"Retry-After": "7"}),
            "/busy-date": (503, {"Retry-After": format_datetime(datetime.now(timezone.utc) + timedelta(seconds=120),
                                                               usegmt=True)}),
            "/gone": (410, {}),
            "/bad": (400, {}),
            "/redirect": (302, {"Location": "/ok"}),
        }.get(self.path, (404, {}))
        self.send_response(status)
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    _Handler.received = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_post_once_200_delivers_signed_body(server: str) -> None:
    headers = signed_headers(SECRET, "msg_ok", BODY)
    outcome = post_once(f"{server}/ok", BODY, headers, timeout_s=5)
    assert outcome.delivered is True
    assert outcome.status_code == 200
    assert outcome.error is None
    assert outcome.retryable is False
    assert outcome.disables_endpoint is False
    assert outcome.duration_ms > 0
    [(path, got_headers, got_body)] = _Handler.received
    assert path == "/ok"
    assert got_body == BODY
    assert Webhook(SECRET).verify(got_body, got_headers) == json.loads(BODY)  # what the receiver would do


def test_post_once_2xx_other_than_200(server: str) -> None:
    assert post_once(f"{server}/accepted", BODY, {}, timeout_s=5).delivered is True


def test_post_once_500_is_retryable(server: str) -> None:
    outcome = post_once(f"{server}/error", BODY, signed_headers(SECRET, "m", BODY), timeout_s=5)
    assert outcome.delivered is False
    assert outcome.status_code == 500
    assert outcome.error == "HTTP 500"
    assert outcome.retryable is True
    assert outcome.disables_endpoint is False
    assert outcome.retry_after_s is None


def test_post_once_429_with_retry_after(server: str) -> None:
    outcome = post_once(f"{server}/busy", BODY, {}, timeout_s=5)
    assert outcome.status_code == 429
    assert outcome.delivered is False
    assert outcome.retryable is True
    assert outcome.retry_after_s == 7.0


def test_post_once_retry_after_http_date(server: str) -> None:
    outcome = post_once(f"{server}/busy-date", BODY, {}, timeout_s=5)
    assert outcome.status_code == 503
    assert outcome.retryable is True
    assert 100 < outcome.retry_after_s <= 120


def test_post_once_410_disables_endpoint(server: str) -> None:
    outcome = post_once(f"{server}/gone", BODY, {}, timeout_s=5)
    assert outcome.status_code == 410
    assert outcome.delivered is False
    assert outcome.disables_endpoint is True
    assert outcome.retryable is False


def test_post_once_4xx_is_final_and_redirects_not_followed(server: str) -> None:
    bad = post_once(f"{server}/bad", BODY, {}, timeout_s=5)
    assert (bad.status_code, bad.delivered, bad.retryable, bad.disables_endpoint) == (400, False, False, False)
    redirect = post_once(f"{server}/redirect", BODY, {}, timeout_s=5)
    assert redirect.status_code == 302
    assert redirect.delivered is False
    assert [path for path, _, _ in _Handler.received] == ["/bad", "/redirect"]  # /ok never hit


def test_post_once_timeout_is_retryable(server: str) -> None:
    outcome = post_once(f"{server}/slow", BODY, {}, timeout_s=0.2)
    assert outcome.delivered is False
    assert outcome.status_code is None
    assert outcome.retryable is True
    assert "Timeout" in outcome.error


def test_post_once_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # nothing listens on `port` now
    outcome = post_once(f"http://127.0.0.1:{port}/hook", BODY, {}, timeout_s=2)
    assert outcome.delivered is False
    assert outcome.status_code is None
    assert outcome.retryable is True
    assert outcome.disables_endpoint is False
    assert outcome.error and "Connect" in outcome.error


# -- backoff -----------------------------------------------------------------

def test_next_delay_bounded_by_cap() -> None:
    for attempt in range(1, 40):
        for _ in range(20):
            delay = next_delay(attempt, base_s=2.0, cap_s=30.0)
            assert 0.0 <= delay <= 30.0
    # early attempts stay under the exponential bound, not the cap
    assert all(next_delay(1, base_s=2.0, cap_s=30.0) <= 2.0 for _ in range(50))
    assert all(next_delay(3, base_s=2.0, cap_s=30.0) <= 8.0 for _ in range(50))
    # full jitter: not a constant
    assert len({next_delay(10, base_s=2.0, cap_s=30.0) for _ in range(20)}) > 1


def test_next_delay_honours_retry_after() -> None:
    for attempt in (1, 2, 5, 20):
        for _ in range(20):
            delay = next_delay(attempt, base_s=1.0, cap_s=60.0, retry_after_s=7.0)
            assert 7.0 <= delay <= 60.0
    # a receiver asking for longer than the cap wins, exactly
    assert next_delay(1, base_s=1.0, cap_s=60.0, retry_after_s=300.0) == 300.0
    # Retry-After: 0 does not force an immediate retry below the backoff bound
    assert all(0.0 <= next_delay(4, base_s=1.0, cap_s=60.0, retry_after_s=0.0) <= 8.0 for _ in range(20))
