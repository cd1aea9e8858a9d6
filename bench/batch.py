"""Batch benchmark: a 1,000-item batch against the same 1,000 briefs dropped one by one, side by side in one run.

Both sides run the same real renders (the tiny Mochi with random weights, one 16×16 frame, two steps:
the cheapest render a brief allows, so what differs is the orchestration), each on a fresh folder bucket
with its own runner and SQLite queue, built as triggers/wiring.py builds them:

- **batch**: one `inbox/bench.batch.csv` with N rows is written and submitted (`Runner.submit`, as the
  watcher does): the batch manifest, N item briefs, N job manifests and N messages.
- **singles**: N YAML briefs with the same fields are written to `inbox/` and submitted one by one
  (source "folder").

Then the two queues are worked **interleaved**, one message from each in turn on this one thread, each
message's wall time added to its side. So a change in the machine's load (it is shared) falls on both
sides alike. A side's throughput is N / (its submit time + the sum of its message times): what one
worker would do with that side alone. Both end with every item succeeded (checked).

Then a **fairness probe** on the batch side's bucket: a second N-item batch is expanded, a few of its
messages are worked, and one single brief is dropped: the number of leases before its first stage
starts and before it ends is printed (the lanes of core/queue/sqlite.py; FIFO would put it after N).

Warm-up renders (three singles, a three-item batch) run first, so that neither side pays for building
the model. This is a benchmark, not a test: it asserts nothing about timings.

    .venv/bin/python bench/batch.py                 # 1,000 items a side
    .venv/bin/python bench/batch.py --items 100 --json bench/out/batch.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from batch_jobs import TINY_DEFAULTS, TINY_SINGLE, tiny_csv, work_all  # noqa: E402
from core.queue import SqliteQueue  # noqa: E402
from core.runner import Runner  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage import LocalStorage  # noqa: E402
from functions.routes import default_pipeline  # noqa: E402
from schemas.events import StorageEvent  # noqa: E402


def make_runner(bucket: Path) -> Runner:
    """As triggers/wiring.py builds it for a folder bucket (progress throttling as `up` has it)."""
    storage = LocalStorage(bucket)
    settings = Settings(bucket=str(bucket))
    return Runner(storage, SqliteQueue(storage.state_dir / "queue.sqlite3", max_attempts=settings.queue_lease_attempts),
                  default_pipeline(), settings)


def single_brief(n: int) -> str:
    fields = {**TINY_DEFAULTS, "prompt": f"item {n}", "seed": n, "guidance_scale": 4.5}
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in fields.items())


def warm_up(root: Path) -> None:
    """A few singles and a small batch: the model is built, ffmpeg and every code path have run once."""
    runner = make_runner(root / "warm")
    for n in range(3):
        runner.storage.put_bytes(f"inbox/warm-{n}.yaml", single_brief(10_000 + n).encode())
        runner.submit(StorageEvent(bucket=runner.storage.name, key=f"inbox/warm-{n}.yaml"))
    runner.storage.put_bytes("inbox/warm.batch.csv", tiny_csv(3).encode())
    runner.submit(StorageEvent(bucket=runner.storage.name, key="inbox/warm.batch.csv"))
    work_all(runner)


def submit_batch(root: Path, items: int) -> dict:
    runner = make_runner(root / "batch")
    clock = time.perf_counter()
    runner.storage.put_bytes("inbox/bench.batch.csv", tiny_csv(items).encode())
    batch_id, _ = runner.submit(StorageEvent(bucket=runner.storage.name, key="inbox/bench.batch.csv", source="folder"))
    return {"runner": runner, "batch_id": batch_id, "submit_s": time.perf_counter() - clock}


def submit_singles(root: Path, items: int) -> dict:
    runner = make_runner(root / "singles")
    clock = time.perf_counter()
    jobs = []
    for n in range(items):
        key = f"inbox/item-{n:04d}.yaml"
        runner.storage.put_bytes(key, single_brief(n).encode())
        jobs.append(runner.submit(StorageEvent(bucket=runner.storage.name, key=key, source="folder"))[0])
    return {"runner": runner, "jobs": jobs, "submit_s": time.perf_counter() - clock}


def work_interleaved(sides: dict[str, dict]) -> None:
    """One message from each side in turn until both queues are empty; each side's message time adds up."""
    for side in sides.values():
        side.update(busy_s=0.0, messages=0, done=False)
    while not all(side["done"] for side in sides.values()):
        for side in sides.values():
            if side["done"]:
                continue
            clock = time.perf_counter()
            worked = work_all(side["runner"], limit=1)
            side["busy_s"] += time.perf_counter() - clock
            side["messages"] += worked
            side["done"] = worked == 0


def figures(side: dict, items: int, succeeded: int) -> dict:
    total = side["submit_s"] + side["busy_s"]
    return {"items": items, "succeeded": succeeded, "messages": side["messages"], "submit_s": round(side["submit_s"], 3),
            "busy_s": round(side["busy_s"], 2), "items_per_s": round(items / total, 3),
            "ms_per_item": round(1000 * total / items, 1)}


def fairness_probe(runner: Runner, items: int) -> dict:
    """Leases, after a single brief is dropped behind an `items`-item batch, until it starts and until it ends."""
    text = tiny_csv(items).replace("item ", "again ").encode()
    runner.storage.put_bytes("inbox/probe.batch.csv", text)
    runner.submit(StorageEvent(bucket=runner.storage.name, key="inbox/probe.batch.csv"))
    work_all(runner, limit=5)
    runner.storage.put_bytes("inbox/urgent.yaml", TINY_SINGLE.encode())
    single, _ = runner.submit(StorageEvent(bucket=runner.storage.name, key="inbox/urgent.yaml"))
    leases: list[str] = []
    while runner.store.load(single).status.value not in ("succeeded", "failed"):
        if work_all(runner, on_lease=lambda lease: leases.append(lease.message.job_id), limit=1) == 0:
            break
    return {"backlog": items, "leases_until_start": leases.index(single) + 1 if single in leases else None,
            "leases_until_done": len(leases), "status": runner.store.load(single).status.value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    n = args.items
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        warm_up(root)
        batch_side, single_side = submit_batch(root, n), submit_singles(root, n)
        work_interleaved({"batch": batch_side, "singles": single_side})
        runner = batch_side["runner"]
        manifest = runner.batches.store.load(batch_side["batch_id"])
        assert manifest is not None and manifest.status.value == "completed", manifest
        batch = figures(batch_side, n, manifest.counts.succeeded)
        batch["batch_manifest_kb"] = round(len(runner.storage.get_bytes(
            f"batches/{batch_side['batch_id']}/manifest.json")) / 1024, 1)
        singles = figures(single_side, n, sum(single_side["runner"].store.load(j).status.value == "succeeded"
                                              for j in single_side["jobs"]))
        probe = fairness_probe(runner, n)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'':10} {'items':>6} {'ok':>6} {'messages':>9} {'submit s':>9} {'busy s':>8} {'items/s':>8} {'ms/item':>8}")
    for name, row in (("batch", batch), ("singles", singles)):
        print(f"{name:10} {row['items']:>6} {row['succeeded']:>6} {row['messages']:>9} {row['submit_s']:>9.2f} "
              f"{row['busy_s']:>8.1f} {row['items_per_s']:>8.2f} {row['ms_per_item']:>8.1f}")
    print(f"batch/singles throughput: {batch['items_per_s'] / singles['items_per_s']:.3f}x; "
          f"batch manifest {batch['batch_manifest_kb']} KB; peak RSS {peak_mb:.0f} MB")
    print(f"fairness: a brief dropped behind a {probe['backlog']}-item batch started at lease "
          f"{probe['leases_until_start']} and ended after {probe['leases_until_done']} leases ({probe['status']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"batch": batch, "singles": singles, "fairness": probe,
                                         "peak_rss_mb": round(peak_mb, 1)}, indent=2))


if __name__ == "__main__":
    main()
