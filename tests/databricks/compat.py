"""Test-only patches that let the real Databricks connector talk to the stock Spark Thrift Server.

The Spark Thrift Server shipped in the ``pyspark`` wheel speaks Hive's TCLIService; the Databricks
SQL warehouse speaks a superset of it. The connector relies on four Databricks-only behaviours,
each patched here, small and in one place, so that everything else (connection, execution, polling,
fetching, error handling, our source) runs unmodified. Nothing here is imported by cohortsync.

1. Protocol version: Hive answers HIVE_CLI_SERVICE_PROTOCOL_V10; the connector insists on
   SPARK_CLI_SERVICE_PROTOCOL_V2 or later.
2. ``resultFormat``: Databricks says in every result-set metadata response whether rows come as
   Arrow, columns or cloud-fetch links; Hive leaves the field unset (always column-based rows).
   FetchResults also carries that metadata on Databricks, never on Hive.
3. ``hasMoreRows``: Hive always answers False, which would silently truncate every result after
   its first fetch. Here it is True while a fetch returned rows, so reading stops at the first
   empty fetch, as Hive's own JDBC driver does.
4. Column-based rows become an Arrow table (typed by the result's schema) so that
   ``fetchmany_arrow`` returns ``pa.Table`` as it does against a warehouse (Arrow results).

Authentication: Hive's HTTP servlet accepts Basic, not Bearer; :class:`BasicCredentials` is handed
to the source through its ``connect_options`` (test-only) argument.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from databricks.sql import utils as dbutils
from databricks.sql.backend import thrift_backend
from databricks.sql.thrift_api.TCLIService import ttypes

_installed = False


def install() -> None:
    """Apply the patches (idempotent)."""
    global _installed
    if _installed:
        return
    client = thrift_backend.ThriftDatabricksClient
    client._check_protocol_version = _check_protocol_version  # type: ignore[method-assign]
    original_request = client.make_request

    def make_request(self: Any, method: Any, request: Any, retryable: bool = True) -> Any:
        response = original_request(self, method, request, retryable)
        name = getattr(method, "__name__", "")
        if name == "GetResultSetMetadata" and response.resultFormat is None:
            response.resultFormat = ttypes.TSparkRowSetType.COLUMN_BASED_SET  # (2)
        elif name == "FetchResults":
            if response.resultSetMetadata is None:  # (2): goes through this wrapper, so it is typed too
                response.resultSetMetadata = self._get_metadata_resp(request.operationHandle)
            response.hasMoreRows = _row_count(response.results) > 0  # (3)
        return response

    client.make_request = make_request  # type: ignore[method-assign]
    original_build = dbutils.ThriftResultSetQueueFactory.build_queue

    def build_queue(row_set_type: Any, t_row_set: Any, arrow_schema_bytes: bytes, **kwargs: Any) -> Any:
        if row_set_type == ttypes.TSparkRowSetType.COLUMN_BASED_SET and arrow_schema_bytes:  # (4)
            table = _columns_to_arrow(t_row_set.columns, pa.ipc.read_schema(pa.py_buffer(arrow_schema_bytes)))
            return dbutils.ArrowQueue(table, table.num_rows)
        return original_build(row_set_type=row_set_type, t_row_set=t_row_set, arrow_schema_bytes=arrow_schema_bytes, **kwargs)

    dbutils.ThriftResultSetQueueFactory.build_queue = staticmethod(build_queue)  # type: ignore[method-assign]
    _installed = True


def _check_protocol_version(self: Any, response: Any) -> None:  # (1)
    if response.serverProtocolVersion < ttypes.TProtocolVersion.HIVE_CLI_SERVICE_PROTOCOL_V8:
        raise AssertionError(f"unexpectedly old Thrift server protocol {response.serverProtocolVersion}")


_VALUE_FIELDS = ("boolVal", "byteVal", "i16Val", "i32Val", "i64Val", "doubleVal", "stringVal", "binaryVal")


def _row_count(row_set: Any) -> int:
    if row_set is None or not row_set.columns:
        return 0
    column = row_set.columns[0]
    for field in _VALUE_FIELDS:
        wrapper = getattr(column, field)
        if wrapper is not None:
            return len(wrapper.values)
    return 0


def _columns_to_arrow(columns: list[Any], schema: pa.Schema) -> pa.Table:
    """Hive sends timestamps and dates as text (in the session time zone, UTC here): cast by the schema."""
    if not columns:  # a statement without a result (DDL, INSERT) still has a schema
        return schema.empty_table()
    arrays = []
    for column, field in zip(columns, schema, strict=True):
        array = dbutils._convert_column_to_arrow_array(column)
        arrays.append(array if array.type == field.type else array.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


class BasicCredentials:
    """A connector credentials provider sending HTTP Basic (any user; the server runs with auth NONE)."""

    def __init__(self, user: str = "cohortsync") -> None:
        self._header = {"Authorization": "Basic " + base64.b64encode(f"{user}:unused".encode()).decode()}

    def auth_type(self) -> str:
        return "basic"

    def __call__(self, *args: object, **kwargs: object) -> Callable[[], dict[str, str]]:
        return lambda: dict(self._header)
