"""Job identity, the stage state machine, and create-once manifests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from core.jobs import (
    STAGE_TRANSITIONS,
    InvalidTransition,
    ManifestStore,
    derive_job_id,
    manifest_key,
    new_manifest,
    set_stage_status,
)
from core.storage import LocalStorage
from schemas.manifest import InputRecord, JobManifest, StageStatus

PATH_SAFE = re.compile(r"^[a-z0-9-]+$")
HASH_A = "a" * 64
HASH_B = "b" * 64


def _manifest(job_id: str = "job-1", stages: tuple[str, ...] = ("prepare", "render")) -> JobManifest:
    return new_manifest(job_id, "render", InputRecord(key="inbox/x.yaml", hash=HASH_A), list(stages))


# -- derive_job_id -----------------------------------------------------------

def test_job_id_is_stable() -> None:
    first = derive_job_id("bucket", "inbox/sunrise.yaml", HASH_A)
    assert first == derive_job_id("bucket", "inbox/sunrise.yaml", HASH_A)
    assert first.startswith("sunrise-")
    assert re.fullmatch(r"sunrise-[0-9a-f]{16}", first)


def test_job_id_differs_per_input() -> None:
    base = derive_job_id("bucket", "inbox/sunrise.yaml", HASH_A)
    variants = {
        derive_job_id("bucket", "inbox/sunrise.yaml", HASH_B),   # new bytes
        derive_job_id("bucket", "inbox/sunrise2.yaml", HASH_A),  # other key
        derive_job_id("bucket", "other/sunrise.yaml", HASH_A),   # same stem, other folder
        derive_job_id("other", "inbox/sunrise.yaml", HASH_A),    # other bucket
    }
    assert base not in variants
    assert len(variants) == 4


@pytest.mark.parametrize("key", [
    "inbox/sunrise.yaml", "inbox/My Brief (v2).YAML", "inbox/ünïcødé 日本.yaml", "inbox/🎬.json",
    "inbox/.yaml", "inbox/../../etc/passwd", "inbox/a/b/c.tar.gz", "inbox/" + "x" * 300 + ".yaml",
    "inbox/---.yaml", "inbox/UPPER_case.Mp4",
])
def test_job_id_is_path_safe(key: str) -> None:
    job_id = derive_job_id("my bucket", key, HASH_A)
    assert PATH_SAFE.match(job_id), job_id
    assert len(job_id) <= 40 + 1 + 16
    assert not job_id.startswith("-")


# -- the stage state machine -------------------------------------------------

def test_normal_stage_lifecycle() -> None:
    manifest = _manifest()
    for status in (StageStatus.queued, StageStatus.running, StageStatus.running, StageStatus.succeeded):
        record = set_stage_status(manifest, "prepare", status)
        assert record.status == status
    assert manifest.stages["prepare"].status == StageStatus.succeeded
    assert manifest.stages["render"].status == StageStatus.pending  # untouched


def test_failed_stage_can_be_retried() -> None:
    manifest = _manifest()
    set_stage_status(manifest, "render", StageStatus.running)
    set_stage_status(manifest, "render", StageStatus.failed)
    set_stage_status(manifest, "render", StageStatus.queued)
    assert manifest.stages["render"].status == StageStatus.queued


@pytest.mark.parametrize("old,new", [
    (StageStatus.succeeded, StageStatus.running),
    (StageStatus.succeeded, StageStatus.queued),
    (StageStatus.succeeded, StageStatus.failed),
    (StageStatus.cancelled, StageStatus.running),
    (StageStatus.failed, StageStatus.running),
    (StageStatus.failed, StageStatus.succeeded),
    (StageStatus.pending, StageStatus.succeeded),
    (StageStatus.queued, StageStatus.succeeded),
])
def test_invalid_transitions_raise(old: StageStatus, new: StageStatus) -> None:
    manifest = _manifest()
    manifest.stages["render"].status = old
    with pytest.raises(InvalidTransition) as exc:
        set_stage_status(manifest, "render", new)
    assert exc.value.code == "invalid_transition"
    assert old.value in exc.value.message and new.value in exc.value.message
    assert manifest.stages["render"].status == old  # unchanged


def test_transition_table_is_enforced_exhaustively() -> None:
    for old in StageStatus:
        for new in StageStatus:
            manifest = _manifest()
            manifest.stages["render"].status = old
            allowed = new == old or new in STAGE_TRANSITIONS[old]
            if allowed:
                assert set_stage_status(manifest, "render", new).status == new
            else:
                with pytest.raises(InvalidTransition):
                    set_stage_status(manifest, "render", new)
    assert STAGE_TRANSITIONS[StageStatus.succeeded] == set()
    assert STAGE_TRANSITIONS[StageStatus.cancelled] == set()


def test_unknown_stage_is_an_error() -> None:
    with pytest.raises(KeyError):
        set_stage_status(_manifest(), "train", StageStatus.running)


# -- ManifestStore -----------------------------------------------------------

def test_manifest_create_once(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "bucket")
    store = ManifestStore(storage)
    first = _manifest("job-1")
    assert store.create(first) is True
    second = _manifest("job-1")
    second.warnings.append("second writer")
    assert store.create(second) is False
    loaded = store.load("job-1")
    assert loaded.warnings == []
    assert loaded.created_at == first.created_at
    assert storage.exists(manifest_key("job-1"))
    assert list(store.job_ids()) == ["job-1"]


def test_manifest_update_and_load(tmp_path: Path) -> None:
    store = ManifestStore(LocalStorage(tmp_path / "bucket"))
    assert store.load("nope") is None
    store.create(_manifest("job-1"))
    before = store.load("job-1").updated_at
    updated = store.update("job-1", lambda m: set_stage_status(m, "prepare", StageStatus.running))
    assert updated.stages["prepare"].status == StageStatus.running
    reloaded = store.load("job-1")
    assert reloaded.stages["prepare"].status == StageStatus.running
    assert reloaded.updated_at >= before
    with pytest.raises(InvalidTransition):
        store.update("job-1", lambda m: set_stage_status(m, "prepare", StageStatus.pending))
    assert store.load("job-1").stages["prepare"].status == StageStatus.running  # failed mutate wrote nothing


def test_update_of_missing_job(tmp_path: Path) -> None:
    store = ManifestStore(LocalStorage(tmp_path / "bucket"))
    with pytest.raises(Exception) as exc:
        store.update("ghost", lambda m: None)
    assert getattr(exc.value, "code", None) == "job_not_found"
