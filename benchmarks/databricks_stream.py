"""Streaming extraction through the Databricks source: complete, and bounded in memory.

Runs cohortsync's DatabricksSource with the real databricks-sql-connector against the Spark Thrift
Server from the pyspark wheel (the stand-in warehouse of tests/databricks), streams a wide result
(by default 250,000 rows of ~1 KB, i.e. ~250 MB) in batches, and prints rows, seconds and this
process's peak RSS. It fails (exit 1) if a row is missing or if the peak RSS still grew
after the first batches while the rest of the result streamed: memory follows the batch, not
the result.

The server listens on every interface in HTTP mode, so the script re-runs itself in a private
network namespace with only loopback (``unshare --net``; needs root, as in CI). Java 17 needed.

    python benchmarks/databricks_stream.py [--rows 250000] [--width 1000] [--batch-rows 10000]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WARMUP_BATCHES = 3
sys.path.insert(0, str(REPO / "tests" / "databricks"))  # the Thrift server harness and its compat patches


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def only_loopback() -> bool:
    with open("/proc/self/net/dev", encoding="ascii") as f:
        return [line.split(":")[0].strip() for line in f.readlines()[2:]] == ["lo"]


def inner(args: argparse.Namespace) -> int:
    import sqlglot
    from thrift_server import ThriftServer

    from cohortsync import plan
    from cohortsync.sources.databricks import DatabricksSource

    work = Path(tempfile.mkdtemp(prefix="dbx-bench-"))
    server = ThriftServer(work)
    try:
        server.start()
        src = DatabricksSource(
            "127.0.0.1",
            "cliservice",
            plan.Names("spark_catalog", "omop", "sandbox", "cohortsync_members"),
            None,
            connect_options=server.connect_options(),
        )
        query = sqlglot.parse_one(
            f"SELECT id, repeat('x', {args.width}) AS payload FROM range(0, {args.rows})", dialect="databricks"
        )
        src.rows(sqlglot.parse_one("SELECT 1", dialect="databricks"))  # connect before measuring
        before = rss_mib()
        started = time.perf_counter()
        rows = ids = result_bytes = batches = 0
        warm = warm_bytes = 0.0
        with src.stream(query, args.batch_rows) as reader:
            for batch in reader:
                batches += 1
                rows += batch.num_rows
                result_bytes += batch.nbytes
                ids += sum(batch.column("id").to_pylist())
                if batches == WARMUP_BATCHES:
                    warm, warm_bytes = rss_mib(), result_bytes
        seconds = time.perf_counter() - started
        after = rss_mib()
        src.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    result_mib = result_bytes / 2**20
    later_mib = (result_bytes - warm_bytes) / 2**20
    print(f"rows            {rows:,} in {batches} batches of <= {args.batch_rows:,}")
    print(f"result size     {result_mib:,.0f} MiB (Arrow)")
    print(f"seconds         {seconds:.1f} ({rows / seconds:,.0f} rows/s)")
    print(f"peak RSS        {before:,.0f} MiB before streaming, {warm:,.0f} MiB after {WARMUP_BATCHES} batches, "
          f"{after:,.0f} MiB at the end")  # fmt: skip
    complete = rows == args.rows and ids == args.rows * (args.rows - 1) // 2
    # Bounded: the peak is reached within the first batches; the rest of the result adds (almost) nothing.
    bounded = after - warm < max(32.0, later_mib / 20)
    print(f"complete        {complete}")
    print(f"bounded         {bounded} (+{after - warm:,.0f} MiB of peak RSS while the last {later_mib:,.0f} MiB streamed)")
    return 0 if complete and bounded else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--width", type=int, default=1000, help="bytes of payload per row")
    parser.add_argument("--batch-rows", type=int, default=10_000)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        if not only_loopback():
            print("refusing to start the Thrift server outside a private network namespace", file=sys.stderr)
            return 2
        return inner(args)
    if shutil.which("unshare") is None or shutil.which("java") is None:
        print("needs 'unshare' (util-linux), 'ip' (iproute2) and Java 17", file=sys.stderr)
        return 2
    command = [sys.executable, str(Path(__file__).resolve()), "--inner", "--rows", str(args.rows),
               "--width", str(args.width), "--batch-rows", str(args.batch_rows)]  # fmt: skip
    shell = "ip link set lo up && exec " + " ".join(f"'{c}'" for c in command)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(["unshare", "--net", "sh", "-c", shell], cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
