"""LocalStorage: atomic writes, conditional puts, listing, hashing and key validation."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from core.jobs import ManifestStore, new_manifest
from core.storage import LocalStorage, PreconditionFailed, StorageError, validate_key
from core.storage.base import ObjectNotFound
from schemas.manifest import InputRecord


def _visible_and_hidden(directory: Path) -> tuple[list[str], list[str]]:
    names = sorted(p.name for p in directory.iterdir() if p.is_file())
    return [n for n in names if not n.startswith(".")], [n for n in names if n.startswith(".")]


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "bucket")


# -- basic put / get ---------------------------------------------------------

def test_put_get_roundtrip_and_info(store: LocalStorage) -> None:
    info = store.put_bytes("outputs/a/video.bin", b"hello world")
    assert info.key == "outputs/a/video.bin"
    assert info.size == 11
    assert store.get_bytes("outputs/a/video.bin") == b"hello world"
    assert (store.root / "outputs" / "a" / "video.bin").read_bytes() == b"hello world"


def test_put_leaves_no_temp_files(store: LocalStorage) -> None:
    for i in range(5):
        store.put_bytes("d/obj.txt", f"version {i}".encode())
    store.put_bytes("d/new.txt", b"x", if_none_match=True)
    etag = store.stat("d/obj.txt").etag
    store.put_bytes("d/obj.txt", b"cas", if_match=etag)
    src = store.root.parent / "src.bin"
    src.write_bytes(b"file contents")
    store.put_file("d/file.bin", src)

    visible, hidden = _visible_and_hidden(store.root / "d")
    assert visible == ["file.bin", "new.txt", "obj.txt"]
    assert hidden == []
    assert store.get_bytes("d/obj.txt") == b"cas"
    assert store.get_bytes("d/file.bin") == b"file contents"


def test_failed_conditional_puts_leave_no_temp_files(store: LocalStorage) -> None:
    store.put_bytes("d/obj.txt", b"original")
    with pytest.raises(PreconditionFailed):
        store.put_bytes("d/obj.txt", b"other", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_bytes("d/obj.txt", b"other", if_match="not-the-etag")
    visible, hidden = _visible_and_hidden(store.root / "d")
    assert visible == ["obj.txt"]
    assert hidden == []
    assert store.get_bytes("d/obj.txt") == b"original"


def test_readers_never_see_a_partial_object(store: LocalStorage) -> None:
    size = 2 * 1024 * 1024
    payloads = [b"A" * size, b"B" * size]
    store.put_bytes("big.bin", payloads[0])
    stop = threading.Event()
    bad: list[bytes] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            data = store.get_bytes("big.bin")
            reads += 1
            if data not in payloads:
                bad.append(data[:16] + b"..." + data[-16:] + f" len={len(data)}".encode())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(20):
            store.put_bytes("big.bin", payloads[i % 2])
    finally:
        stop.set()
        thread.join()
    assert reads > 0
    assert bad == []


def test_list_skips_hidden_files_and_state_dir(store: LocalStorage) -> None:
    store.put_bytes("d/visible.txt", b"1")
    (store.root / "d" / ".partial.tmp").write_bytes(b"half")
    (store.root / ".hidden-dir").mkdir()
    (store.root / ".hidden-dir" / "inside.txt").write_bytes(b"x")
    (store.root / ".videostudio" / "state.db").write_bytes(b"x")
    assert store.list_keys() == ["d/visible.txt"]
    assert store.list_keys("d/") == ["d/visible.txt"]


def test_get_missing_raises_object_not_found(store: LocalStorage) -> None:
    with pytest.raises(ObjectNotFound) as exc:
        store.get_bytes("nope/missing.txt")
    assert exc.value.code == "object_not_found"
    store.put_bytes("dir/x", b"1")
    with pytest.raises(ObjectNotFound):
        store.get_bytes("dir")  # a directory is not an object


# -- conditional puts --------------------------------------------------------

def test_create_if_absent_only_first_call_wins(store: LocalStorage) -> None:
    assert store.create_if_absent("locks/job-1", b"first") is True
    assert store.create_if_absent("locks/job-1", b"second") is False
    assert store.get_bytes("locks/job-1") == b"first"


def test_create_if_absent_races_have_exactly_one_winner(store: LocalStorage) -> None:
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        barrier.wait()
        results.append(store.create_if_absent("locks/race", f"writer {i}".encode()))

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.get_bytes("locks/race").startswith(b"writer ")


def test_etag_changes_on_every_write(store: LocalStorage) -> None:
    etags = {store.put_bytes("k", b"same").etag for _ in range(5)}
    assert len(etags) == 5
    assert store.stat("k").etag in etags


def test_if_match_compare_and_swap(store: LocalStorage) -> None:
    first = store.put_bytes("m.json", b"v1")
    second = store.put_bytes("m.json", b"v2", if_match=first.etag)
    assert store.get_bytes("m.json") == b"v2"
    assert second.etag != first.etag
    with pytest.raises(PreconditionFailed) as exc:
        store.put_bytes("m.json", b"v3", if_match=first.etag)  # stale
    assert exc.value.code == "precondition_failed"
    assert store.get_bytes("m.json") == b"v2"
    store.put_bytes("m.json", b"v3", if_match=second.etag)
    assert store.get_bytes("m.json") == b"v3"


def test_if_match_on_missing_object_fails(store: LocalStorage) -> None:
    with pytest.raises(PreconditionFailed):
        store.put_bytes("absent.json", b"x", if_match="anything")
    assert store.stat("absent.json") is None


def _new_job(storage: LocalStorage, job_id: str = "job-1") -> ManifestStore:
    manifests = ManifestStore(storage)
    assert manifests.create(new_manifest(job_id, "render", InputRecord(key="inbox/x.yaml"), ["render"]))
    return manifests


def _increment(manifest) -> None:
    manifest.stages["render"].attempts += 1


def test_manifest_updates_from_threads_never_lose_an_increment(store: LocalStorage) -> None:
    manifests = _new_job(store)
    threads_n, per_thread = 4, 25
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            for _ in range(per_thread):
                manifests.update("job-1", _increment)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert manifests.load("job-1").stages["render"].attempts == threads_n * per_thread


def _process_worker(root: str, job_id: str, count: int, start) -> None:
    storage = LocalStorage(root)
    manifests = ManifestStore(storage)
    start.wait()
    for _ in range(count):
        manifests.update(job_id, _increment)


def test_manifest_updates_from_processes_never_lose_an_increment(store: LocalStorage) -> None:
    manifests = _new_job(store)
    ctx = multiprocessing.get_context("spawn")
    procs_n, per_proc = 3, 30
    start = ctx.Event()
    procs = [ctx.Process(target=_process_worker, args=(str(store.root), "job-1", per_proc, start))
             for _ in range(procs_n)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * procs_n
    assert manifests.load("job-1").stages["render"].attempts == procs_n * per_proc


# -- listing -----------------------------------------------------------------

def test_list_by_prefix_sorted_and_filtered(store: LocalStorage) -> None:
    keys = ["jobs/b/manifest.json", "jobs/a/manifest.json", "jobs/a/render/video.mp4", "inbox/sunrise.yaml",
            "inbox/sunset.yaml", "inbox/sub/deep.yaml", "top.txt", "jobsfile.txt"]
    for k in keys:
        store.put_bytes(k, k.encode())
    assert store.list_keys() == sorted(keys)
    assert store.list_keys("jobs/") == ["jobs/a/manifest.json", "jobs/a/render/video.mp4", "jobs/b/manifest.json"]
    assert store.list_keys("jobs") == ["jobs/a/manifest.json", "jobs/a/render/video.mp4", "jobs/b/manifest.json",
                                       "jobsfile.txt"]
    # partial names, both at the top level and inside a folder
    assert store.list_keys("inbox/sun") == ["inbox/sunrise.yaml", "inbox/sunset.yaml"]
    assert store.list_keys("inbox/sunr") == ["inbox/sunrise.yaml"]
    assert store.list_keys("jobs/a/m") == ["jobs/a/manifest.json"]
    assert store.list_keys("to") == ["top.txt"]
    assert store.list_keys("nothing/") == []
    assert store.list_keys("top.txt/") == []  # a file is not a folder
    infos = list(store.list("inbox/"))
    assert [i.size for i in infos] == [len(i.key) for i in infos]


# -- stat / hash / delete ----------------------------------------------------

def test_stat_size_and_content_hash(store: LocalStorage) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # spans several hash chunks
    info = store.put_bytes("blob.bin", data)
    st = store.stat("blob.bin")
    assert st is not None
    assert st.size == len(data) == info.size
    assert st.etag == info.etag
    assert store.content_hash("blob.bin") == hashlib.sha256(data).hexdigest()
    assert store.exists("blob.bin")
    assert store.stat("missing.bin") is None
    assert store.stat("blob.bin/child") is None
    with pytest.raises(ObjectNotFound):
        store.content_hash("missing.bin")


def test_stat_of_a_folder_is_none(store: LocalStorage) -> None:
    store.put_bytes("folder/inner.txt", b"1")
    assert store.stat("folder") is None
    assert not store.exists("folder")


def test_delete(store: LocalStorage) -> None:
    store.put_bytes("d/gone.txt", b"1")
    store.put_bytes("d/stays.txt", b"2")
    store.delete("d/gone.txt")
    assert store.stat("d/gone.txt") is None
    assert store.list_keys("d/") == ["d/stays.txt"]
    store.delete("d/gone.txt")  # deleting a missing key is not an error
    assert store.create_if_absent("d/gone.txt", b"again") is True


def test_download(store: LocalStorage, tmp_path: Path) -> None:
    store.put_bytes("a/b.bin", b"payload")
    out = store.download("a/b.bin", tmp_path / "out" / "b.bin")
    assert out.read_bytes() == b"payload"
    with pytest.raises(ObjectNotFound):
        store.download("a/missing.bin", tmp_path / "out" / "m.bin")


# -- keys --------------------------------------------------------------------

@pytest.mark.parametrize("key", [
    "", "../x", "a/../../x", "..", "/abs", "/etc/passwd", "a//b", "a/", "./a", "a/./b",
    "a\x00b", "a\nb", "tab\there", "esc\x1b", "back\\slash",
    ".videostudio/queue.sqlite3", "inbox/.hidden.yaml", "..hidden-ish/x",
])
def test_validate_key_refuses_unsafe_keys(store: LocalStorage, key: str) -> None:
    with pytest.raises(StorageError) as exc:
        validate_key(key)
    assert exc.value.code == "invalid_key"
    with pytest.raises(StorageError):
        store.put_bytes(key, b"x")
    assert not (store.root.parent / "x").exists()


@pytest.mark.parametrize("key", ["a", "inbox/sunrise.yaml", "a/b/c/d.txt", "with space/my file.yaml",
                                 "ünïcødé/日本語.yaml", "emoji/🎬.mp4", "dots/a..b", "x/tail."])
def test_validate_key_accepts_normal_keys(key: str) -> None:
    assert validate_key(key) == key


def test_keys_with_spaces_and_unicode_roundtrip(store: LocalStorage) -> None:
    keys = ["inbox/my brief.yaml", "inbox/ünïcødé 日本.yaml", "inbox/🎬 clip.mp4"]
    for k in keys:
        store.put_bytes(k, k.encode())
    assert store.list_keys("inbox/") == sorted(keys)
    for k in keys:
        assert store.get_bytes(k) == k.encode()
        assert store.content_hash(k) == hashlib.sha256(k.encode()).hexdigest()
    assert store.list_keys("inbox/ü") == ["inbox/ünïcødé 日本.yaml"]
    assert store.key_for(store.path("inbox/my brief.yaml")) == "inbox/my brief.yaml"
