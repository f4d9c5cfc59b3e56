"""The production source: a Databricks SQL warehouse, through ``databricks-sql-connector``.

Why it looks the way it does:

* Names are always three-part (``catalog.schema.table``) so the session's current catalog never
  matters, and every statement is a sqlglot tree rendered in the Databricks dialect. Window bounds
  and cohort names are typed literals in that tree, not driver parameters: the stock Spark Thrift
  Server the tests run against ignores Databricks' native parameters.
* Results stream as Arrow: ``fetchmany_arrow`` in bounded batches behind a ``pa.RecordBatchReader``,
  so memory follows ``batch_rows``, not the result. Cloud fetch (results downloaded from cloud
  storage in parallel) stays on for real warehouses.
* The session time zone is set to UTC: ``load_dt`` watermarks are naive UTC, and a TIMESTAMP
  literal is read in the session zone. Timestamps that come back zoned are made naive UTC.
* Membership upload cannot use DELETE (plain Spark tables, which the tests use, have none), so the
  members table is partitioned by cohort and replaced with ``INSERT OVERWRITE ... PARTITION``, which
  Delta supports too; see :meth:`DatabricksSource.replace_members` and ``docs/databricks.md``.
* Secrets come only from the environment, live only inside the connector's auth header factory,
  and never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from typing import Any, Literal, TypeVar

import pyarrow as pa
import sqlglot
from sqlglot import exp

from cohortsync import logs, plan
from cohortsync.config import Settings
from cohortsync.errors import ConfigError, SourceConfigError, SourceError, TransientSourceError, safe_message

log = logging.getLogger(__name__)

ENV_TOKEN = "DATABRICKS_TOKEN"
ENV_CLIENT_ID = "DATABRICKS_CLIENT_ID"
ENV_CLIENT_SECRET = "DATABRICKS_CLIENT_SECRET"
UPLOAD_SUFFIX = "_upload"
DEFAULT_UPLOAD_ROWS = 20_000
T = TypeVar("T")


# --------------------------------------------------------------------------------------------- auth


class Credentials:
    """A PAT or a service principal's client id and secret; the secret never leaves this object's
    closure into a repr, and is handed to the connector only as an auth header factory."""

    def __init__(self, kind: Literal["pat", "oauth-m2m"], secret: str, client_id: str | None = None) -> None:
        self.kind = kind
        self.client_id = client_id
        self._secret = secret

    def __repr__(self) -> str:
        who = f", client_id={self.client_id!r}" if self.client_id else ""
        return f"Credentials({self.kind}{who}, secret=<redacted>)"

    __str__ = __repr__

    def provider(self, server_hostname: str, timeout_s: float, token_url: str | None = None) -> Any:
        """The connector's ``credentials_provider`` for these credentials."""
        if self.kind == "pat":
            return _StaticBearer(self._secret)
        assert self.client_id is not None
        url = token_url or f"https://{server_hostname}/oidc/v1/token"
        return OAuthM2M(url, self.client_id, self._secret, timeout_s)


def credentials_from_env(auth: Literal["pat", "oauth-m2m"], env: Mapping[str, str] | None = None) -> Credentials:
    """Read the credentials that ``source.auth`` names; they are never read from a config file."""
    env = os.environ if env is None else env
    if auth == "pat":
        token = env.get(ENV_TOKEN, "").strip()
        if not token:
            raise ConfigError(f"source.auth = 'pat' needs the environment variable {ENV_TOKEN}")
        return Credentials("pat", token)
    client_id = env.get(ENV_CLIENT_ID, "").strip()
    secret = env.get(ENV_CLIENT_SECRET, "").strip()
    missing = [n for n, v in ((ENV_CLIENT_ID, client_id), (ENV_CLIENT_SECRET, secret)) if not v]
    if missing:
        raise ConfigError(f"source.auth = 'oauth-m2m' needs the environment variables {' and '.join(missing)}")
    return Credentials("oauth-m2m", secret, client_id)


class _StaticBearer:
    """A personal access token as a credentials provider (the connector's own PAT path would do the
    same; going through one interface keeps the token out of ``connect()``'s keyword arguments)."""

    def __init__(self, token: str) -> None:
        self._header = {"Authorization": f"Bearer {token}"}

    def __repr__(self) -> str:
        return "_StaticBearer(<redacted>)"

    def auth_type(self) -> str:
        return "pat"

    def __call__(self, *args: object, **kwargs: object) -> Callable[[], dict[str, str]]:
        return lambda: dict(self._header)


class AuthenticationFailed(Exception):
    """The token endpoint refused the service principal (raised inside the connector's header hook)."""

    def __init__(self, status: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class OAuthM2M:
    """Databricks OAuth machine-to-machine: the client-credentials grant against the workspace's
    ``/oidc/v1/token``, as Databricks documents for service principals (works on Azure for
    Databricks-managed service principals too). Tokens last an hour; a new one is fetched a minute
    before expiry. Without ``databricks-sdk``: one POST does not justify a dependency."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, timeout_s: float = 60.0) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self._timeout_s = timeout_s
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OAuthM2M({self.token_url!r}, client_id={self.client_id!r}, secret=<redacted>)"

    def auth_type(self) -> str:
        return "oauth-m2m"

    def __call__(self, *args: object, **kwargs: object) -> Callable[[], dict[str, str]]:
        return lambda: {"Authorization": f"Bearer {self.token()}"}

    def token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() > self._expires - 60:
                self._token, lifetime = self._fetch()
                self._expires = time.monotonic() + lifetime
            return self._token

    def _fetch(self) -> tuple[str, float]:
        basic = base64.b64encode(f"{self.client_id}:{self._secret}".encode()).decode()
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "scope": "all-apis"}).encode()
        request = urllib.request.Request(
            self.token_url,
            data=body,
            headers={"Authorization": f"Basic {basic}", "Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                doc = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise AuthenticationFailed(e.code, f"token endpoint answered HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ConnectionError(f"token endpoint unreachable: {type(e).__name__}") from None
        except ValueError:
            raise AuthenticationFailed(None, "token endpoint answered something that is not JSON") from None
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthenticationFailed(None, "token endpoint answered without an access_token")
        return token, float(doc.get("expires_in", 3600))


# ------------------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class _Class:
    kind: str  # auth | forbidden | missing | timeout | unreachable | starting | busy | query
    transient: bool
    message: str


_ERROR_CLASS = re.compile(r"\[([A-Z][A-Z_]+)(?:\.[A-Z_]+)?\]")
_NAME = re.compile(r"`[^`]+`(?:\.`[^`]+`)*")
_MISSING = {
    "TABLE_OR_VIEW_NOT_FOUND": "table or view not found",
    "SCHEMA_NOT_FOUND": "schema not found",
    "CATALOG_NOT_FOUND": "catalog not found",
    "NO_SUCH_CATALOG_EXCEPTION": "catalog not found",
}
_FORBIDDEN = {"PERMISSION_DENIED", "INSUFFICIENT_PERMISSIONS", "UNAUTHORIZED_ACCESS"}
_TIMEOUT = {"QUERY_EXECUTION_TIMEOUT_EXCEEDED", "STATEMENT_TIMEOUT"}
_JAVA_PREFIX = re.compile(r"^(?:[\w$.]+(?:Exception|Error): |Error running query: )+")


def classify(e: BaseException, *, timed_out_after: float | None = None) -> SourceError:
    """Turn anything the connector raises into one clear line, transient or not.

    Works from the exception's type, HTTP status and Spark error class (``[TABLE_OR_VIEW_NOT_FOUND]``)
    rather than from free text where it can; the engine's text, when shown, goes through
    :func:`safe_message` (first line, quoted values redacted: they may be PHI).
    """
    c = _classify(e, timed_out_after)
    if c.transient:
        return TransientSourceError(f"Databricks: {c.message}")
    # Refused credentials, grants, a wrong warehouse, catalog or schema: the configuration (exit 2).
    return (SourceConfigError if c.kind in ("auth", "forbidden", "missing") else SourceError)(f"Databricks: {c.message}")


def _classify(e: BaseException, timed_out_after: float | None) -> _Class:
    from databricks.sql import exc
    from urllib3 import exceptions as u3

    if timed_out_after is not None:
        return _Class(
            "timeout", False, f"query timed out: no result after {timed_out_after:g} s (source.query_timeout_s); cancelled"
        )
    chain = _chain(e)
    for link in chain:
        if isinstance(link, AuthenticationFailed):
            code = f" (HTTP {link.status})" if link.status else ""
            return _Class("auth", False, f"authentication failed{code}: the service principal's id or secret was refused")
    status = _http_status(chain)
    if status == 401:
        return _Class(
            "auth", False, f"authentication failed (HTTP 401): check {ENV_TOKEN}, or {ENV_CLIENT_ID} and {ENV_CLIENT_SECRET}"
        )
    if status == 403:
        return _Class("forbidden", False, "access denied (HTTP 403): these credentials may not use this workspace or warehouse")
    if status == 404:
        return _Class("missing", False, "no SQL warehouse at source.http_path (HTTP 404): check server_hostname and http_path")
    if status in (429, 503):
        return _Class("starting", True, f"the SQL warehouse is starting or overloaded (HTTP {status})")
    if status in (502, 504):
        return _Class("unreachable", True, f"the SQL warehouse is unreachable (HTTP {status} from the gateway)")
    for link in chain:
        if isinstance(link, exc.MaxRetryDurationError):
            return _Class("starting", True, "the SQL warehouse is starting or overloaded (connector retry budget exhausted)")
        if isinstance(link, u3.ReadTimeoutError | TimeoutError):
            return _Class("unreachable", True, "the SQL warehouse did not answer in time (source.connect_timeout_s)")
        if isinstance(link, u3.NewConnectionError | u3.ProtocolError | ConnectionError | u3.NameResolutionError):
            return _Class("unreachable", True, f"the SQL warehouse is unreachable ({_network_reason(link)})")
    for link in chain:
        if isinstance(link, u3.MaxRetryError) and link.reason is not None:
            return _Class("unreachable", True, f"the SQL warehouse is unreachable ({_network_reason(link.reason)})")
    text = str(e) if str(e) else type(e).__name__
    classes = set(_ERROR_CLASS.findall(text.splitlines()[0] if text.strip() else ""))
    names = _NAME.findall(text.splitlines()[0]) if text.strip() else []
    for cls, what in _MISSING.items():
        if cls in classes:
            name = f": {names[0]}" if names else ""
            return _Class("missing", False, f"{what}{name} (check source.catalog, omop_schema, sandbox_schema and the grants)")
    if classes & _FORBIDDEN:
        return _Class("forbidden", False, f"permission denied: {_engine_text(e)}")
    if classes & _TIMEOUT or re.search(r"\btimed out\b", text.splitlines()[0] if text.strip() else "", re.I):
        return _Class("timeout", False, f"query timed out on the warehouse: {_engine_text(e)}")
    if isinstance(e, OSError):
        return _Class("unreachable", True, f"the SQL warehouse is unreachable ({_network_reason(e)})")
    return _Class("query", False, _engine_text(e))


def _chain(e: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts, and the connector's ``original-exception`` context."""
    out: list[BaseException] = []
    todo: list[BaseException | None] = [e]
    while todo:
        link = todo.pop()
        if link is None or any(link is seen for seen in out) or len(out) > 20:
            continue
        out.append(link)
        todo += [link.__cause__, link.__context__]
        todo += [a for a in link.args if isinstance(a, BaseException)]  # RequestError keeps the cause in args
        original = getattr(link, "context", None)
        if isinstance(original, dict) and isinstance(original.get("original-exception"), BaseException):
            todo.append(original["original-exception"])
        reason = getattr(link, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
    return out


def _http_status(chain: list[BaseException]) -> int | None:
    from urllib3 import exceptions as u3

    for link in chain:
        context = getattr(link, "context", None)
        if isinstance(context, dict) and isinstance(context.get("http-code"), int):
            return int(context["http-code"])
        if isinstance(link, u3.MaxRetryError) and isinstance(link.reason, u3.ResponseError):
            m = re.search(r"too many (\d{3}) error responses", str(link.reason))
            if m:
                return int(m.group(1))
    return None


def _network_reason(e: BaseException) -> str:
    errno = getattr(e, "errno", None)
    for link in _chain(e):
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        if isinstance(link, OSError) and link.errno is not None:
            errno = link.errno
    name = type(e).__name__
    return f"{name}, errno {errno}" if errno else name


def _engine_text(e: BaseException) -> str:
    return _JAVA_PREFIX.sub("", safe_message(e)) or type(e).__name__


# ------------------------------------------------------------------------------------------ members


@cache
def _template(name: str) -> exp.Expression:
    """Our own templates (``sql_templates/*_databricks.sql``), read as plan.py reads its own."""
    text = (plan._template_dir() / f"{name}.sql").read_text(encoding="utf-8")
    parsed = sqlglot.parse_one(text, dialect=plan.CANONICAL_DIALECT)
    assert isinstance(parsed, exp.Expression)
    for node in parsed.walk():
        node.comments = None
    return parsed


def _fill(tpl: exp.Expression, tables: dict[str, exp.Expression], values: dict[str, exp.Expression]) -> exp.Expression:
    """plan._fill, keeping the ``PARTITION (...)`` clause that hangs off an INSERT's target table
    (plan._fill swaps the whole table node, clause included)."""
    out = plan._fill(tpl, tables=tables, values=values)  # type: ignore[arg-type]
    if isinstance(tpl, exp.Insert) and tpl.this.args.get("partition") is not None:
        out.this.set("partition", plan._fill(tpl.this.args["partition"], values=values))
    return out


def upload_table(names: plan.Names) -> exp.Table:
    """The staging table next to the members table (same shape) that an upload fills first."""
    return plan._table(names.catalog, names.sandbox_schema, names.members_table + UPLOAD_SUFFIX)


def members_ddl(names: plan.Names, table: exp.Table | None = None) -> exp.Expression:
    """The members table, partitioned by cohort so one cohort can be replaced on its own."""
    return plan._fill(_template("members_ddl_databricks"), tables={"members_table": table or names.members()})


def members_clear(cohort: str, names: plan.Names, table: exp.Table | None = None) -> exp.Expression:
    """Empty one cohort's partition (of the members table, or of ``table``)."""
    return _fill(
        _template("members_clear_databricks"),
        tables={"members_table": table or names.members()},
        values={"cohort": plan.cohort_literal(cohort)},
    )


def upload_clear(cohort: str, names: plan.Names) -> exp.Expression:
    return members_clear(cohort, names, upload_table(names))


def upload_insert(cohort: str, person_ids: list[int], batch: int | list[int], names: plan.Names) -> exp.Expression:
    """One chunk of ids (and per-id batch numbers) as a multi-row VALUES tree of integer literals:
    nothing user-typed reaches the SQL text."""
    if isinstance(batch, list):
        if len(batch) != len(person_ids):
            raise ValueError("one batch number per person id")
        rows = [
            exp.Tuple(expressions=[exp.Literal.number(int(i)), exp.Literal.number(int(b))])
            for i, b in zip(person_ids, batch, strict=True)
        ]
        names_of = ["person_id", "batch"]
        batch_value: exp.Expression = exp.column("batch", "v")
    else:
        rows = [exp.Tuple(expressions=[exp.Literal.number(int(i))]) for i in person_ids]
        names_of = ["person_id"]
        batch_value = exp.Literal.number(int(batch))
    values = exp.Values(
        expressions=rows,
        alias=exp.TableAlias(this=exp.to_identifier("v"), columns=[exp.to_identifier(n) for n in names_of]),
    )
    return _fill(
        _template("members_upload_insert_databricks"),
        tables={"upload_table": upload_table(names), "upload_rows": values},
        values={"cohort": plan.cohort_literal(cohort), "batch": batch_value},
    )


def members_replace(cohort: str, names: plan.Names) -> exp.Expression:
    return _fill(
        _template("members_replace_databricks"),
        tables={"members_table": names.members(), "upload_table": upload_table(names)},
        values={"cohort": plan.cohort_literal(cohort)},
    )


def upload_statements(
    cohort: str, person_ids: pa.Array, batch: int | pa.Array, names: plan.Names, rows_per_insert: int
) -> Iterator[exp.Expression]:
    """Every statement of one membership replacement, in order (also what the Spark tier runs).

    ``batch`` numbers the amendment that added the members: one number, or one per id.
    """
    ids = person_ids.cast(pa.int64())
    batches = batch.cast(pa.int32()) if isinstance(batch, pa.Array) else None
    if ids.null_count or (batches is not None and (batches.null_count or len(batches) != len(ids))):
        raise ValueError("person ids and batch numbers may not be null, and need one batch number per id")
    yield plan.create_schema(names.catalog, names.sandbox_schema)
    yield members_ddl(names)
    yield members_ddl(names, upload_table(names))
    yield upload_clear(cohort, names)
    for start in range(0, len(ids), rows_per_insert):
        chunk = ids.slice(start, rows_per_insert).to_pylist()
        numbers: int | list[int] = batches.slice(start, rows_per_insert).to_pylist() if batches is not None else int(batch)
        yield upload_insert(cohort, chunk, numbers, names)
    yield members_replace(cohort, names)
    yield upload_clear(cohort, names)


# ------------------------------------------------------------------------------------------- source


SQLConnect = Callable[..., Any]


class DatabricksSource:
    """A :class:`cohortsync.sources.base.Source` over a Databricks SQL warehouse."""

    dialect = "databricks"

    def __init__(
        self,
        server_hostname: str,
        http_path: str,
        names: plan.Names,
        credentials: Credentials | None,
        *,
        connect_timeout_s: float = 60,
        query_timeout_s: float = 3600,
        retries: int = 5,
        backoff_s: float = 5.0,
        max_backoff_s: float = 120.0,
        upload_rows: int = DEFAULT_UPLOAD_ROWS,
        connect_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``connect_options`` are passed to ``databricks.sql.connect`` as they are: the tests use it
        for ``_connection_uri`` and a ``credentials_provider``; it is never filled from a config file."""
        if credentials is None and not (connect_options and "credentials_provider" in connect_options):
            raise ConfigError("Databricks source needs credentials")
        self.server_hostname = server_hostname
        self.http_path = http_path
        self.names = names
        self._credentials = credentials
        self.connect_timeout_s = connect_timeout_s
        self.query_timeout_s = query_timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.upload_rows = upload_rows
        self._connect_options = dict(connect_options or {})
        # One connection per thread: the connector's connections are not thread-safe (PEP 249
        # threadsafety 1), and sync lands several tables at once, each on a thread of its own.
        self._connections: dict[int, Any] = {}
        self._lock = threading.RLock()  # re-entered when a failed connect drops the connection

    @classmethod
    def from_settings(
        cls, settings: Settings, connect_options: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> DatabricksSource:
        s = settings.source
        missing = [k for k in ("server_hostname", "http_path") if not getattr(s, k)]
        if missing:
            raise ConfigError(f"source.kind = 'databricks' needs {' and '.join('source.' + k for k in missing)}")
        assert s.server_hostname is not None and s.http_path is not None
        test_auth = bool(connect_options and "credentials_provider" in connect_options)
        credentials = None if test_auth else credentials_from_env(s.auth, env)
        return cls(
            s.server_hostname,
            s.http_path,
            plan.Names(s.catalog, s.omop_schema, s.sandbox_schema, s.members_table, s.vocabulary_schema),
            credentials,
            connect_timeout_s=s.connect_timeout_s,
            query_timeout_s=s.query_timeout_s,
            retries=s.retries,
            connect_options=connect_options,
        )

    def __repr__(self) -> str:
        return (
            f"DatabricksSource(server_hostname={self.server_hostname!r}, http_path={self.http_path!r}, "
            f"catalog={self.names.catalog!r}, credentials={self._credentials!r})"
        )

    __str__ = __repr__

    def render(self, q: exp.Expression) -> str:
        return plan.render(q, self.dialect)

    # -- connection

    def _connect(self) -> Any:
        from databricks import sql as dbsql

        options: dict[str, Any] = {
            "enable_telemetry": False,  # nothing about this hospital's queries leaves for Databricks' telemetry
            "_socket_timeout": self.connect_timeout_s,
            # The connector would retry 429/503 for up to 15 minutes, sleeping at least its delay_max
            # (5 s or more) each time. A 4 s budget stops that at once, so source.retries with our
            # exponential backoff is the one bound on waiting (and a failure says what happened).
            "_retry_stop_after_attempts_count": 1,
            "_retry_delay_max": 5.0,
            "_retry_stop_after_attempts_duration": 4.0,
            "user_agent_entry": "cohortsync",
            # Cloud fetch stays on; each download thread holds one result file (tens of MB) in memory,
            # so fewer threads than the connector's 10 keep the peak modest at little cost in speed.
            "max_download_threads": 4,
        }
        if self._credentials is not None:
            options["credentials_provider"] = self._credentials.provider(self.server_hostname, self.connect_timeout_s)
        options.update(self._connect_options)
        connection = dbsql.connect(server_hostname=self.server_hostname, http_path=self.http_path, **options)
        try:
            with connection.cursor() as cursor:
                # Watermarks are naive UTC; TIMESTAMP literals are read in the session time zone.
                cursor.execute("SET TIME ZONE 'UTC'")
        except BaseException:
            connection.close()
            raise
        return connection

    def connection(self) -> Any:
        """This thread's open connection (opened, with retries, on its first use)."""
        me = threading.get_ident()
        with self._lock:
            found = self._connections.get(me)
        if found is None:
            found = self._retrying("connect", self._connect)
            with self._lock:
                self._connections[me] = found
        return found

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn``; on a transient failure wait (exponential, capped) and run it again, at most
        ``retries`` more times. Only for idempotent work: reads, DDL, a whole membership upload."""
        attempt = 0
        while True:
            try:
                return fn()
            except (SourceError, KeyboardInterrupt):
                raise
            except Exception as e:
                error = classify(e)
                if not error.transient or attempt >= self.retries:
                    if error.transient and self.retries:
                        raise TransientSourceError(f"{error} (gave up after {attempt + 1} attempts)") from None
                    raise error from None
                delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
                attempt += 1
                self._drop_connection()  # its session may be gone with the failure: reconnect next time
                log.warning("%s: %s; retry %d/%d in %.1f s", what, error, attempt, self.retries, delay)
                time.sleep(delay)

    @contextmanager
    def _cursor(self, arraysize: int | None = None) -> Iterator[Any]:
        connection = self.connection()
        cursor = connection.cursor(arraysize=arraysize) if arraysize else connection.cursor()
        try:
            yield cursor
        finally:
            try:
                cursor.close()
            except Exception as e:  # closing must not hide the real error
                log.debug("closing a cursor failed: %s", safe_message(e))

    def _run(self, cursor: Any, sql: str) -> None:
        """Execute and wait, cancelling the statement server-side once ``query_timeout_s`` has passed.

        The statement is started asynchronously and polled from this thread, which also cancels it.
        A watchdog thread calling ``cursor.cancel()`` during a blocking ``execute`` waits for the
        connector's request lock, which the polling thread re-takes at once after every status poll
        (a long poll of up to 5 s on Spark): in CI a 3 s timeout fired after 95 s that way. Here the
        overshoot is at most one status poll.
        """
        deadline = time.monotonic() + self.query_timeout_s
        cursor.execute_async(sql)
        pause = 0.0
        try:
            while cursor.is_query_pending():
                left = deadline - time.monotonic()
                if left <= 0:
                    self._cancel(cursor)
                    raise classify(TimeoutError(), timed_out_after=self.query_timeout_s)
                time.sleep(min(pause, left))
                pause = min(max(2 * pause, 0.02), 0.5)
            cursor.get_async_execution_result()
        except (KeyboardInterrupt, SystemExit):
            self._cancel(cursor)  # do not leave the warehouse working for nobody
            raise

    @staticmethod
    def _cancel(cursor: Any) -> None:
        try:
            cursor.cancel()
        except Exception as e:
            log.debug("cancelling a statement failed: %s", safe_message(e))

    # -- Source protocol

    @contextmanager
    def stream(self, query: exp.Expression, batch_rows: int) -> Iterator[pa.RecordBatchReader]:
        sql = self.render(query)
        logs.event(log, logging.DEBUG, "source.query", "Databricks query", sql=sql)  # names and bounds; no row values

        def start() -> tuple[Any, pa.Table]:
            connection = self.connection()
            cursor = connection.cursor(arraysize=batch_rows)
            try:
                self._run(cursor, sql)
                return cursor, _naive_utc(cursor.fetchmany_arrow(batch_rows))
            except BaseException:
                cursor.close()
                raise

        cursor, first = self._retrying("query", start)  # nothing was handed out yet: safe to retry
        schema = first.schema

        def batches() -> Iterator[pa.RecordBatch]:
            table = first
            while table.num_rows:
                if not table.schema.equals(schema):
                    table = table.cast(schema)
                yield from table.to_batches(max_chunksize=batch_rows)
                try:
                    table = _naive_utc(cursor.fetchmany_arrow(batch_rows))
                except SourceError:
                    raise
                except Exception as e:
                    raise classify(e) from None  # not retried: rows were already handed out

        try:
            yield pa.RecordBatchReader.from_batches(schema, batches())
        finally:
            try:
                cursor.close()
            except Exception as e:
                log.debug("closing a cursor failed: %s", safe_message(e))

    def columns(self, table: str) -> list[str]:
        with self.stream(plan.select_nothing(table, self.names), 1024) as reader:
            return list(reader.schema.names)

    def rows(self, query: exp.Expression) -> list[tuple[object, ...]]:
        sql = self.render(query)

        def run() -> list[tuple[object, ...]]:
            with self._cursor() as cursor:
                self._run(cursor, sql)
                return [tuple(_naive(v) for v in row) for row in cursor.fetchall()]

        return self._retrying("query", run)

    def execute(self, statement: exp.Expression) -> None:
        sql = self.render(statement)

        def run() -> None:
            with self._cursor() as cursor:
                self._run(cursor, sql)

        self._retrying("statement", run)

    def replace_members(self, cohort: str, person_ids: pa.Array, batch: int | pa.Array = 0) -> None:
        """Make the sandbox hold exactly ``person_ids`` for ``cohort``.

        The ids go into the cohort's partition of a staging table in multi-row INSERTs of
        ``upload_rows`` ids, then one ``INSERT OVERWRITE ... PARTITION (cohort = ...)`` swaps the
        cohort's members for them: on Delta that single statement is one atomic commit, so a
        reader sees the old or the new membership, never a partial one. Every step is idempotent
        (the staging partition is cleared first), so a transient failure re-runs the whole upload.
        """
        statements = [self.render(s) for s in upload_statements(cohort, person_ids, batch, self.names, self.upload_rows)]

        def run() -> None:
            with self._cursor() as cursor:
                for sql in statements:
                    self._run(cursor, sql)

        self._retrying(f"upload of cohort {cohort}", run)

    def delete_members(self, cohort: str) -> None:
        """Empty the cohort's partition (INSERT OVERWRITE with nothing: no DELETE needed)."""
        names = self.names
        statements = [
            self.render(s)
            for s in (plan.create_schema(names.catalog, names.sandbox_schema), members_ddl(names), members_clear(cohort, names))
        ]

        def run() -> None:
            with self._cursor() as cursor:
                for sql in statements:
                    self._run(cursor, sql)

        self._retrying(f"removal of cohort {cohort}", run)

    def release_threads(self) -> None:
        me = threading.get_ident()
        with self._lock:
            others = [c for t, c in self._connections.items() if t != me]
            self._connections = {t: c for t, c in self._connections.items() if t == me}
        for c in others:
            _close_quietly(c)

    def close(self) -> None:
        with self._lock:
            connections, self._connections = list(self._connections.values()), {}
        for c in connections:
            _close_quietly(c)

    def _drop_connection(self) -> None:
        with self._lock:
            connection = self._connections.pop(threading.get_ident(), None)
        if connection is not None:
            _close_quietly(connection)


def _close_quietly(connection: Any) -> None:
    try:
        connection.close()
    except Exception as e:
        log.debug("closing the connection failed: %s", safe_message(e))


def _naive(value: object) -> object:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def _naive_utc(table: pa.Table) -> pa.Table:
    """Zoned timestamps (Databricks' Arrow results carry the session zone) become naive UTC."""
    if not isinstance(table, pa.Table):  # a column-based answer from an old server: not supported
        raise TypeError(f"expected an Arrow result from the connector, got {type(table).__name__}")
    fields = list(table.schema)
    if not any(pa.types.is_timestamp(f.type) and f.type.tz for f in fields):
        return table
    target = pa.schema(
        [f.with_type(pa.timestamp(f.type.unit)) if pa.types.is_timestamp(f.type) and f.type.tz else f for f in fields],
        metadata=table.schema.metadata,
    )
    return table.cast(target)
