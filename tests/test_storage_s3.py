"""The S3 backend against real servers: the same test bodies run on moto's server and on Ceph RGW."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import httpx
import pytest

from core.jobs import ManifestStore, new_manifest
from core.storage import PreconditionFailed, open_storage
from core.storage.base import ObjectNotFound, StorageError
from core.storage.s3 import MIB, S3Config, S3Storage, parse_s3_uri
from core.settings import Settings
from schemas.manifest import InputRecord

UNICODE_KEY = "inbox/my brief é+ünï 🎬.yaml"


@pytest.fixture
def store(s3_server, s3_env) -> S3Storage:
    s3_env(s3_server)
    bucket = s3_server.new_bucket()
    return S3Storage(f"s3://{bucket}/team-a", config=S3Config(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB))


def test_parse_uri_and_open_storage_selects_s3(monkeypatch):
    assert parse_s3_uri("s3://media") == ("media", "")
    assert parse_s3_uri("s3://media/a/b/") == ("media", "a/b/")
    for bad in ("s3://", "s3://UPPER", "s3://b/../x", "s3://bucket/.hidden"):
        with pytest.raises(StorageError):
            parse_s3_uri(bad)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    storage = open_storage("s3://media/p", settings=Settings(s3_endpoint="http://127.0.0.1:9", s3_region="eu-west-1"))
    assert isinstance(storage, S3Storage) and storage.name == "media" and storage.prefix == "p/"
    assert storage.endpoint_url == "http://127.0.0.1:9"
    assert storage.client.meta.config.s3["addressing_style"] == "path"  # non-AWS servers: path-style
    assert storage.client.meta.region_name == "eu-west-1"


def test_endpoint_comes_from_the_standard_variables(monkeypatch):
    for name in ("VIDEOSTUDIO_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    assert S3Storage("s3://media").endpoint_url is None  # AWS
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert S3Storage("s3://media").endpoint_url == "http://generic:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-only:2")
    assert S3Storage("s3://media").endpoint_url == "http://s3-only:2"
    monkeypatch.setenv("VIDEOSTUDIO_S3_ENDPOINT", "http://ours:3")
    assert S3Storage("s3://media").endpoint_url == "http://ours:3"
    assert S3Storage("s3://media", config=S3Config(endpoint_url="http://explicit:4")).endpoint_url == "http://explicit:4"


def test_conditional_create_is_the_lock(store):
    assert store.stat("jobs/j/manifest.json") is None
    assert store.create_if_absent("jobs/j/manifest.json", b"first")
    assert not store.create_if_absent("jobs/j/manifest.json", b"second")
    with pytest.raises(PreconditionFailed):
        store.put_bytes("jobs/j/manifest.json", b"third", if_none_match=True)
    assert store.get_bytes("jobs/j/manifest.json") == b"first"

    # Many writers race for one key: exactly one wins.
    winners: list[int] = []
    barrier = threading.Barrier(6)

    def race(i: int) -> None:
        barrier.wait()
        if store.create_if_absent("jobs/race/lock", f"writer {i}".encode()):
            winners.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert store.get_bytes("jobs/race/lock") == f"writer {winners[0]}".encode()


def test_compare_and_swap_and_etags(store):
    first = store.put_bytes("jobs/j/manifest.json", b'{"v": 1}', content_type="application/json")
    assert first.etag and '"' not in first.etag and first.size == 8
    assert store.stat("jobs/j/manifest.json").etag == first.etag
    data, info = store.get_bytes_with_info("jobs/j/manifest.json")
    assert (data, info.etag) == (b'{"v": 1}', first.etag)

    second = store.put_bytes("jobs/j/manifest.json", b'{"v": 2}', if_match=first.etag)
    assert second.etag != first.etag
    with pytest.raises(PreconditionFailed):  # stale etag: somebody wrote in between
        store.put_bytes("jobs/j/manifest.json", b'{"v": 3}', if_match=first.etag)
    with pytest.raises(PreconditionFailed):  # CAS on an object that does not exist
        store.put_bytes("jobs/none/manifest.json", b"{}", if_match=first.etag)
    assert store.get_bytes("jobs/j/manifest.json") == b'{"v": 2}'
    third = store.put_bytes("jobs/j/manifest.json", b'{"v": 3}', if_match=second.etag)
    assert store.stat("jobs/j/manifest.json").etag == third.etag


def test_manifest_updates_from_concurrent_writers_are_never_lost(store):
    manifests = ManifestStore(store)
    manifest = new_manifest("race-0123456789abcdef", "render", InputRecord(key="inbox/race.yaml"), ["prepare"])
    assert manifests.create(manifest)
    writers, each = 4, 4

    def bump(i: int) -> None:
        for n in range(each):
            manifests.update(manifest.job_id, lambda m: m.warnings.append(f"w{i}-{n}"))

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = manifests.load(manifest.job_id)
    assert sorted(final.warnings) == sorted(f"w{i}-{n}" for i in range(writers) for n in range(each))


def test_list_by_prefix_stat_get_delete(store, s3_server):
    keys = ["inbox/a.yaml", UNICODE_KEY, "inbox/sub/c.json", "inbox2/x.yaml", "jobs/j/manifest.json"]
    for key in keys:
        store.put_bytes(key, key.encode())
    raw = s3_server.client()
    raw.put_object(Bucket=store.bucket, Key="team-a/inbox/.hidden.tmp", Body=b"temp")  # never an object of ours
    raw.put_object(Bucket=store.bucket, Key="team-a/inbox/folder/", Body=b"")          # a console "folder"
    raw.put_object(Bucket=store.bucket, Key="other-team/inbox/z.yaml", Body=b"not ours")

    listed = list(store.list("inbox/"))
    assert [i.key for i in listed] == ["inbox/a.yaml", UNICODE_KEY, "inbox/sub/c.json"]
    assert all(i.size == len(i.key.encode()) and i.etag for i in listed)
    assert store.list_keys("") == sorted(keys, key=lambda k: k.encode())
    assert store.list_keys("inbox") == ["inbox/a.yaml", UNICODE_KEY, "inbox/sub/c.json", "inbox2/x.yaml"]
    assert store.get_bytes(UNICODE_KEY) == UNICODE_KEY.encode()
    # everything sits under the prefix in the real bucket
    real = sorted(o["Key"] for o in raw.list_objects_v2(Bucket=store.bucket, Prefix="team-a/")["Contents"])
    assert f"team-a/{UNICODE_KEY}" in real

    assert store.stat("inbox/missing.yaml") is None
    with pytest.raises(ObjectNotFound):
        store.get_bytes("inbox/missing.yaml")
    with pytest.raises(ObjectNotFound):
        store.content_hash("inbox/missing.yaml")
    store.delete("inbox/a.yaml")
    store.delete("inbox/a.yaml")  # deleting twice is fine
    assert not store.exists("inbox/a.yaml")
    assert store.relative_key(store.bucket, f"team-a/{UNICODE_KEY}") == UNICODE_KEY
    assert store.relative_key(store.bucket, "other-team/inbox/z.yaml") is None
    assert store.relative_key("another-bucket", f"team-a/{UNICODE_KEY}") is None


def test_multipart_upload_download_and_content_hash(store, s3_server, tmp_path):
    source = tmp_path / "video.mp4"
    source.write_bytes(os.urandom(12 * MIB + 123))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    info = store.put_file("uploads/john/video.mp4", source, content_type="video/mp4")
    assert info.size == source.stat().st_size
    assert info.etag.endswith("-3")  # 5 + 5 + 2 MiB parts: a multipart ETag
    back = store.download("uploads/john/video.mp4", tmp_path / "back" / "video.mp4")
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest
    assert store.content_hash("uploads/john/video.mp4") == digest  # recorded at upload: one HEAD

    # The same bytes uploaded by another tool with another part size: another ETag, the same hash.
    from boto3.s3.transfer import TransferConfig

    raw = s3_server.client()
    raw.upload_file(str(source), store.bucket, "team-a/inbox/john.mp4",
                    Config=TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=7 * MIB))
    other = store.stat("inbox/john.mp4")
    assert other.etag != info.etag and other.etag.endswith("-2")
    assert store.content_hash("inbox/john.mp4") == digest  # streamed and hashed
    assert store.content_hash("inbox/john.mp4") == digest  # remembered for this (key, etag)
    with pytest.raises(ObjectNotFound):
        store.download("inbox/none.mp4", tmp_path / "none.mp4")


def test_presigned_urls_fetch_and_expire(store, s3_server):
    store.put_bytes(UNICODE_KEY, b"prompt: hello\n", content_type="application/yaml")
    url = store.url(UNICODE_KEY, expires_s=120)
    assert "X-Amz-Signature=" in url and s3_server.secret_key not in url
    response = httpx.get(url)
    assert response.status_code == 200 and response.content == b"prompt: hello\n"
    assert store.shareable_urls
    if s3_server.name == "ceph":  # moto's server does not enforce expiry; Ceph does
        short = store.url(UNICODE_KEY, expires_s=1)
        time.sleep(2.5)
        assert httpx.get(short).status_code == 403


def test_storage_errors_are_retryable_when_the_server_is_away(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    storage = S3Storage("s3://media", config=S3Config(endpoint_url="http://127.0.0.1:9"))
    storage.client.meta.config.retries["max_attempts"] = 1
    with pytest.raises(StorageError) as excinfo:
        storage.stat("inbox/a.yaml")
    assert excinfo.value.code == "storage_unavailable" and excinfo.value.retryable
