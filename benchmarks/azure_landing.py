"""A sync with the landing on Azure storage (Azurite) beside the same sync into a local folder, in one run.

    python benchmarks/azure_landing.py [--persons 100000] [--repeat 3] [--policy raw|structured|default] [--dir DIR]

Generates a synthetic OMOP database (cohortsync.synth), registers a cohort of every 10th person in
two projects that differ only in ``landing.path`` (a local folder; ``abfss://`` on an Azurite
started here from tools/.azurite, in memory, on a free port), then runs, interleaved and each in a
fresh process: the backfill into each (fresh state and landing every repeat), and a no-op sync
after it (nothing due: what remains is the per-file checks, one request per listed blob on Azure).
Prints medians: wall time, CPU seconds, peak RSS, the landed MB and the ratio Azure ÷ local.

Azurite is a Node process on the same machine: it measures the protocol's and the client's costs
(HTTP, block uploads, no fsync), not Azure's network; it also competes for the same cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import duckdb
import pyarrow.fs as pafs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sync_vs_copy import KEY, run_sync, write_config

from cohortsync import api, synth
from cohortsync.config import load_settings

REPO = Path(__file__).resolve().parent.parent
AZURITE = REPO / "tools" / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="  # public


def start_azurite(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    if not AZURITE.exists():
        raise SystemExit("Azurite is not installed: run tools/install_azurite.sh")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence", "--skipApiVersionCheck",
         "--loose", "--silent", "--disableTelemetry", "--blobKeepAliveTimeout", "300"],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("Azurite did not start")


def project(root: Path, db: Path, policy: str, ids: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cfg = write_config(root, policy)
    cfg.write_text(cfg.read_text().replace('database = "omop.duckdb"', f'database = "{db}"'))
    for d in ("landing", "state", "cohorts"):
        shutil.rmtree(root / d, ignore_errors=True)
    api.add_cohort(load_settings(cfg), "bench", ids)
    return cfg


def landed_mb(fs: pafs.FileSystem, root: str) -> float:
    sel = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return sum(i.size or 0 for i in fs.get_file_info(sel) if i.type == pafs.FileType.File) / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--policy", choices=["raw", "structured", "default"], default="structured")
    ap.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="cohortsync-azbench-"))
    root.mkdir(parents=True, exist_ok=True)
    db = root / "omop.duckdb"
    if not db.exists():
        t = time.perf_counter()
        counts = synth.generate(db, persons=args.persons, seed=11)
        print(f"generated {sum(counts.values()):,} rows for {args.persons:,} persons in {time.perf_counter() - t:.1f}s")
    con = duckdb.connect(str(db), read_only=True)
    ids = [r[0] for r in con.execute("SELECT person_id FROM omop.omop.person WHERE person_id % 10 = 0").fetchall()]
    con.close()
    (root / "cohort.txt").write_text("".join(f"{i}\n" for i in ids))
    os.environ["COHORTSYNC_DEID_KEY"] = KEY
    local_cfg = project(root / "local", db, args.policy, root / "cohort.txt")
    proc, port = start_azurite(root)
    endpoint = f"http://127.0.0.1:{port}"
    fs = pafs.AzureFileSystem(ACCOUNT, account_key=AZURITE_KEY, blob_storage_authority=f"127.0.0.1:{port}",
                              dfs_storage_authority=f"127.0.0.1:{port}", blob_storage_scheme="http", dfs_storage_scheme="http")
    az_env = {"COHORTSYNC_LANDING__AZURE_ENDPOINT": endpoint, "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY}
    try:
        os.environ.update(az_env)
        az_cfg = project(root / "azure", db, args.policy, root / "cohort.txt")
        print(f"cohort: {len(ids):,} persons; policy {args.policy}; Azurite on {endpoint}")
        results: dict[str, list[dict[str, float]]] = {"local": [], "azure": [], "local no-op": [], "azure no-op": []}
        mb = {"local": 0.0, "azure": 0.0}
        for _ in range(args.repeat):
            shutil.rmtree(root / "local" / "landing", ignore_errors=True)
            shutil.rmtree(root / "local" / "state", ignore_errors=True)
            for k in az_env:
                os.environ.pop(k, None)
            os.environ.pop("COHORTSYNC_LANDING__PATH", None)
            results["local"].append(run_sync(local_cfg))
            results["local no-op"].append(run_sync(local_cfg))
            mb["local"] = landed_mb(pafs.LocalFileSystem(), str(root / "local" / "landing"))
            container = f"b{uuid.uuid4().hex[:20]}"
            fs.create_dir(container)
            shutil.rmtree(root / "azure" / "state", ignore_errors=True)
            os.environ.update(az_env)
            os.environ["COHORTSYNC_LANDING__PATH"] = f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/landing"
            results["azure"].append(run_sync(az_cfg))
            results["azure no-op"].append(run_sync(az_cfg))
            mb["azure"] = landed_mb(fs, f"{container}/landing")
            fs.delete_dir(container)
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "cpu", "max_rss_mb")} for k, v in results.items()}
        rows = int(results["local"][0]["rows"])
        assert all(int(r["rows"]) == rows for r in results["local"] + results["azure"]), "the two landings differ in rows"
        assert all(r["failed"] == 0 for v in results.values() for r in v)
        for k in ("local", "azure"):
            m = med[k]
            print(f"backfill {k:5}: {rows:,} rows, {mb[k]:.1f} MB in {m['seconds']:.2f}s ({mb[k] / m['seconds']:.1f} MB/s); "
                  f"CPU {m['cpu']:.2f}s; peak RSS {m['max_rss_mb']:.0f} MB; runs {[round(r['seconds'], 2) for r in results[k]]}")
        print(f"  Azure / local: wall {med['azure']['seconds'] / med['local']['seconds']:.2f}, "
              f"CPU {med['azure']['cpu'] / med['local']['cpu']:.2f}")
        print(f"no-op sync: local {med['local no-op']['seconds']:.2f}s, azure {med['azure no-op']['seconds']:.2f}s")
        print(f"load average {os.getloadavg()[0]:.1f}")
    finally:
        proc.terminate()
        proc.wait()
        if args.dir is None:
            shutil.rmtree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
