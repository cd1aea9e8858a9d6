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


def test_a_recording_upload_takes_a_background_as_dotted_fields(tmp_path):
    """POST /briefs/speech (the studio's Create video with a recording): `background.color`, `background.blur`, …
    become the brief's `background:` exactly as schemas/background.py has it, and its job composes after rendering.
    A background the bucket does not hold, or a bad value, is refused on its field before anything is kept."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from core.avatars import AvatarRegistry
    from real_media import media_file
    from schemas.avatar import AvatarManifest
    from schemas.brief import RenderBrief
    from triggers.api import create_app

    take = media_file("speech-en.wav").read_bytes()
    runner = make_runner(tmp_path / "bucket")
    weights = "jobs/train-ann-0000000000000000/train/wav2lip.pth"  # a deployed talking avatar: only its record is read
    runner.storage.put_bytes(weights, b"weights")
    AvatarRegistry(runner.storage).deploy(AvatarManifest(
        avatar_id="ann", job_id="train-ann-0000000000000000", backend="wav2lip", base_model="wav2lip", talks=True,
        weights_key=weights), weights)
    with TestClient(create_app(runner.settings, runner=runner)) as test_client:
        def post(fields: dict[str, str]):
            return test_client.post("/briefs/speech", headers=AUTH, data={"avatar": "ann", **fields},
                                    files={"audio": ("take.wav", take, "audio/wav")})

        refused = [
            ({"background.image": "uploads/none.png"}, "background_not_found", ["background", "image"]),
            ({"background.video": "uploads/none.mp4"}, "background_not_found", ["background", "video"]),
            ({"background.color": "#zzz"}, "invalid_color", ["background", "color"]),
            ({"background.blur": "0"}, "invalid_field_value", ["background", "blur"]),
            ({"background.matte": "false"}, "invalid_field_value", ["background", "matte"]),
            ({"background.matte": "true", "background.format": "gif"}, "unsupported_matte_format",
             ["background", "format"]),
            ({"background.color": "white", "background.blur": "3"}, "invalid_background", ["background"]),
        ]
        for fields, code, loc in refused:
            response = post(fields)
            assert (response.status_code, response.json()["code"]) == (422, code), (fields, response.text)
            assert response.json()["details"][0]["loc"] == loc, (fields, response.json())
        assert runner.storage.list_keys("uploads/") == [] and runner.storage.list_keys("inbox/") == []
        assert list(runner.store.all()) == []
        # POST /briefs answers the same places, for a compose brief too (the kind's tag is no part of them).
        for text, loc in ((b"prompt: a cat\nbackground: {image: uploads/none.png}\n", ["background", "image"]),
                          (b"kind: compose\nvideo: uploads/a.mp4\nbackground: {color: '#zzz'}\n",
                           ["background", "color"])):
            answer = test_client.post("/briefs", headers=YAML, content=text).json()
            assert answer["details"][0]["loc"] == loc, answer

        png = io.BytesIO()
        Image.new("RGB", (32, 18), (11, 95, 255)).save(png, format="PNG")
        runner.storage.put_bytes("uploads/backdrops/office.png", png.getvalue())
        accepted = [
            ({"background.color": "#0B5FFF"}, {"color": "#0b5fff"}),
            ({"background.blur": "12", "background.feather": "3"}, {"blur": 12.0, "feather": 3.0}),
            ({"background.image": "uploads/backdrops/office.png", "background.fit": "contain"},
             {"image": "uploads/backdrops/office.png", "fit": "contain"}),
            ({"background.matte": "true", "background.format": "mov"}, {"matte": True, "format": "mov"}),
        ]
        for fields, background in accepted:
            response = post(fields)
            assert response.status_code == 201, (fields, response.text)
            written = yaml.safe_load(runner.storage.get_bytes(response.json()["brief_key"]))
            assert written["background"] == background and written["audio"].startswith("uploads/ann/speech/")
            job_id = response.json()["job_id"]
            assert list(runner.store.load(job_id).stages) == ["prepare", "render", "compose"]
            assert runner.work_once(job_id=job_id)  # prepare: the brief becomes the job's request
            job = runner.store.load(job_id)
            assert job.stages["prepare"].status.value == "succeeded", job.error
            assert isinstance(job.request, RenderBrief)
            assert job.request.background == type(job.request.background).model_validate(background)
