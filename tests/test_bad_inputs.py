"""Every row of tests/BAD_INPUTS.md, run for real: one-line errors, non-zero exits, nothing half-written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable

import pytest

from conftest import REPO, TEST_KEY, Project, person_ids, snapshot
from servers.postgres import PostgresState

ROWS = {
    m.group(1)
    for m in re.finditer(r"^\| ([a-z0-9][a-z0-9-]*) \|", (REPO / "tests" / "BAD_INPUTS.md").read_text(), re.M)
    if m.group(1) != "id"
}
CASES: dict[str, Callable[[Project], None]] = {}


def case(name: str) -> Callable[[Callable[[Project], None]], Callable[[Project], None]]:
    def deco(f: Callable[[Project], None]) -> Callable[[Project], None]:
        CASES[name] = f
        return f

    return deco


def one_line(output: str, needle: str) -> None:
    assert output.startswith("error: ") and output.count("\n") == 1, output
    assert needle in output, output


def refused_add(project: Project, name: str, content: bytes, needle: str) -> None:
    f = project.root / "p.txt"
    f.write_bytes(content)
    before = snapshot(project.root / "cohorts"), snapshot(project.root / "state")
    r = project.cli("add-cohort", name, "--patients", str(f))
    assert r.exit_code == 2
    one_line(r.output, needle)
    assert (snapshot(project.root / "cohorts"), snapshot(project.root / "state")) == before


@case("junk-line")
def _(p: Project) -> None:
    refused_add(p, "c", b"1\n2\nabc\n", "line 3: not a positive integer person_id")


@case("huge-id")
def _(p: Project) -> None:
    refused_add(p, "c", b"9223372036854775808\n", "line 1: person_id exceeds the 64-bit range")


@case("unicode-digits")
def _(p: Project) -> None:
    refused_add(p, "c", "1\n١٢\n".encode(), "line 2: not a positive integer person_id")


@case("not-utf8")
def _(p: Project) -> None:
    refused_add(p, "c", "1\n2\nJos\xe9\n".encode("latin-1"), "not UTF-8 text (byte 7)")


@case("empty-file")
def _(p: Project) -> None:
    refused_add(p, "c", b"", "holds no person_id")


@case("sql-name")
def _(p: Project) -> None:
    refused_add(p, "x'; DROP TABLE omop.person; --", b"1\n", "invalid cohort name")


@case("unicode-name")
def _(p: Project) -> None:
    refused_add(p, "kohorte-ü", b"1\n", "invalid cohort name")


def registered(p: Project) -> None:
    assert p.cli("add-cohort", "c", "--patients", str(p.write_ids("c.csv", person_ids(p)[:30]))).exit_code == 0


@case("missing-config")
def _(p: Project) -> None:
    from click.testing import CliRunner

    from cohortsync.cli import cli

    r = CliRunner().invoke(cli, ["--log-format", "text", "--config", str(p.root / "nope.toml"), "sync"], obj={})
    assert r.exit_code == 2
    one_line(r.output, "no config file")


def config_error(p: Project, extra: str, needle: str, env: dict[str, str] | None = None) -> None:
    p.config.write_text(p.config.read_text() + extra)
    r = p.cli("sync", env=env)
    assert r.exit_code == 2
    one_line(r.output, needle)


@case("wrong-type")
def _(p: Project) -> None:
    config_error(p, '\n[sync]\nbatch_rows = "many"\n', "sync.batch_rows: Input should be a valid integer")


@case("unknown-key")
def _(p: Project) -> None:
    p.config.write_text(p.config.read_text().replace('[source]\n', '[source]\ndatabse = "x"\n'))
    r = p.cli("sync")
    assert r.exit_code == 2
    one_line(r.output, "source.databse: unknown key")


@case("unknown-env")
def _(p: Project) -> None:
    config_error(p, "", "COHORTSYNC_LANDNG__PATH matches no setting", env={"COHORTSYNC_LANDNG__PATH": "x"})


@case("no-key")
def _(p: Project) -> None:
    registered(p)
    r = p.cli("sync", env={"COHORTSYNC_DEID_KEY": ""})
    assert r.exit_code == 2
    one_line(r.output, "COHORTSYNC_DEID_KEY is not set")


@case("unknown-cohort")
def _(p: Project) -> None:
    registered(p)
    r = p.cli("sync", "--cohort", "nope")
    assert r.exit_code == 2
    one_line(r.output, "unknown cohort 'nope' (registered: c)")


@case("landing-is-a-file")
def _(p: Project) -> None:
    registered(p)
    (p.root / "landing").write_text("not a folder")
    r = p.cli("sync", "-q")
    assert r.exit_code == 1
    assert "FAILED: cannot write" in r.output and "error: 8 cohort table(s) failed" in r.output  # note: empty
    from cohortsync.state import StateStore

    with StateStore(p.root / "state") as st:
        assert st.watermarks() == {}


def in_mount_namespace(p: Project, script: str) -> subprocess.CompletedProcess[str]:
    """Run shell commands in a private mount namespace (root only): tmpfs mounts vanish with it."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: tmpfs cases need it")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here ({probe.stderr.decode().strip()}); run as root")
    env = {**os.environ, "COHORTSYNC_DEID_KEY": TEST_KEY, "PY": sys.executable, "CFG": str(p.config), "ROOT": str(p.root)}
    return subprocess.run(["unshare", "-m", "sh", "-ec", script], capture_output=True, text=True, env=env, timeout=300)


@case("disk-full")
def _(p: Project) -> None:
    registered(p)
    (p.root / "landing").mkdir()
    r = in_mount_namespace(
        p,
        'mount -t tmpfs -o size=64k tmpfs "$ROOT/landing"\n'
        '"$PY" -m cohortsync.cli --log-format text --config "$CFG" sync -q > "$ROOT/out.txt" 2>&1 '
        '|| echo "rc=$?" >> "$ROOT/out.txt"\n'
        'find "$ROOT/landing" -name ".tmp-*" >> "$ROOT/tmpfiles.txt"\n'
        '"$PY" - <<EOF >> "$ROOT/out.txt"\n'
        "from pathlib import Path\n"
        "from cohortsync.state import StateStore\n"
        "with StateStore(Path('$ROOT/state')) as st:\n"
        "    for (c, t) in st.watermarks():\n"
        "        for f in st.files(c, t):\n"
        "            assert (Path('$ROOT/landing') / c / t / f['name']).exists(), f\n"
        "print('state consistent')\n"
        "EOF\n",
    )
    out = (p.root / "out.txt").read_text()
    assert r.returncode == 0, r.stderr
    assert "No space left on device" in out and "rc=1" in out and "state consistent" in out
    assert (p.root / "tmpfiles.txt").read_text() == ""


@case("read-only-state")
def _(p: Project) -> None:
    registered(p)
    r = in_mount_namespace(
        p,
        'mkdir -p "$ROOT/ro" && cp -r "$ROOT/state/." "$ROOT/ro/"\n'
        'mount --bind "$ROOT/ro" "$ROOT/state" && mount -o remount,bind,ro "$ROOT/state"\n'
        '"$PY" -m cohortsync.cli --log-format text --config "$CFG" sync -q > "$ROOT/out.txt" 2>&1 '
        '|| echo "rc=$?" >> "$ROOT/out.txt"\n',
    )
    assert r.returncode == 0, r.stderr
    out = (p.root / "out.txt").read_text()
    assert "rc=1" in out
    first = out.splitlines()[0]
    assert first.startswith("error: state store") and "is not writable" in first, out
    assert not (p.root / "landing").exists()


@case("corrupt-state")
def _(p: Project) -> None:
    registered(p)
    (p.root / "state" / "cohortsync.sqlite3").write_bytes(b"this is not sqlite" * 100)
    for leftover in (p.root / "state").glob("cohortsync.sqlite3-*"):
        leftover.unlink()
    r = p.cli("status")
    assert r.exit_code == 1
    one_line(r.output, "file is not a database")


@case("stray-landing-file")
def _(p: Project) -> None:
    registered(p)
    assert p.cli("sync", "-q").exit_code == 0
    p.add_load()
    d = p.landing / "c" / "measurement"
    stray = d / "measurement__20200101T000000000000__20200108T000000000000__0000.parquet"
    stray.write_bytes(b"x")
    r = p.cli("sync", "-q")
    assert r.exit_code == 5 and "is not recorded in the state store; refusing" in r.output
    assert stray.exists()


@case("unknown-option")
def _(p: Project) -> None:
    r = p.cli("sync", "--bogus")
    assert r.exit_code == 2
    one_line(r.output, "cohortsync sync: No such option '--bogus'. (see 'cohortsync sync --help')")


@case("lock-held")
def _(p: Project) -> None:
    registered(p)
    from cohortsync.state import StateStore

    with StateStore(p.root / "state") as st:
        st.lock("sync")
        r = p.cli("sync")
    assert r.exit_code == 3
    one_line(r.output, "another cohortsync run holds the lock (pid ")


@case("source-in-use")
def _(p: Project) -> None:
    registered(p)
    from test_operations import database_held

    with database_held(p.db):
        r = p.cli("sync", env={"COHORTSYNC_SOURCE__RETRIES": "0"})
    assert r.exit_code == 4
    one_line(r.output, "is in use by another process")


@case("uncovered-column")
def _(p: Project) -> None:
    registered(p)
    con = p.con()
    con.execute("ALTER TABLE omop.omop.note ADD COLUMN scanned_by VARCHAR")
    con.close()
    r = p.cli("sync", "-q")
    assert r.exit_code == 5
    assert "note: FAILED: note: column(s) scanned_by not covered by the de-identification policy" in r.output
    assert r.output.splitlines()[-1] == "error: 1 cohort table(s) failed: c/note (see above)"


@case("reserved-column")
def _(p: Project) -> None:
    registered(p)
    con = p.con()
    con.execute("ALTER TABLE omop.omop.condition_occurrence ADD COLUMN __code_condition_source_value BOOLEAN")
    con.close()
    r = p.cli("sync", "-q")
    assert r.exit_code == 5, r.output
    assert (
        "condition_occurrence: FAILED: condition_occurrence has a column named __code_condition_source_value; "
        "names starting __code_ are reserved" in r.output
    ), r.output
    assert r.output.splitlines()[-1] == "error: 1 cohort table(s) failed: c/condition_occurrence (see above)"


@case("unknown-ids")
def _(p: Project) -> None:
    before = snapshot(p.root / "cohorts")
    r = p.cli("add-cohort", "c", "--patients", str(p.write_ids("c.csv", [*person_ids(p)[:3], 10**12])))
    assert r.exit_code == 5
    one_line(r.output, "1 of 4 ids are not in omop.person; check the file against the source, or pass --allow-missing")
    assert str(10**12) not in r.output and snapshot(p.root / "cohorts") == before
@case("truncated-file")
def _(p: Project) -> None:
    from test_damage import damaged_file_scenario

    damaged_file_scenario(p, "truncated")


@case("garbage-file")
def _(p: Project) -> None:
    from test_damage import damaged_file_scenario

    damaged_file_scenario(p, "garbage")


@case("flipped-byte")
def _(p: Project) -> None:
    from test_damage import damaged_file_scenario

    damaged_file_scenario(p, "flipped")


@case("missing-file")
def _(p: Project) -> None:
    from test_damage import damaged_file_scenario

    damaged_file_scenario(p, "missing")


@case("state-older-than-landing")
def _(p: Project) -> None:
    from test_damage import restored_state_scenario

    restored_state_scenario(p)


@case("landing-older-than-state")
def _(p: Project) -> None:
    from test_damage import restored_landing_scenario

    restored_landing_scenario(p)
def refused_export(p: Project, args: list[str], needle: str, exit_code: int = 2, sync: bool = True) -> None:
    """An export refused: one line, nothing written (no DIR, no temporary folder, state unchanged)."""
    registered(p)
    if sync:
        assert p.cli("sync", "-q").exit_code == 0
    before_root = sorted(x.name for x in p.root.iterdir())
    before_state = snapshot(p.root / "state")
    r = p.cli("export", *args)
    assert r.exit_code == exit_code, r.output
    one_line(r.output, needle)
    assert sorted(x.name for x in p.root.iterdir()) == before_root
    if exit_code == 2:  # refused before it started: not even an audit row
        assert {k: v for k, v in snapshot(p.root / "state").items() if "sqlite3" not in k} == {
            k: v for k, v in before_state.items() if "sqlite3" not in k
        }
        from cohortsync.state import StateStore

        with StateStore(p.root / "state") as st:
            assert st.exports() == []


def out_dir(p: Project) -> str:
    return str(p.root / "extract")


@case("export-unknown-cohort")
def _(p: Project) -> None:
    refused_export(p, ["nope", "--consumer", "acme", "--out", out_dir(p)], "unknown cohort 'nope' (registered: c)")


@case("export-never-synced")
def _(p: Project) -> None:
    refused_export(p, ["c", "--consumer", "acme", "--out", out_dir(p)], "cohort c has never been synced", sync=False)


@case("export-bad-consumer")
def _(p: Project) -> None:
    refused_export(p, ["c", "--consumer", "Acme Corp", "--out", out_dir(p)], "invalid consumer name 'Acme Corp'")


@case("export-dir-exists")
def _(p: Project) -> None:
    d = p.root / "extract"
    d.mkdir()
    (d / "keep.txt").write_text("theirs")
    refused_export(p, ["c", "--consumer", "acme", "--out", str(d)], "already exists; pass --overwrite to replace it")
    assert [x.name for x in d.iterdir()] == ["keep.txt"]


@case("export-overwrite-foreign")
def _(p: Project) -> None:
    d = p.root / "extract"
    d.mkdir()
    (d / "thesis.tex").write_text("theirs")
    refused_export(p, ["c", "--consumer", "acme", "--out", str(d), "--overwrite"],
                   "is not a cohortsync extract (no manifest.json); --overwrite replaces extracts only")  # fmt: skip
    assert [x.name for x in d.iterdir()] == ["thesis.tex"]


@case("export-as-of-early")
def _(p: Project) -> None:
    refused_export(p, ["c", "--consumer", "acme", "--out", out_dir(p), "--as-of", "2000-01-01"],
                   "--as-of 2000-01-01 00:00:00 is before the first sync of cohort c")  # fmt: skip


@case("export-as-of-junk")
def _(p: Project) -> None:
    refused_export(p, ["c", "--consumer", "acme", "--out", out_dir(p), "--as-of", "yesterday"],
                   "--as-of 'yesterday' is not a timestamp")  # fmt: skip


@case("export-unknown-table")
def _(p: Project) -> None:
    refused_export(p, ["c", "--consumer", "acme", "--out", out_dir(p), "--tables", "person,nope"],
                   "unknown table 'nope' for cohort c (landed: ")  # fmt: skip


@case("export-tampered-landing")
def _(p: Project) -> None:
    registered(p)
    assert p.cli("sync", "-q").exit_code == 0
    f = next((p.landing / "c" / "visit_occurrence").glob("*.parquet"))
    data = f.read_bytes()
    f.write_bytes(data[:-20] + bytes([data[-20] ^ 0x10]) + data[-19:])
    before = sorted(x.name for x in p.root.iterdir())
    r = p.cli("export", "c", "--consumer", "acme", "--out", out_dir(p))
    assert r.exit_code == 5
    one_line(r.output, "does not match its SHA-256 in the state store (changed after it was landed: tampering or bit rot)")
    assert sorted(x.name for x in p.root.iterdir()) == before


@case("verify-no-manifest")
def _(p: Project) -> None:
    (p.root / "empty").mkdir()
    r = p.cli("verify-export", str(p.root / "empty"))
    assert r.exit_code == 2
    one_line(r.output, "holds no manifest.json: not a cohortsync extract")


# Landing on Azure storage (Azurite, tests/servers/azurite.py): the environment points at a fresh container.
NEEDS_AZURE = {"azure-unreachable", "azure-bad-key", "azure-secret-in-url", "azure-no-container"}


def synced_nothing(p: Project) -> None:
    from cohortsync.state import StateStore

    with StateStore(p.root / "state") as st:
        assert st.watermarks() == {}


@case("azure-unreachable")
def _(p: Project) -> None:
    from servers.azurite import free_port

    assert p.cli("add-cohort", "c", "--patients", str(p.write_ids("c.csv", person_ids(p)[:50]))).exit_code == 0
    r = p.cli("sync", "-q", env={"COHORTSYNC_LANDING__AZURE_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert r.exit_code == 4
    one_line(r.output, "error: Azure storage account devstoreaccount1 is unreachable or busy: ")
    synced_nothing(p)


@case("azure-bad-key")
def _(p: Project) -> None:
    assert p.cli("add-cohort", "c", "--patients", str(p.write_ids("c.csv", person_ids(p)[:50]))).exit_code == 0
    bad = "A" * 16 + os.environ["AZURE_STORAGE_ACCOUNT_KEY"][16:]
    r = p.cli("sync", "-q", env={"AZURE_STORAGE_ACCOUNT_KEY": bad})
    assert r.exit_code == 2
    one_line(r.output, "error: Azure storage account devstoreaccount1 refused the credentials from the environment "
                       "(check AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN or the identity's role on ")
    assert bad[10:30] not in r.output
    synced_nothing(p)


@case("azure-secret-in-url")
def _(p: Project) -> None:
    url = os.environ["COHORTSYNC_LANDING__PATH"].replace("abfss://", "https://").split("@")
    https = f"https://{url[1].split('/')[0].replace('.dfs.', '.blob.')}/{url[0][len('https://'):]}/landing?sv=2024-05-04&sig=c2VjcmV0"
    r = p.cli("sync", "-q", env={"COHORTSYNC_LANDING__PATH": https})
    assert r.exit_code == 2
    one_line(r.output, "landing.path: Value error, an Azure landing URL may not carry a secret or a query (SAS, key): "
                       "put credentials in the environment (docs/configuration.md)")
    assert "c2VjcmV0" not in r.output


@case("azure-no-container")
def _(p: Project) -> None:
    assert p.cli("add-cohort", "c", "--patients", str(p.write_ids("c.csv", person_ids(p)[:50]))).exit_code == 0
    url = os.environ["COHORTSYNC_LANDING__PATH"].replace("abfss://", "abfss://nosuch")
    r = p.cli("sync", "-q", env={"COHORTSYNC_LANDING__PATH": url})
    assert r.exit_code == 2
    one_line(r.output, "container 'nosuch")
    one_line(r.output, "' does not exist in account devstoreaccount1")
    synced_nothing(p)


def test_every_row_has_a_test_and_every_test_a_row() -> None:
    assert set(CASES) | set(PG_CASES) == ROWS


# The state in PostgreSQL (tests/servers/postgres.py): the cases live in tests/test_postgres_state.py.
PG_CASES = {
    "state-unreachable": "state_unreachable",
    "state-url-password": "state_url_password",
    "state-wrong-password": "state_wrong_password",
    "pg-lock-held": "pg_lock_held",
    "pg-connection-cut": "pg_connection_cut",
    "state-copy-not-empty": "state_copy_not_empty",
}


@pytest.mark.parametrize("name", sorted(PG_CASES))
def test_bad_state_on_postgres(name: str, project: Project, postgres_state: PostgresState) -> None:
    import test_postgres_state

    getattr(test_postgres_state, PG_CASES[name])(project, postgres_state)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, project: Project, request: pytest.FixtureRequest) -> None:
    if name in NEEDS_AZURE:
        request.getfixturevalue("azure_landing")
    CASES[name](project)
