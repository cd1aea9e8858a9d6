"""What one item's report costs a batch: a compare-and-swap update of `batches/<id>/manifest.json` by its size.

Every item's start and end is one such update (core/batch_track.py): the manifest is read, validated,
changed, summarised (counts, progress, ETA) and written back whole with `if_match`. This times that
update on a folder bucket for batches of several sizes (every item with a video and a poster key, as a
finished render has), so the per-item overhead of a batch can be set against its stage times.

    .venv/bin/python bench/batch_manifest.py [--items 100 1000 10000] [--updates 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.batch_store import BatchStore, batch_manifest_key, item_job_id  # noqa: E402
from core.batch_track import summarise  # noqa: E402
from core.storage import LocalStorage  # noqa: E402
from schemas.batch import BatchItem, BatchManifest  # noqa: E402
from schemas.manifest import InputRecord, JobStatus  # noqa: E402


def manifest(items: int) -> BatchManifest:
    batch_id = f"bench{items}-batch-0123456789abcdef"
    rows = []
    for n in range(items):
        job = item_job_id(batch_id, n)
        rows.append(BatchItem(index=n, line=n + 2, job_id=job, status=JobStatus.succeeded,
                              outputs={"video": f"jobs/{job}/render/video.mp4", "poster": f"jobs/{job}/render/poster.jpg"}))
    return BatchManifest(batch_id=batch_id, name="bench", input=InputRecord(key="inbox/bench.batch.csv"), items=rows,
                         expanded=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--updates", type=int, default=30)
    args = parser.parse_args()
    print(f"{'items':>7} {'manifest KB':>12} {'median update ms':>17} {'p90 ms':>8}")
    with tempfile.TemporaryDirectory() as folder:
        store = BatchStore(LocalStorage(Path(folder)))
        for items in args.items:
            m = manifest(items)
            store.create(m)

            def flip(b: BatchManifest) -> None:  # one item starts or ends, as an item's report does
                b.items[0].status = JobStatus.running if b.items[0].status != JobStatus.running else JobStatus.succeeded
                summarise(b)

            times = []
            for _ in range(args.updates):
                clock = time.perf_counter()
                store.update(m.batch_id, flip)
                times.append((time.perf_counter() - clock) * 1000)
            size = len(store.storage.get_bytes(batch_manifest_key(m.batch_id))) / 1024
            times.sort()
            print(f"{items:>7} {size:>12.0f} {statistics.median(times):>17.1f} {times[int(len(times) * 0.9)]:>8.1f}")


if __name__ == "__main__":
    main()
