"""cohortsync export vs DuckDB's own COPY of the same landed files, measured side by side in one run.

    python benchmarks/export_vs_copy.py [--persons 200000] [--repeat 3] [--format parquet|csv] [--dir DIR]

Generates a synthetic OMOP database (cohortsync.synth, seed 11), registers a cohort of every 2nd
person, syncs it with the structured policy (pseudonyms and date shifts; free text dropped, so
Presidio is not part of the sync), appends one weekly load and syncs again, so the landing holds a
backfill and an incremental window per table. Then, interleaved and as medians of the repeats:

  1. export: wall time of `cohortsync export` (fresh process; newest version per key, SHA-256 of every
     landed file, per-buyer re-keying and date offsets, manifest, quality report) ÷ wall time of
     `COPY (SELECT * FROM read_parquet([the same committed files])) TO ...` per table, to the same
     format (zstd Parquet or CSV), in a DuckDB connection with DuckDB's defaults. Target <= 1.5.
  2. peak RSS of the export process (VmHWM), with export.memory_limit at its default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from cohortsync import api, omop, synth
from cohortsync.config import load_settings
from cohortsync.deid.policy import Action, load_policy
from cohortsync.state import StateStore

KEY = "benchmark-key-" + "k" * 40
CHILD = r"""
import json, sys, time
try:
    import pandas  # noqa: F401  (pyarrow imports it lazily when installed; keep it off the clock)
except ImportError:
    pass
from pathlib import Path
from cohortsync import api
from cohortsync.config import load_settings
s = load_settings(Path(sys.argv[1]))
t = time.perf_counter()
r = api.export(s, "bench", "buyer", Path(sys.argv[2]), sys.argv[3])
dt = time.perf_counter() - t
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": dt, "rows": r.rows, "max_rss_mb": hwm / 1024}))
"""


def write_config(root: Path) -> Path:
    pol = load_policy()
    rules = []
    for t in omop.registry():
        rules.append(f"[{t}]")
        rules += [f'"{c}" = "drop"' for c, r in pol.rules(t).items() if r.action is Action.SCRUB_TEXT]
    (root / "policy.toml").write_text("\n".join(rules) + "\n")
    cfg = root / "cohortsync.toml"
    cfg.write_text(
        '[source]\ndatabase = "omop.duckdb"\n[landing]\npath = "landing"\n[state]\npath = "state"\n'
        '[deid]\npolicy = "policy.toml"\n'
    )
    return cfg


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def run_export(cfg: Path, out: Path, fmt: str) -> dict[str, float]:
    env = {**os.environ, "COHORTSYNC_DEID_KEY": KEY}
    r = subprocess.run([sys.executable, "-c", CHILD, str(cfg), str(out), fmt], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def copy_time(cfg: Path, out: Path, fmt: str) -> float:
    """DuckDB's COPY of the committed files of each landed table, as a user would run it."""
    settings = load_settings(cfg)
    with StateStore(settings.state_path) as st:
        files = {t: [settings.landing_path / "bench" / t / f["name"] for f in st.files("bench", t)] for t in omop.DEFAULT_TABLES}
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    opts = "FORMAT parquet, COMPRESSION zstd" if fmt == "parquet" else "FORMAT csv, HEADER true"
    total = 0.0
    try:
        for t, fs in files.items():
            if not fs:
                continue
            lst = "[" + ", ".join(f"'{p}'" for p in fs) + "]"
            t0 = time.perf_counter()
            con.execute(f"COPY (SELECT * FROM read_parquet({lst}, union_by_name = true)) TO '{out / t}.{fmt}' ({opts})")
            total += time.perf_counter() - t0
    finally:
        con.close()
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="cohortsync-export-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    db = root / "omop.duckdb"
    cfg = write_config(root)
    os.environ["COHORTSYNC_DEID_KEY"] = KEY
    settings = load_settings(cfg)
    if not (root / "state").exists():
        shutil.rmtree(db, ignore_errors=True)
        db.unlink(missing_ok=True)
        t = time.perf_counter()
        counts = synth.generate(db, persons=args.persons, seed=11)
        print(f"generated {sum(counts.values()):,} rows for {args.persons:,} persons in {time.perf_counter() - t:.1f}s")
        con = duckdb.connect(str(db), read_only=True)
        ids = [r[0] for r in con.execute("SELECT person_id FROM omop.omop.person WHERE person_id % 2 = 0").fetchall()]
        con.close()
        (root / "cohort.txt").write_text("".join(f"{i}\n" for i in ids))
        api.add_cohort(settings, "bench", root / "cohort.txt")
        api.sync(settings)
        synth.append_load(db, seed=11)
        api.sync(settings)
    shutil.rmtree(root / "extract", ignore_errors=True)
    copies, exports, rss = [], [], []
    rows = 0
    for _ in range(args.repeat):
        copy_dir = Path(tempfile.mkdtemp(prefix="copy-", dir=root))
        copies.append(copy_time(cfg, copy_dir, args.format))
        shutil.rmtree(copy_dir)
        r = run_export(cfg, root / "extract", args.format)  # a fresh DIR, as COPY writes into a fresh folder
        shutil.rmtree(root / "extract")
        exports.append(r["seconds"])
        rss.append(r["max_rss_mb"])
        rows = int(r["rows"])
    c, e = statistics.median(copies), statistics.median(exports)
    print(
        f"export ({args.format}): {rows:,} rows; export {e:.2f}s vs COPY {c:.2f}s -> ratio {e / c:.2f} "
        f"(target <= 1.5: {verdict(e / c <= 1.5)})"
    )
    print(f"  runs: export {[round(x, 2) for x in exports]}  copy {[round(x, 2) for x in copies]}")
    print(f"peak RSS of the export: {max(rss):.0f} MB (export.memory_limit {settings.export.memory_limit})")
    if args.dir is None:
        shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
