"""Issue 7.6 — the HTTP surface, against a real `videostudio serve` (uvicorn) on 127.0.0.1.

Already covered in process (FastAPI's TestClient), not repeated here:
- tests/test_api.py::test_every_endpoint_but_health_needs_the_bearer_token (every route, three bad headers),
  ::test_traversal_and_odd_ids_are_refused, ::test_encoded_slashes_never_reach_a_handler,
  ::test_brief_names_are_sanitised, ::test_bad_briefs_are_refused_with_a_code (a 1 MB + 1 brief → 413),
  ::test_train_upload_errors_keep_nothing (upload limit, temp files removed);
- tests/test_intake.py::test_post_events_needs_the_shared_secret (POST /events: no, wrong, Basic secrets).

Here, over real HTTP: traversal in ids, names, upload file names and video keys; body limits on
declared and on streamed (chunked) bodies; POST /events without or with a wrong secret; and a
schemathesis run (`st run`) against the served OpenAPI spec that must find no 5xx.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import start_serve
from reliability import full, record

pytestmark = pytest.mark.slow

TOKEN = "http-token-0123456789abcdef"
EVENTS_SECRET = "events-secret-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPLOAD_LIMIT = 200_000
MAX_EXAMPLES = full(25, 200)
MAX_TIME_S = full(24, 300)  # the API's operations with the API token; POST /events gets a third of it


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    env = {**os.environ, "VIDEOSTUDIO_API_TOKEN": TOKEN, "VIDEOSTUDIO_EVENTS_SECRET": EVENTS_SECRET,
           "VIDEOSTUDIO_API_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT), "PYTHONUNBUFFERED": "1"}
    log_path = root / "serve.log"
    proc, base = start_serve(root, log_path, env, timeout_s=90)
    yield {"base": base, "root": root, "bucket": root / "bucket", "log": log_path}
    proc.terminate()
    proc.wait(timeout=30)


def _outside_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if "bucket" not in p.relative_to(root).parts}


def test_traversal_over_real_http_is_refused_and_writes_nothing_outside(server):
    base, bucket = server["base"], server["bucket"]
    before = _outside_files(server["root"])
    raw = [  # sent exactly as written (no client-side normalisation)
        ("GET", "/jobs/..%2F..%2Fetc%2Fpasswd"), ("GET", "/jobs/%2e%2e"), ("GET", "/jobs/..%5C..%5Cwindows"),
        ("GET", "/jobs/%2e%2e/events"), ("POST", "/jobs/%2e%2e/cancel"), ("POST", "/jobs/..%2Finbox/deploy"),
        ("GET", "/avatars/%2e%2e%2f%2e%2e"), ("DELETE", "/avatars/..%2F..%2Fjobs"), ("GET", "/jobs/%00"),
        ("GET", "/jobs/a%0a%0dSet-Cookie:x"), ("GET", "/jobs/" + "a" * 5000),
    ]
    statuses = {}
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        for method, path in raw:
            request = client.build_request(method, path)
            request.url = httpx.URL(base + path)  # keep the encoded bytes as they are
            response = client.send(request)
            statuses[path if len(path) < 80 else path[:20] + f"…({len(path)} chars)"] = response.status_code
            assert response.status_code in (400, 404, 405, 422), (method, path, response.text)
            assert response.json()["code"]
        # A brief's name, an upload's file name and a video key: sanitised or refused, never followed.
        named = client.post("/briefs", params={"name": "../../../outside"}, content=b"prompt: hi\n",
                            headers={"Content-Type": "application/yaml"})
        assert named.status_code == 201 and named.json()["brief_key"] == "inbox/outside.yaml"
        upload = client.post("/train", data={"avatar": "trav"},
                             files={"video": ("../../../../escape.mp4", b"\x00\x00\x00\x18ftypmp42" + b"0" * 64,
                                              "video/mp4")})
        assert upload.status_code == 201 and upload.json()["video_key"] == "uploads/trav/escape.mp4"
        for video in ("../outside.mp4", "uploads/../../x.mp4", "/etc/passwd.mp4", "inbox/../../x.mp4",
                      "uploads/.hidden.mp4", "uploads/%2e%2e/x.mp4"):
            response = client.post("/train", json={"avatar": "trav", "video": video})
            assert response.status_code == 422, (video, response.text)
            assert response.json()["code"] in ("invalid_key", "invalid_video_key", "video_not_found"), response.text
    assert _outside_files(server["root"]) == before  # nothing was written beside the bucket
    assert not [p for p in bucket.rglob("*") if ".." in p.name]
    record("http_traversal", {"requests": statuses})


def test_body_size_limits_on_declared_and_streamed_bodies(server):
    base = server["base"]
    big = b"prompt: " + b"x" * 1_000_001

    def chunks(data: bytes, size: int = 65536):
        for start in range(0, len(data), size):
            yield data[start:start + size]

    results = {}
    with httpx.Client(base_url=base, headers=AUTH, timeout=30) as client:
        declared = client.post("/briefs", content=big, headers={"Content-Type": "application/yaml"})
        streamed = client.post("/briefs", content=chunks(big), headers={"Content-Type": "application/yaml"})
        events = client.post("/events", content=chunks(b"[" + b" " * (1024 * 1024 + 1) + b"]"),
                             headers={"Authorization": f"Bearer {EVENTS_SECRET}", "Content-Type": "application/json"})
        upload = client.post("/train", data={"avatar": "big"},
                             files={"video": ("big.mp4", b"\x00" * (UPLOAD_LIMIT + 1), "video/mp4")})
        for name, response in (("declared", declared), ("streamed", streamed), ("events", events),
                               ("upload", upload)):
            results[name] = response.status_code
            assert response.status_code == 413, (name, response.text)
            assert response.json()["code"] == "payload_too_large"
    # A Content-Length far over the limit is refused before any body is read (raw socket: clients won't lie).
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /briefs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: application/yaml\r\nContent-Length: 99999999999\r\n\r\nprompt: hi\n".encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0].decode()
    results["content_length_99999999999"] = status_line
    assert " 413 " in status_line, status_line
    assert not list((server["bucket"] / "uploads").glob("big/*")) if (server["bucket"] / "uploads").exists() else True
    record("http_limits", results)


def test_events_endpoint_rejects_unsigned_and_wrongly_signed_requests(server):
    base = server["base"]
    body = {"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": "bucket"}, "object": {"key": "inbox/none.yaml", "size": 1}}}]}
    basic = lambda user, password: "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()  # noqa: E731
    cases = {
        "none": {},
        "wrong bearer": {"Authorization": "Bearer nope"},
        "api token (an events secret is set)": {"Authorization": f"Bearer {TOKEN}"},
        "basic wrong password": {"Authorization": basic("s3", "nope")},
        "basic no password": {"Authorization": "Basic " + base64.b64encode(EVENTS_SECRET.encode()).decode()},
        "bearer with a prefix": {"Authorization": f"Bearer x{EVENTS_SECRET}"},
        "garbage": {"Authorization": "Bearer"},
    }
    statuses = {}
    for name, headers in cases.items():
        response = httpx.post(f"{base}/events", json=body, headers=headers, timeout=10)
        statuses[name] = response.status_code
        assert response.status_code == 401 and response.json()["code"] == "unauthorized", (name, response.text)
    for name, headers in {"bearer": {"Authorization": f"Bearer {EVENTS_SECRET}"},
                          "basic": {"Authorization": basic("ceph", EVENTS_SECRET)}}.items():
        response = httpx.post(f"{base}/events", json=body, headers=headers, timeout=10)
        statuses[name] = response.status_code
        assert response.status_code == 200, response.text
    assert EVENTS_SECRET not in server["log"].read_text()
    record("http_events_auth", statuses)


def _schemathesis(server, tmp_path: Path, name: str, secret: str, max_time: int, *selection: str) -> dict:
    report = tmp_path / f"{name}.xml"
    command = [str(Path(sys.executable).with_name("st")), "run", f"{server['base']}/openapi.json",
               "--header", f"Authorization: Bearer {secret}", "--checks", "not_a_server_error", *selection,
               "--max-examples", str(MAX_EXAMPLES), "--max-time", str(max_time), "--request-timeout", "10",
               "--workers", "1", "--seed", "7", "--generation-database", "none", "--no-color",
               "--report", "junit", "--report-junit-path", str(report)]
    clock = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=max_time + 120, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated and generated.group(1) == generated.group(2), output[-3000:]
    operations = re.search(r"Tested: (\d+)", output)
    shown = " ".join(command[1:]).replace(secret, "$SECRET").replace(server["base"], "http://127.0.0.1:$PORT")
    return {"command": shown, "cases": int(generated.group(1)), "operations": int(operations.group(1)),
            "wall_s": round(time.monotonic() - clock, 1), "summary": output[output.rfind("SUMMARY"):][:1200]}


def test_schemathesis_finds_no_server_errors(server, tmp_path):
    """`st run` against the served spec (examples, coverage, fuzzing and stateful phases): no 5xx anywhere."""
    api = _schemathesis(server, tmp_path, "api", TOKEN, MAX_TIME_S, "--exclude-path", "/events")
    events = _schemathesis(server, tmp_path, "events", EVENTS_SECRET, max(10, MAX_TIME_S // 3),
                           "--include-path", "/events")
    log = server["log"].read_text()
    assert "unhandled" not in log and "Traceback" not in log, log[-3000:]
    assert api["operations"] >= 11 and events["operations"] == 1
    record("http_schemathesis", {"api": api, "events": events})
