"""The landing on Azure storage (issue 11): the same commands, the same commit protocol and the same
results as on a local folder, against a real Azurite (tests/servers/azurite.py; never skipped).

To run the whole flow with another state backend, override ``state_env`` (environment variables
that select the state; default: the project's SQLite folder); tests/test_azure_postgres.py does.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from cohortsync.config import Settings, azure_location, load_settings
from cohortsync.errors import ConfigError, LandingAuthError, LandingError, TamperedError, TransientLandingError
from cohortsync.landing import AzureStore, Landing, WindowWriter, classify_azure, open_landing
from cohortsync.state import open_state
from conftest import CONFIG, Project, keep_everything_policy, person_ids
from servers.azurite import AzureLanding

TABLES = ["person", "condition_occurrence", "drug_exposure", "measurement", "observation"]
EXTRA = f'\n[sync]\ntables = {json.dumps(TABLES)}\nbatch_rows = 4096\nfile_rows = 20000\n'


StateEnv = Callable[[Path], dict[str, str]]


@pytest.fixture
def state_env() -> StateEnv:
    """The environment variables that choose the state store of the project at ``root`` (each project
    needs its own). Default: none, the project's SQLite folder. Override for another backend."""
    return lambda root: {}


def landing_rows_of(landing: Landing, settings: Settings) -> dict[str, list[tuple[object, ...]]]:
    """Every listed file's rows per cohort/table, sorted: to compare landings across stores."""
    out: dict[str, list[tuple[object, ...]]] = {}
    with open_state(settings) as st:
        marks = st.watermarks()
        for cohort, table in sorted(marks):
            rows: list[tuple[object, ...]] = []
            for f in st.files(cohort, table):
                rows += [tuple(r.values()) for r in landing.parquet_file(cohort, table, f["name"]).read().to_pylist()]
            out[f"{cohort}/{table}"] = sorted(rows, key=repr)
    return out


# --- URLs and credentials -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "account", "root"),
    [
        ("abfss://landing@acct01.dfs.core.windows.net/omop/weekly", "acct01", "landing/omop/weekly"),
        ("wasbs://landing@acct01.blob.core.windows.net/", "acct01", "landing"),
        ("https://acct01.blob.core.windows.net/landing/omop", "acct01", "landing/omop"),
        ("https://acct01.dfs.core.windows.net/landing", "acct01", "landing"),
    ],
)
def test_landing_urls_parse(url: str, account: str, root: str) -> None:
    loc = azure_location(url)
    assert (loc.account, loc.root) == (account, root)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("https://acct01.blob.core.windows.net/landing?sv=2024&sig=abc", "may not carry a secret"),
        ("abfss://landing:Zm9vYmFy@acct01.dfs.core.windows.net/x", "may not carry a secret"),
        ("abfss://landing@acct01.blob.core.windows.net/x", "abfss:// goes with ACCOUNT.dfs.core.windows.net"),
        ("s3://bucket/x", "host must be ACCOUNT.blob.core.windows.net"),
        ("abfss://Bad_Name@acct01.dfs.core.windows.net/x", "is not an Azure container name"),
        ("abfss://landing@acct01.dfs.core.windows.net/../x", "'.' or '..'"),
    ],
)
def test_bad_landing_urls_are_one_line_config_errors(tmp_path: Path, url: str, needle: str) -> None:
    cfg = tmp_path / "cohortsync.toml"
    cfg.write_text(CONFIG.replace('path = "landing"', f'path = "{url}"'), encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert "sig=abc" not in str(e.value) and "Zm9vYmFy" not in str(e.value)


# --- the store itself -----------------------------------------------------------------------------


def test_window_lands_reads_back_and_reconciles_on_azurite(azure_landing: AzureLanding, tmp_path: Path) -> None:
    cfg = tmp_path / "cohortsync.toml"
    cfg.write_text(CONFIG, encoding="utf-8")
    landing = open_landing(load_settings(cfg))
    assert isinstance(landing.store, AzureStore)
    upper = datetime(2026, 10, 4)
    w = WindowWriter(landing, "c", "measurement", None, upper, 1500, 2, "measurement_id")
    for i in range(5):
        w.write(pa.record_batch({"measurement_id": pa.array(range(i * 1000, i * 1000 + 1000), pa.int64())}))
    files = w.finish()
    assert sum(f.rows for f in files) == 5000 and len(files) == 3  # lanes of 3000 and 2000 rows; rolls over past 1500
    blobs = azure_landing.files()
    for f in files:  # the SHA-256 hashed while writing is that of the blob as stored
        data = blobs[f"c/measurement/{f.name}"]
        assert (len(data), __import__("hashlib").sha256(data).hexdigest()) == (f.bytes, f.sha256)
        assert landing.check_file("c", "measurement", {"name": f.name, "bytes": f.bytes, "sha256": f.sha256}, True) is None
    assert sorted(landing.files("c", "measurement")) == sorted(f.name for f in files)
    # DuckDB reads them through a pyarrow dataset (no azure extension).
    with duckdb.connect() as con:
        rel = landing.register(con, "m", "c", "measurement", [f.name for f in files])
        assert con.execute(f"SELECT count(*), count(DISTINCT measurement_id) FROM {rel}").fetchone() == (5000, 5000)
    # A crashed run's part of the window being landed again is removed; a stranger is refused.
    committed = {files[0].name}
    assert sorted(landing.reconcile("c", "measurement", committed, None)) == sorted(f.name for f in files[1:])
    assert landing.files("c", "measurement") == [files[0].name]
    sink, seal = landing.create("c", "measurement", "measurement__20250101T000000000000__20250201T000000000000__0000.parquet")
    pq.write_table(pa.table({"measurement_id": [1]}), sink)
    seal()
    with pytest.raises(TamperedError, match="is not recorded in the state store"):
        landing.reconcile("c", "measurement", committed, None)
    # A temporary name is always removed; damage is found by size, then by checksum.
    sink, seal = landing.create("c", "measurement", ".tmp-1-x.parquet")
    sink.write(b"partial")
    seal()
    landing.remove_temporaries("c", "measurement")
    assert not any(n.startswith(".tmp-") for n in landing.store.names("c/measurement"))
    rec = {"name": files[0].name, "bytes": files[0].bytes, "sha256": files[0].sha256}
    fs, path = azure_landing.azurite.fs, f"{azure_landing.root}/c/measurement/{files[0].name}"
    data = azure_landing.files()[f"c/measurement/{files[0].name}"]
    with fs.open_output_stream(path) as out:
        out.write(bytes([data[0] ^ 1]) + data[1:])
    assert landing.check_file("c", "measurement", rec, thorough=False) is None
    assert landing.check_file("c", "measurement", rec, thorough=True) == "content differs from what was landed (SHA-256 mismatch)"
    fs.delete_file(path)
    assert landing.check_file("c", "measurement", rec, thorough=False) == "missing"


def test_replace_overwrites_a_committed_blob_whole(azure_landing: AzureLanding, tmp_path: Path) -> None:
    """The rewrite step of repairs and withdrawals on a flat namespace: a server-side copy, then the delete."""
    cfg = tmp_path / "cohortsync.toml"
    cfg.write_text(CONFIG, encoding="utf-8")
    landing = open_landing(load_settings(cfg))
    for name, payload in (("a.parquet", b"old"), (".tmp-9-a.parquet", b"new content")):
        sink, seal = landing.create("c", "t", name)
        sink.write(payload)
        seal()
    landing.finish_relanding("c", "t", [("a.parquet", ".tmp-9-a.parquet")])
    landing.finish_relanding("c", "t", [("a.parquet", ".tmp-9-a.parquet")])  # a redo after a crash: nothing left to do
    assert azure_landing.files() == {"c/t/a.parquet": b"new content"}


# --- faults ---------------------------------------------------------------------------------------


def test_storage_unreachable_is_transient_and_moves_nothing(
    project: Project, azure_landing: AzureLanding, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", person_ids(project)[::7]))).exit_code == 0
    from servers.azurite import free_port

    monkeypatch.setenv("COHORTSYNC_LANDING__AZURE_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    r = project.cli("sync", "-q")
    assert r.exit_code == 4, r.output
    line = [x for x in r.output.splitlines() if x.strip()]
    assert len(line) == 1 and "Azure storage account devstoreaccount1 is unreachable or busy: " in line[0], r.output
    with open_state(project.settings()) as st:
        assert st.watermarks() == {}
    assert isinstance(TransientLandingError("x"), TransientLandingError) and TransientLandingError.transient


def test_wrong_account_key_is_a_usage_error_and_never_printed(project: Project, azure_landing: AzureLanding,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    assert project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", person_ids(project)[::7]))).exit_code == 0
    bad = "A" * 20 + azure_landing.azurite.key[20:]
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", bad)
    for args in (["sync", "-q"], ["verify", "c"], ["export", "c", "--consumer", "x", "--out", str(project.root / "out")]):
        r = project.cli(*args)
        assert r.exit_code == 2, r.output
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert len(lines) == 1 and "refused the credentials from the environment" in lines[0], r.output
        assert bad not in r.output and bad[20:40] not in r.output
    assert not (project.root / "out").exists()
    with open_state(project.settings()) as st:
        assert st.watermarks() == {}
    assert LandingAuthError.transient is False


def test_key_and_sas_together_are_refused(project: Project, azure_landing: AzureLanding, monkeypatch: pytest.MonkeyPatch) -> None:
    assert project.cli("add-cohort", "c", "--patients", str(project.write_ids("c.csv", person_ids(project)[::7]))).exit_code == 0
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "sv=2024-01-01&sig=secretsig")
    r = project.cli("sync", "-q")
    assert r.exit_code == 2 and "set AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN, not both" in r.output
    assert "secretsig" not in r.output


# --- the whole flow through the CLI ---------------------------------------------------------------


def run_flow(p: Project, env: dict[str, str]) -> dict[str, object]:
    """add-cohort, backfill, incremental, amend (add), withdraw, export, verify: what each said."""
    def ok(*args: str) -> str:
        r = p.cli(*args, env=env)
        assert r.exit_code == 0, (args, r.output)
        return r.output

    ids = person_ids(p)
    members = ids[::4]
    ok("add-cohort", "c", "--patients", str(p.write_ids("c.csv", members)))
    ok("sync", "-q")
    p.add_load()
    ok("sync", "-q")
    ok("amend-cohort", "c", "--add", str(p.write_ids("add.csv", ids[1::40])))
    ok("sync", "-q")
    ok("amend-cohort", "c", "--remove", str(p.write_ids("rm.csv", members[:25])))
    ok("export", "c", "--consumer", "acme", "--out", str(p.root / "extract"))
    ok("verify-export", str(p.root / "extract"))
    ok("verify", "c")
    counts: dict[str, int] = {}
    for q in (p.root / "extract").rglob("*.parquet"):  # parts split among encoder lanes: compare per table
        counts[q.parent.name] = counts.get(q.parent.name, 0) + pq.read_metadata(q).num_rows
    return counts


def flow_projects(tmp_path: Path, eunomia_db: Path, *kinds: str) -> dict[str, Project]:
    """One Eunomia project per kind, side by side, for the whole flow (each says where it lands)."""
    projects = {}
    for kind in kinds:
        root = tmp_path / kind
        root.mkdir()
        shutil.copy(eunomia_db, root / "omop.duckdb")
        (root / "cohortsync.toml").write_text(CONFIG + EXTRA, encoding="utf-8")
        (root / "keep_everything.toml").write_text(keep_everything_policy(), encoding="utf-8")
        projects[kind] = Project(root, CliRunner())
    return projects


def test_the_whole_flow_on_azurite_equals_the_local_one(
    tmp_path: Path, eunomia_db: Path, azure_landing: AzureLanding, state_env: StateEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    projects = flow_projects(tmp_path, eunomia_db, "local", "azure")
    url = azure_landing.url
    monkeypatch.delenv("COHORTSYNC_LANDING__PATH")  # each project says where it lands
    local = run_flow(projects["local"], state_env(projects["local"].root))
    azure = run_flow(projects["azure"], {**state_env(projects["azure"].root), "COHORTSYNC_LANDING__PATH": url})
    assert local == azure
    assert not (projects["azure"].root / "landing").exists()
    monkeypatch.setenv("COHORTSYNC_LANDING__PATH", url)
    az_settings = projects["azure"].settings()
    monkeypatch.delenv("COHORTSYNC_LANDING__PATH")
    rows = landing_rows_of(open_landing(az_settings), az_settings)
    assert rows == landing_rows_of(open_landing(projects["local"].settings()), projects["local"].settings())
    assert sum(len(v) for v in rows.values()) > 1000
    # Every blob is a listed file: nothing temporary, nothing unlisted.
    with open_state(az_settings) as st:
        listed = {f"c/{t}/{f['name']}": f["sha256"] for (c, t) in st.watermarks() for f in st.files(c, t)}
    blobs = azure_landing.files()
    assert set(blobs) == set(listed)
    assert all(__import__("hashlib").sha256(blobs[k]).hexdigest() == v for k, v in listed.items())

    # A damaged blob: verify names it (exit 5), --repair lands the table again, verify is clean.
    env = {**state_env(projects["azure"].root), "COHORTSYNC_LANDING__PATH": url}
    victim = sorted(k for k in blobs if k.startswith("c/condition_occurrence/"))[0]
    data = blobs[victim]
    with azure_landing.azurite.fs.open_output_stream(f"{azure_landing.root}/{victim}") as out:
        out.write(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :])
    p = projects["azure"]
    r = p.cli("verify", "c", env=env)
    assert r.exit_code == 5 and "SHA-256 mismatch" in r.output, r.output
    r = p.cli("verify", "c", "--repair", env=env)
    assert r.exit_code == 0, r.output
    assert p.cli("verify", "c", env=env).exit_code == 0
    monkeypatch.setenv("COHORTSYNC_LANDING__PATH", url)
    assert landing_rows_of(open_landing(az_settings), az_settings) == rows
    assert not any(k.rsplit("/", 1)[1].startswith(".tmp-") for k in azure_landing.files())
    # Retiring the cohort deletes its blobs.
    r = p.cli("remove-cohort", "c", "--purge", env=env)
    assert r.exit_code == 0, r.output
    assert azure_landing.files() == {}




@given(st.from_regex(r"[a-z0-9]{3,24}", fullmatch=True), st.from_regex(r"[a-z0-9]{3,40}", fullmatch=True))
def test_the_error_class_never_depends_on_names_in_the_message(account: str, container: str) -> None:
    """Names of accounts and containers (which may hold "403" or "500") never decide the class."""
    loc = azure_location(f"abfss://{container}@{account}.dfs.core.windows.net/x")
    url = f"http://127.0.0.1:1/{account}/{container}"
    down = OSError(f"GetProperties for '{url}' failed. Azure Error: [] Fail to get a new connection for: {url}.")
    denied = OSError(f"ListBlobs failed for prefix='{container}'. Azure Error: [AuthorizationFailure] 403 Server failed")
    other = OSError(f"GetProperties for '{url}/{container}' failed. Azure Error: [InvalidBlobType] 409 The blob type is invalid")
    assert type(classify_azure(loc, down)) is TransientLandingError
    assert type(classify_azure(loc, denied)) is LandingAuthError
    assert type(classify_azure(loc, other)) is LandingError


def test_the_tests_plain_http_listing_agrees_with_pyarrows(azure_landing: AzureLanding) -> None:
    """The crash trials fall back to a plain HTTP listing when pyarrow's fails (tests/servers/azurite.py):
    it must see exactly the files pyarrow sees, and skip directory markers."""
    fs, root = azure_landing.azurite.fs, azure_landing.root
    for name in ("c/person/a.parquet", "c/person/b.parquet", "c/note/x.parquet"):
        with fs.open_output_stream(f"{root}/{name}") as out:
            out.write(b"x")
    fs.delete_file(f"{root}/c/note/x.parquet")  # pyarrow leaves a directory marker for c/note
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    via_pyarrow = sorted(i.path for i in infos if i.type == pafs.FileType.File)
    expected = [f"{root}/c/person/a.parquet", f"{root}/c/person/b.parquet"]
    assert via_pyarrow == sorted(azure_landing.azurite.list_blobs(root)) == expected
