"""POST /briefs with backgrounds: a compose brief's video and any background image or clip are checked while the
client is still there (the same codes prepare would fail the job with), and a good one is queued as a compose job."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from test_api import YAML, make_runner
from triggers.api import create_app


@pytest.fixture
def client(tmp_path):
    runner = make_runner(tmp_path / "bucket")
    runner.storage.put_bytes("uploads/a.mp4", b"bytes prepare would probe")
    runner.storage.put_bytes("uploads/photo.png", b"bytes prepare would decode")
    with TestClient(create_app(runner.settings, runner=runner)) as test_client:
        yield test_client, runner


@pytest.mark.parametrize("text, code", [
    ("kind: compose\nvideo: uploads/none.mp4\nbackground: {blur: 4}\n", "video_not_found"),
    ("kind: compose\nvideo: inbox/a.mp4\nbackground: {blur: 4}\n", "invalid_video_key"),
    ("kind: compose\nvideo: uploads/a.mp4\nbackground: {image: uploads/none.png}\n", "background_not_found"),
    ("prompt: a cat\nbackground: {video: uploads/none.mp4}\n", "background_not_found"),
    ("kind: compose\nvideo: uploads/a.mp4\nbackground: {color: '#zzz'}\n", "invalid_color"),
])
def test_bad_references_are_refused_at_once(client, text, code):
    test_client, _ = client
    response = test_client.post("/briefs", content=text.encode(), headers=YAML)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code


def test_a_good_compose_brief_is_queued_as_a_compose_job(client):
    test_client, runner = client
    text = "kind: compose\nvideo: uploads/a.mp4\nbackground: {image: uploads/photo.png, fit: contain}\n"
    response = test_client.post("/briefs", content=text.encode(), headers=YAML, params={"name": "bg"})
    assert response.status_code == 201, response.text
    job = runner.store.load(response.json()["job_id"])
    assert job.kind == "compose" and list(job.stages) == ["prepare", "compose"]
