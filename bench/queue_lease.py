"""How leasing from the SQLite queue scales with the backlog: median get+ack time at several queue depths.

    .venv/bin/python bench/queue_lease.py [--depths 200 2000 20000] [--samples 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.queue import SqliteQueue  # noqa: E402
from schemas.events import TaskMessage  # noqa: E402


def fill(queue: SqliteQueue, depth: int) -> None:
    """Bulk-insert `depth` ready messages in one transaction (put() one by one would dominate the run)."""
    rows = [(f"j{i}:stage:a", f"j{i}", TaskMessage(job_id=f"j{i}", stage="a").model_dump_json(), 0.0, 0.0)
            for i in range(depth)]
    with queue._lock:
        queue._db.execute("BEGIN")
        queue._db.executemany(
            "INSERT INTO messages(dedupe_key, job_id, body, available_at, created_at) VALUES (?,?,?,?,?)", rows)
        queue._db.execute("COMMIT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[200, 2000, 20000])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    print(f"{'backlog':>8}  {'median get+ack (ms)':>20}  {'p90 (ms)':>9}")
    with tempfile.TemporaryDirectory() as folder:
        for depth in args.depths:
            queue = SqliteQueue(Path(folder) / f"q{depth}.sqlite3")
            fill(queue, depth)
            times = []
            for _ in range(min(args.samples, depth)):
                start = time.perf_counter()
                lease = queue.get(lease_s=60)
                queue.ack(lease)
                times.append((time.perf_counter() - start) * 1e3)
            times.sort()
            print(f"{depth:>8}  {statistics.median(times):>20.3f}  {times[int(0.9 * len(times))]:>9.3f}")
            queue.close()


if __name__ == "__main__":
    main()
