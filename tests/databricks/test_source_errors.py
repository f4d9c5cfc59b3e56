"""Credentials, redaction and error classification of the Databricks source, without Spark.

Errors come from the real connector talking HTTP to tiny servers on 127.0.0.1 that answer what a
warehouse answers in that situation (401, 403, 503 while starting, 429, nothing at all), so the
exception objects classified are the connector's own, raised its own way.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from databricks.sql import exc

from cohortsync import plan
from cohortsync.config import settings_from_dict
from cohortsync.errors import ConfigError, SourceError, TransientSourceError
from cohortsync.sources.databricks import (
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ENV_TOKEN,
    Credentials,
    DatabricksSource,
    OAuthM2M,
    classify,
    credentials_from_env,
)

TOKEN = "dapi-secret-0123456789abcdef"
CLIENT_SECRET = "sp-secret-fedcba9876543210"
NAMES = plan.Names("main", "omop", "sandbox", "cohortsync_members")


class Server:
    """An HTTP server on loopback that answers every POST with one status, recording what it got."""

    def __init__(self, status: int, body: bytes = b"", paths: dict[str, tuple[int, bytes]] | None = None) -> None:
        self.status, self.body, self.paths = status, body, paths or {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                outer.requests.append((self.path, dict(self.headers)))
                status, body = outer.paths.get(self.path, (outer.status, outer.body))
                self.send_response(status)
                if status in (429, 503):
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/cliservice"


def source_for(uri: str, credentials: Credentials | None = None, retries: int = 0, **options: Any) -> DatabricksSource:
    src = DatabricksSource(
        "adb-123.azuredatabricks.net",
        "/sql/1.0/warehouses/abc",
        NAMES,
        credentials or Credentials("pat", TOKEN),
        retries=retries,
        backoff_s=0.05,
        connect_timeout_s=10,
        connect_options={"_connection_uri": uri, **options},
    )
    return src


def failure(src: DatabricksSource) -> SourceError:
    with pytest.raises(SourceError) as e:
        src.rows(plan.max_load_dt("person", src.names))
    src.close()
    message = str(e.value)
    assert TOKEN not in message and CLIENT_SECRET not in message and "\n" not in message
    return e.value


def test_http_401_is_an_authentication_failure_sent_with_the_token_and_not_retried() -> None:
    with Server(401) as server:
        error = failure(source_for(server.uri, retries=3))
    assert not isinstance(error, TransientSourceError)
    assert str(error).startswith("Databricks: authentication failed (HTTP 401)")
    assert len(server.requests) == 1  # fail fast
    assert server.requests[0][1]["Authorization"] == f"Bearer {TOKEN}"


def test_http_403_is_access_denied() -> None:
    with Server(403) as server:
        error = failure(source_for(server.uri, retries=3))
    assert not isinstance(error, TransientSourceError) and "access denied (HTTP 403)" in str(error)
    assert error.exit_code == 2  # the configuration (credentials, grants), docs/operations.md
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [503, 429])
def test_a_starting_or_busy_warehouse_is_transient_and_retried_a_bounded_number_of_times(status: int) -> None:
    with Server(status) as server:
        started = time.monotonic()
        error = failure(source_for(server.uri, retries=2))
    assert isinstance(error, TransientSourceError)
    assert f"starting or overloaded (HTTP {status})" in str(error) or "retry budget" in str(error)
    assert "gave up after 3 attempts" in str(error)
    assert 3 <= len(server.requests) <= 3 * 2  # ours (1 + retries) x the connector's own (1 + 1 retry)
    assert time.monotonic() - started < 60


def test_an_unreachable_warehouse_is_transient() -> None:
    with Server(200) as server:
        uri = server.uri
    error = failure(source_for(uri, retries=1))  # the port is closed now
    assert isinstance(error, TransientSourceError)
    assert "unreachable (connection refused)" in str(error) and "gave up after 2 attempts" in str(error)


def test_oauth_m2m_fetches_one_token_and_sends_it_as_bearer() -> None:
    token_doc = json.dumps({"access_token": "sp-token-1", "token_type": "Bearer", "expires_in": 3600}).encode()
    with Server(401, paths={"/oidc/v1/token": (200, token_doc)}) as server:
        creds = Credentials("oauth-m2m", CLIENT_SECRET, client_id="sp-client")
        src = source_for(server.uri, creds, retries=0)
        token_url = f"http://127.0.0.1:{server.port}/oidc/v1/token"
        src._connect_options["credentials_provider"] = creds.provider("unused", 5, token_url=token_url)
        failure(src)
        provider = OAuthM2M(token_url, "sp-client", CLIENT_SECRET)
        assert provider.token() == provider.token() == "sp-token-1"
    token_requests = [h for p, h in server.requests if p == "/oidc/v1/token"]
    warehouse_requests = [h for p, h in server.requests if p == "/cliservice"]
    assert len(token_requests) == 2  # one per provider: the token is cached
    assert token_requests[0]["Authorization"].startswith("Basic ")
    assert warehouse_requests[0]["Authorization"] == "Bearer sp-token-1"


def test_a_refused_service_principal_is_an_authentication_failure() -> None:
    with Server(200, paths={"/oidc/v1/token": (401, b'{"error":"invalid_client"}')}) as server:
        creds = Credentials("oauth-m2m", CLIENT_SECRET, client_id="sp-client")
        src = source_for(server.uri, creds, retries=2)
        src._connect_options["credentials_provider"] = creds.provider(
            "unused", 5, token_url=f"http://127.0.0.1:{server.port}/oidc/v1/token"
        )
        error = failure(src)
    assert not isinstance(error, TransientSourceError)
    assert "authentication failed (HTTP 401): the service principal's id or secret was refused" in str(error)
    assert not [p for p, _ in server.requests if p == "/cliservice"]


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("[SCHEMA_NOT_FOUND] The schema `main`.`omop` cannot be found. SQLSTATE: 42704", "schema not found: `main`.`omop`"),
        ("[TABLE_OR_VIEW_NOT_FOUND] The table or view `main`.`omop`.`person` cannot be found.", "table or view not found"),
        ("[INSUFFICIENT_PERMISSIONS] Insufficient privileges: User does not have SELECT on Table 'x'.", "permission denied"),
        ("Query has timed out due to STATEMENT_TIMEOUT", "query timed out on the warehouse"),
        ("[CAST_INVALID_INPUT] The value 'Jane Doe' of the type \"STRING\" cannot be cast to \"INT\"", "CAST_INVALID_INPUT"),
    ],
)
def test_server_errors_fail_fast_with_a_clear_redacted_line(message: str, kind: str) -> None:
    error = classify(exc.ServerOperationError(message, {"operation-id": "x", "diagnostic-info": None}))
    assert kind in str(error) and not isinstance(error, TransientSourceError)
    assert error.exit_code == (1 if kind in ("query timed out on the warehouse", "CAST_INVALID_INPUT") else 2)
    assert "Jane" not in str(error) and "'x'" not in str(error)


def test_credentials_come_from_the_environment_only_and_are_never_printed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=ENV_TOKEN):
        credentials_from_env("pat", {})
    with pytest.raises(ConfigError, match=f"{ENV_CLIENT_ID} and {ENV_CLIENT_SECRET}"):
        credentials_from_env("oauth-m2m", {})
    env = {ENV_TOKEN: TOKEN, ENV_CLIENT_ID: "sp-client", ENV_CLIENT_SECRET: CLIENT_SECRET}
    for auth in ("pat", "oauth-m2m"):
        settings = settings_from_dict(
            {"source": {"kind": "databricks", "server_hostname": "h.example", "http_path": "/p", "auth": auth}},
            base_dir=tmp_path,
        )
        src = DatabricksSource.from_settings(settings, env=env)
        creds = credentials_from_env(auth, env)
        shown = " ".join([repr(src), str(src), repr(settings), str(settings), repr(settings.source), repr(creds), str(creds)])
        shown += repr(creds.provider("h.example", 5))
        assert TOKEN not in shown and CLIENT_SECRET not in shown
        assert "<redacted>" in repr(src)
    with pytest.raises(ConfigError, match="server_hostname"):
        DatabricksSource.from_settings(settings_from_dict({"source": {"kind": "databricks"}}, base_dir=tmp_path), env=env)


@pytest.fixture(autouse=True)
def _no_databricks_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (ENV_TOKEN, ENV_CLIENT_ID, ENV_CLIENT_SECRET):
        monkeypatch.delenv(name, raising=False)
    yield
