"""The typed records stages hand on: one accessor, clear codes for a missing or malformed record."""

from __future__ import annotations

import pytest

from core.jobs import new_manifest
from core.settings import Settings
from core.stage import StageContext
from core.storage import LocalStorage
from schemas.brief import RenderBrief, TrainBrief
from schemas.errors import VideostudioError
from schemas.handoff import AlignOutput
from schemas.manifest import InputRecord, JobManifest

ALIGNED = {"faces_prefix": "jobs/j/align/faces/", "metadata_key": "jobs/j/align/metadata.jsonl",
           "dataset_key": "jobs/j/align/dataset.json", "contact_sheet_key": "jobs/j/align/contact_sheet.png",
           "splits": {"train": 85, "val": 10, "test": 5}}


def context(tmp_path, manifest: JobManifest, stage: str = "train") -> StageContext:
    return StageContext(job_id=manifest.job_id, stage=stage, attempt=1, manifest=manifest,
                        storage=LocalStorage(tmp_path), settings=Settings(bucket=str(tmp_path)), scratch=tmp_path,
                        _progress=lambda *args: None, _cancel_requested=lambda: False)


def train_job() -> JobManifest:
    manifest = new_manifest("j", "train", InputRecord(key="inbox/j.yaml"), ["prepare", "align", "train", "render"])
    manifest.request = TrainBrief(kind="train", avatar="ann", video="uploads/ann.mp4")
    return manifest


def test_a_later_stage_reads_the_typed_record(tmp_path):
    manifest = train_job()
    manifest.stages["align"].handoff = ALIGNED
    aligned = context(tmp_path, manifest).handoff(AlignOutput)
    assert isinstance(aligned, AlignOutput) and aligned.splits["val"] == 10


@pytest.mark.parametrize("record, code", [
    (None, "missing_stage_output"),
    ({**ALIGNED, "splits": "many"}, "invalid_stage_output"),
    ({k: v for k, v in ALIGNED.items() if k != "metadata_key"}, "invalid_stage_output"),
    ({**ALIGNED, "extra": 1}, "invalid_stage_output"),
])
def test_a_missing_or_malformed_record_fails_with_its_code(tmp_path, record, code):
    manifest = train_job()
    manifest.stages["align"].handoff = record
    with pytest.raises(VideostudioError) as caught:
        context(tmp_path, manifest).handoff(AlignOutput)
    assert caught.value.code == code and "AlignOutput" in caught.value.message


def test_the_request_round_trips_to_its_exact_brief_model():
    manifest = train_job()
    again = JobManifest.model_validate_json(manifest.model_dump_json())
    assert type(again.request) is TrainBrief and again.request == manifest.request
    manifest.request = RenderBrief(prompt="a red kite")
    assert type(JobManifest.model_validate_json(manifest.model_dump_json()).request) is RenderBrief


def test_a_stage_asking_for_the_wrong_brief_kind_fails_clearly(tmp_path):
    with pytest.raises(VideostudioError) as caught:
        context(tmp_path, train_job()).brief(RenderBrief)
    assert caught.value.code == "missing_request"
