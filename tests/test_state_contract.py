"""The state interface, one suite over both backends: SQLite in a folder and a real PostgreSQL server.

Whatever a sync, verify, export or lifecycle command relies on must read back the same from either
store: watermarks and the files they cover, runs, re-landings, verify findings, buyer slots, the key
fingerprint and the run lock. PostgreSQL comes from tests/servers/postgres.py (never skipped).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cohortsync.errors import DeidError, InputError, LockedError, StateError
from cohortsync.landing import LandedFile
from cohortsync.state import StateStore, TableOutcome
from servers.postgres import PostgresState

T0 = datetime(2026, 10, 4, 2, 0)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, object]:
    """How to open the store under test: a folder, or a PostgreSQL state (URL + password)."""
    if request.param == "sqlite":
        return ("sqlite", tmp_path / "state")
    pg: PostgresState = request.getfixturevalue("postgres_state")
    return ("postgresql", pg)


def open_store(backend: tuple[str, object]) -> StateStore:
    kind, where = backend
    if kind == "sqlite":
        assert isinstance(where, Path)
        return StateStore(where)
    assert isinstance(where, PostgresState)
    return StateStore.postgres(where.url, where.password)


@pytest.fixture
def store(backend: tuple[str, object]) -> Iterator[StateStore]:
    s = open_store(backend)
    try:
        yield s
    finally:
        s.close()


def outcome(cohort: str, table: str, lower: datetime | None, upper: datetime, files: list[LandedFile], batch: int = 0,
            notes: dict[str, object] | None = None) -> TableOutcome:
    return TableOutcome(cohort, table, lower, upper, sum(f.rows for f in files), files, "landed", seconds=1.2345,
                        notes=notes, batch=batch)


def lf(name: str, rows: int = 10) -> LandedFile:
    return LandedFile(name, rows, rows * 100, f"{name:0<64}"[:64])


def test_watermarks_and_committed_files(store: StateStore) -> None:
    run = store.start_run("sync")
    big = 5_000_000_000  # beyond a 32-bit integer: counts are BIGINT on both engines
    store.commit_table(run, [
        outcome("a", "person", None, T0, [lf("f-b.parquet"), LandedFile("f-a.parquet", big, big, "0" * 64)], batch=2),
        outcome("b", "person", None, T0, [lf("g.parquet")]),
    ])
    store.commit_table(run, [outcome("a", "person", T0, T0 + timedelta(days=7), [lf("F-c.parquet", 3)], batch=3)])
    marks = store.watermarks()
    assert marks[("a", "person")].wm == T0 + timedelta(days=7) and marks[("a", "person")].batch == 3
    assert marks[("b", "person")].wm == T0
    assert store.committed_files("a", "person") == {"f-a.parquet", "f-b.parquet", "F-c.parquet"}
    files = store.files("a", "person")
    # Ordered by window, then by name byte-wise (as SQLite does; PostgreSQL's columns are COLLATE "C").
    assert [f["name"] for f in files] == ["f-a.parquet", "f-b.parquet", "F-c.parquet"]
    assert files[0]["rows"] == big and files[0]["lower"] is None and files[2]["lower"] == T0.isoformat(timespec="microseconds")
    (row,) = [r for r in store.status_rows() if r["cohort"] == "a"]
    assert row["rows_landed"] == big + 13 and row["files"] == 3 and row["last_status"] == "landed"
    store.update_files("a", "person", [LandedFile("f-b.parquet", 4, 400, "e" * 64)], rows_removed=6)
    assert {f["name"]: f["rows"] for f in store.files("a", "person")}["f-b.parquet"] == 4
    assert next(r for r in store.status_rows() if r["cohort"] == "a")["rows_landed"] == big + 7


def test_a_failed_transaction_leaves_nothing(store: StateStore) -> None:
    run = store.start_run("sync")
    with pytest.raises(RuntimeError), store.transaction() as db:
        db.execute("INSERT INTO cohort VALUES (?, ?, ?, ?)", ("x", 1, "s", "t"))
        raise RuntimeError("boom")
    assert store.cohort_names() == set()
    # A commit_table whose second outcome breaks a constraint moves no watermark at all.
    bad = TableOutcome("a", "person", None, None, 0, [], "landed")
    with pytest.raises(AssertionError):
        store.commit_table(run, [outcome("a", "drug_exposure", None, T0, [lf("d")]), bad])
    assert store.watermarks() == {}


def test_runs_outcomes_and_notes(store: StateStore) -> None:
    run = store.start_run("sync")
    o = outcome("a", "person", None, T0, [lf("p")], notes={"k": 1})
    store.commit_table(run, [o])
    failed = TableOutcome("a", "drug_exposure", None, None, 0, [], "failed", error="source unreachable")
    store.log_outcome(run, failed)
    store.log_outcome(run, failed)  # an upsert, not a duplicate
    store.end_run(run, "partial")
    (r,) = store.runs()
    assert r["run_id"] == run and r["status"] == "partial" and r["command"] == "sync" and r["ended"]
    rt = store.run_tables(run)
    assert [(x["tbl"], x["status"]) for x in rt] == [("drug_exposure", "failed"), ("person", "landed")]
    assert rt[1]["seconds"] == round(1.2345, 3) and rt[1]["notes"] == '{"k": 1}'
    assert store.window_notes("a", "person") == {T0.isoformat(timespec="microseconds"): '{"k": 1}'}
    rows = {x["tbl"]: x for x in store.status_rows()}
    assert rows["drug_exposure"]["watermark"] is None and rows["drug_exposure"]["last_error"] == "source unreachable"


def test_cohorts_purges_and_forgetting(store: StateStore) -> None:
    store.record_cohort("a", 3, "s1", "2026-10-01")
    store.record_cohort("a", 4, "s2", "2026-10-01")
    store.record_cohort("b", 1, "s3", "2026-10-02")
    assert store.cohort_names() == {"a", "b"}
    run = store.start_run("sync")
    store.commit_table(run, [outcome("a", "person", None, T0, [lf("x", 7), lf("y", 5)])])
    store.record_purge("a", 1, 2)
    store.record_purge("a", 1, 3)
    assert store.purged_amendments("a") == {1}
    store.record_verify("a", {"person": ("ok", None)})
    store.forget_cohort("a")
    assert store.cohort_names() == {"b"} and store.watermarks() == {} and store.purged_amendments("a") == set()
    assert store.verify_results() == {}
    (n, rows) = store.db.execute("SELECT files, rows FROM retired WHERE cohort = ?", ("a",)).fetchone()
    assert (n, rows) == (2, 12) and isinstance(rows, int)
    store.commit_table(run, [outcome("b", "person", None, T0, [lf("z")])])
    store.forget_table("b", "person")
    assert store.committed_files("b", "person") == set() and store.watermarks() == {}


def test_swap_and_relandings(store: StateStore) -> None:
    run = store.start_run("sync")
    store.commit_table(run, [outcome("a", "person", None, T0, [lf("old1"), lf("old2"), lf("keep", 4)])])
    store.swap_table(run, "a", "person", T0, [("tmp-old1", lf("old1", 8)), ("tmp-new", lf("new", 2))],
                     unchanged=frozenset({"keep"}))
    assert store.relandings() == {("a", "person"): [("new", "tmp-new"), ("old1", "tmp-old1"), ("old2", None)]}
    assert store.committed_files("a", "person") == {"old1", "new", "keep"}
    (row,) = store.status_rows()
    assert row["rows_landed"] == 14 and row["files"] == 3
    store.relanded("a", "person")
    assert store.relandings() == {}


def test_verify_results(store: StateStore) -> None:
    store.record_verify("a", {"person": ("damaged", "file x: size differs"), "drug_exposure": ("ok", None)})
    store.record_verify("a", {"person": ("ok", None)})
    got = store.verify_results()
    assert {k: (v["status"], v["detail"]) for k, v in got.items()} == {
        ("a", "person"): ("ok", None), ("a", "drug_exposure"): ("ok", None)}


def test_consumer_slots_and_exports(store: StateStore) -> None:
    first = store.consumer_slot("acme", 8)
    assert store.consumer_slot("acme", 8) == first
    others = {store.consumer_slot(f"buyer{i}", 8) for i in range(7)}
    assert len(others | {first}) == 8
    with pytest.raises(StateError, match="every one of the 8 buyer date-offset slots is taken"):
        store.consumer_slot("one-too-many", 8)
    e = store.start_export("a", "acme", ["person", "drug_exposure"], "/x", "tester")
    store.end_export(e, "done", 12, "f" * 64)
    (x,) = store.exports()
    assert x["tables"] == ["person", "drug_exposure"] and x["rows"] == 12 and x["status"] == "done"


def test_key_fingerprint(store: StateStore, backend: tuple[str, object]) -> None:
    assert store.key_fingerprint() is None
    store.check_key_fingerprint("fp1")
    store.check_key_fingerprint("fp1")
    with pytest.raises(DeidError, match="not the key this landing was written with"):
        store.check_key_fingerprint("fp2")
    with open_store(backend) as again:  # the schema is created once; reopening changes nothing
        assert again.key_fingerprint() == "fp1"
        again.forget_key()
    assert store.key_fingerprint() is None


def test_the_run_lock_excludes_a_second_run_and_names_the_holder(store: StateStore, backend: tuple[str, object]) -> None:
    store.lock("sync")
    with open_store(backend) as other:
        with pytest.raises(LockedError, match=rf"another cohortsync run holds the lock \(pid {os.getpid()}.*sync"):
            other.lock("verify")
        store.unlock()
        other.lock("verify")  # free once released
        other.unlock()


LOCK_AND_WAIT = """
import sys, time
from pathlib import Path
from cohortsync.state import StateStore
kind, where, url = sys.argv[1:4]
s = StateStore(Path(where)) if kind == "sqlite" else StateStore.postgres(url, sys.stdin.readline().strip())
s.lock("sync")
print("locked", flush=True)
time.sleep(600)
"""


def test_a_killed_holder_releases_the_lock(store: StateStore, backend: tuple[str, object]) -> None:
    kind, where = backend
    url, password = (where.url, where.password) if isinstance(where, PostgresState) else ("", "")
    p = subprocess.Popen([sys.executable, "-c", LOCK_AND_WAIT, kind, str(where), url], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    try:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(password + "\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=rf"pid {p.pid}"):
            store.lock("sync")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    # The server notices the dead session at once (the socket closes); poll only for its bookkeeping.
    for _ in range(100):
        try:
            store.lock("sync")
            break
        except LockedError:
            time.sleep(0.1)
    else:
        pytest.fail("the lock of a killed process was never released")
    store.unlock()


def test_a_newer_schema_is_refused(store: StateStore, backend: tuple[str, object]) -> None:
    if store.kind == "sqlite":
        store.db.execute("PRAGMA user_version=99")
    else:
        store.db.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StateError, match=r"was written by a newer cohortsync \(schema 99\)"):
        open_store(backend)


texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=40)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(texts, min_size=1, max_size=6, unique=True), detail=st.one_of(st.none(), texts))
def test_any_text_reads_back_byte_for_byte_and_in_byte_order(store: StateStore, names: list[str], detail: str | None) -> None:
    """File names and findings are stored as given and sorted as bytes on both engines."""
    run = store.start_run("sync")
    store.forget_table("c", "person")
    store.commit_table(run, [outcome("c", "person", None, T0, [lf(n) for n in names])])
    assert [f["name"] for f in store.files("c", "person")] == sorted(names, key=lambda n: n.encode())
    store.record_verify("c", {"person": ("damaged", detail)})
    assert store.verify_results()[("c", "person")]["detail"] == detail


def filled_sqlite(folder: Path, names: list[str], detail: str | None, seconds: float) -> StateStore:
    s = StateStore(folder)
    run = s.start_run("sync")
    s.record_cohort("c", len(names), "s" * 64, "2026-10-01")
    s.check_key_fingerprint("fp")
    s.commit_table(run, [TableOutcome("c", "person", None, T0, 5, [lf(n) for n in names], "landed", seconds=seconds,
                                      notes={"n": names[0]})])
    s.log_outcome(run, TableOutcome("c", "note", None, None, 0, [], "failed", error=detail))
    s.record_verify("c", {"person": ("damaged", detail)})
    s.record_purge("c", 1, 3)
    s.consumer_slot("acme", 16)
    s.end_export(s.start_export("c", "acme", ["person"], "/x", "me"), "done", 5, None)
    s.end_run(run, "ok")
    return s


def all_rows(store: StateStore) -> dict[str, list[tuple[object, ...]]]:
    from cohortsync.state import TABLES

    return {t: sorted((tuple(r) for r in store.db.execute(f"SELECT * FROM {t}").fetchall()), key=repr) for t in TABLES}


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(texts, min_size=1, max_size=5, unique=True), detail=st.one_of(st.none(), texts),
       seconds=st.floats(0, 1e6, allow_nan=False))
def test_state_copy_reproduces_every_row_and_the_digest_notices_any_change(
    tmp_path_factory: pytest.TempPathFactory, postgres_server: object, names: list[str], detail: str | None, seconds: float
) -> None:
    import secrets

    from cohortsync.state import TABLES, copy_state, table_digest
    from servers.postgres import PostgresServer

    assert isinstance(postgres_server, PostgresServer)
    db = "h_" + secrets.token_hex(6)
    with postgres_server.connect() as con:
        con.execute(f'CREATE DATABASE "{db}"')
    try:
        with filled_sqlite(tmp_path_factory.mktemp("s") / "state", names, detail, seconds) as src, \
                StateStore.postgres(postgres_server.url(db), postgres_server.password) as dst:
            report = copy_state(src, dst)
            assert all_rows(dst) == all_rows(src)
            assert report.tables == {t: table_digest(dst, t) for t in TABLES} and report.rows > 10
            dst.db.execute("UPDATE landed_file SET rows = rows + 1 WHERE name = ?", (names[-1],))
            assert table_digest(dst, "landed_file") != report.tables["landed_file"]
            with pytest.raises(InputError, match="is not empty"):
                copy_state(src, dst)
    finally:
        with postgres_server.connect() as con:
            con.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
