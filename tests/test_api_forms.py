"""What the web studio's forms read from the API: GET /info (limits, file types, backends and their own
options), field errors (`details`) on an invalid brief, and dotted multipart fields for nested options."""

from __future__ import annotations

import os

import yaml

from functions.backends import BACKENDS
from schemas.brief import MAX_SCRIPT_CHARS, TrainBrief
from tests.test_api import AUTH, YAML, client, make_runner, runner  # noqa: F401  (fixtures)


def test_info_names_the_upload_limit_file_types_and_every_backend(tmp_path):
    from fastapi.testclient import TestClient

    from triggers.api import create_app

    small = make_runner(tmp_path / "bucket", api_max_upload_bytes=1234)
    with TestClient(create_app(small.settings, runner=small)) as test_client:
        assert test_client.get("/info").status_code == 401
        info = test_client.get("/info", headers=AUTH).json()
    assert info["max_upload_bytes"] == 1234 and info["max_script_chars"] == MAX_SCRIPT_CHARS
    assert ".mp4" in info["video_suffixes"] and ".wav" in info["audio_suffixes"]
    by_name = {b["name"]: b for b in info["backends"]}
    assert set(by_name) == set(BACKENDS)
    assert by_name["wav2lip"]["talks"] is True and by_name["mochi-lora"]["talks"] is False
    assert all(b["summary"] for b in info["backends"])


def test_every_backends_own_options_are_train_brief_fields():
    fields = set(TrainBrief.model_fields)
    for backend in BACKENDS.values():
        assert set(backend.brief_options) <= fields, backend.name
    # No field belongs to two backends: the studio shows each under one backend's name.
    owned = [name for backend in BACKENDS.values() for name in backend.brief_options]
    assert len(owned) == len(set(owned))


def test_an_invalid_brief_answers_each_fields_error(client):
    response = client.post("/briefs", headers=YAML, content=b"prompt: hi\nsteps: 1\nwidht: 64\n")
    assert response.status_code == 422
    body = response.json()
    assert {tuple(d["loc"]): d["type"] for d in body["details"]} == {("steps",): "invalid_steps",
                                                                     ("widht",): "extra_forbidden"}
    nested = client.post("/briefs", headers=YAML, content=b"kind: train\navatar: a\nwav2lip:\n  width: 7\n").json()
    assert [d["loc"] for d in nested["details"]] == [["wav2lip", "width"]]
    # A rule across fields has no one field: its location is the brief itself.
    pair = client.post("/briefs", headers=YAML, content=b"avatar: a\nscript: Hi\naudio: x.wav\n").json()
    assert pair["code"] == "conflicting_speech" and pair["details"][0]["loc"] == []


def test_dotted_form_fields_set_nested_options(client, runner):
    video = b"\x00\x00\x00\x18ftypmp42" + os.urandom(50_000)
    response = client.post("/train", headers=AUTH, files={"video": ("ann.mp4", video, "video/mp4")},
                           data={"avatar": "ann", "backend": "wav2lip", "wav2lip.width": "0.125",
                                 "wav2lip.expert_epochs": "2", "epochs": "2"})
    assert response.status_code == 201, response.text
    written = yaml.safe_load(runner.storage.get_bytes(response.json()["brief_key"]))
    assert written["wav2lip"] == {"width": 0.125, "expert_epochs": 2} and written["epochs"] == 2
    bad = client.post("/train", headers=AUTH, files={"video": ("bob.mp4", video, "video/mp4")},
                      data={"avatar": "bob", "backend": "wav2lip", "wav2lip.width": "7"})
    assert bad.status_code == 422 and bad.json()["details"][0]["loc"] == ["wav2lip", "width"]
    clash = client.post("/train", headers=AUTH, files={"video": ("cy.mp4", video, "video/mp4")},
                        data={"avatar": "cy", "epochs": "2", "epochs.inner": "3"})
    assert clash.status_code == 422 and clash.json()["code"] == "invalid_multipart"
    assert not runner.storage.exists("uploads/bob/bob.mp4") and not runner.storage.exists("uploads/cy/cy.mp4")


def test_the_live_jobs_list_reads_a_manifest_again_only_when_it_changed(runner):
    from schemas.events import StorageEvent
    from triggers.api.live import LiveManifests

    for name in ("a", "b", "c"):
        runner.storage.put_bytes(f"inbox/{name}.yaml", b"prompt: hi\nmodel: tiny\n")
        runner.submit(StorageEvent(bucket=runner.storage.name, key=f"inbox/{name}.yaml"))
    live = LiveManifests(runner.store, min_interval_s=0.0)
    assert len(live.manifests()) == 3 and live.reads == 3
    assert len(live.manifests()) == 3 and live.reads == 3  # nothing changed: one listing, no reads
    job_id = next(iter(runner.store.job_ids()))
    runner.store.update(job_id, lambda m: m.warnings.append("changed"))
    changed = {m.job_id: m for m in live.manifests()}
    assert live.reads == 4 and changed[job_id].warnings == ["changed"]
    shared = LiveManifests(runner.store, min_interval_s=60.0)
    shared.manifests()
    runner.store.update(job_id, lambda m: m.warnings.append("again"))
    assert {m.job_id: m for m in shared.manifests()}[job_id].warnings == ["changed"]  # within its interval
