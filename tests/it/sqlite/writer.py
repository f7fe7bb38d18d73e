"""A real SQLite writer for pitr's tests and benchmarks, in its own process.

usage: writer.py DB MODE SECONDS PERIOD_MS [EVENT ...]

MODE is a journal mode (wal, delete). Every PERIOD_MS (0: as fast as
possible) it commits one row stamped with the wall clock read just before the
commit, and prints `commit ID AT_NS DONE_NS` once the commit returned. EVENTs
are `SECONDS:checkpoint` (wal_checkpoint(TRUNCATE)) and `SECONDS:vacuum`
(delete the ballast rows, then VACUUM: the file shrinks). At the end it
prints `rate COMMITS_PER_SECOND`, `latency P50_US P99_US MAX_US` (BEGIN to
COMMIT returned, microseconds) and `wal BYTES` (the -wal file's size before
the writer closes; 0 without one).

Environment: SYNC, the `PRAGMA synchronous` to set (default NORMAL; `default`
sets none, leaving SQLite's own: FULL in both modes for Debian's build). The
settings in effect are printed as `settings JOURNAL_MODE SYNCHRONOUS`.
TIMEOUT, the busy timeout in seconds (default 30): a commit that waits
longer for a lock fails with "database is locked" and the writer exits 1.
"""
import sqlite3
import sys
import time

db, mode, seconds, period_ms = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
events = sorted((float(e.split(":")[0]), e.split(":")[1]) for e in sys.argv[5:])
# NORMAL, the setting most WAL applications choose (no fsync per commit:
# the writer is fastest, so any cost of the watcher shows); SYNC=FULL to change.
import os
sync = os.environ.get("SYNC", "NORMAL")

c = sqlite3.connect(db, timeout=float(os.environ.get("TIMEOUT", "30")), isolation_level=None)
c.execute(f"PRAGMA journal_mode={mode}")
if sync != "default":
    c.execute(f"PRAGMA synchronous={sync}")
print("settings {} {}".format(c.execute("PRAGMA journal_mode").fetchone()[0],
                              c.execute("PRAGMA synchronous").fetchone()[0]), flush=True)
c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, at_ns INTEGER NOT NULL, pad BLOB)")
c.execute("CREATE TABLE IF NOT EXISTS ballast (b BLOB)")
if c.execute("SELECT count(*) FROM ballast").fetchone()[0] == 0 and events:
    c.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 200) "
              "INSERT INTO ballast SELECT randomblob(4000) FROM n")
print("ready", flush=True)
start = time.monotonic()
n = 0
latencies = []
while True:
    now = time.monotonic() - start
    if now >= seconds:
        break
    while events and events[0][0] <= now:
        _, what = events.pop(0)
        if what == "checkpoint":
            r = c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            print(f"event checkpoint {r}", flush=True)
        elif what == "vacuum":
            c.execute("DELETE FROM ballast")
            c.execute("VACUUM")
            print("event vacuum", flush=True)
    at = time.time_ns()
    t0 = time.monotonic()
    c.execute("BEGIN IMMEDIATE")
    cur = c.execute("INSERT INTO t (at_ns, pad) VALUES (?, randomblob(100))", (at,))
    c.execute("COMMIT")
    latencies.append(time.monotonic() - t0)
    done = time.time_ns()
    n += 1
    if period_ms > 0:
        print(f"commit {cur.lastrowid} {at} {done}", flush=True)
        next_at = start + n * period_ms / 1000.0
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
elapsed = time.monotonic() - start
print(f"rate {n / elapsed:.1f}", flush=True)
if latencies:
    latencies.sort()
    q = lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))] * 1e6
    print(f"latency {q(0.5):.0f} {q(0.99):.0f} {latencies[-1] * 1e6:.0f}", flush=True)
try:
    wal = os.path.getsize(db + "-wal")
except OSError:
    wal = 0
print(f"wal {wal}", flush=True)
c.close()
