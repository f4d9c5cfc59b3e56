"""The Spark Thrift Server from the ``pyspark`` wheel, as a stand-in Databricks SQL warehouse.

HTTP transport on path ``cliservice`` with authentication NONE, as the connector tier needs. In HTTP
mode the server listens on every interface whatever its bind setting, so it may only be started in a
private network namespace that has nothing but loopback: :func:`assert_private_network` refuses
anything else. It is stopped by its own process id (its process group, which it leads).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from compat import BasicCredentials, install


def assert_private_network() -> None:
    """Only loopback may exist: the server would otherwise be reachable from outside this machine."""
    with open("/proc/self/net/dev", encoding="ascii") as f:  # this process's namespace (sysfs may show the host's)
        interfaces = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
    if interfaces != ["lo"]:
        raise RuntimeError(f"refusing to start the Thrift server: network interfaces {interfaces} besides loopback")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child before exec: SIGKILL it if the test process dies
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class ThriftServer:
    def __init__(self, work: Path, driver_memory: str = "1g") -> None:
        import pyspark

        self.work = work
        self.port = free_port()
        self.spark_home = Path(pyspark.__file__).resolve().parent
        self.driver_memory = driver_memory
        self.log = work / "thrift-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/cliservice"

    def connect_options(self) -> dict[str, Any]:
        """Test-only connector options for DatabricksSource(connect_options=...)."""
        install()
        return {"_connection_uri": self.uri, "credentials_provider": BasicCredentials()}

    def start(self, timeout_s: float = 240) -> None:
        assert_private_network()
        w = self.work
        command = [
            str(self.spark_home / "bin" / "spark-submit"),
            "--class", "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2",
            "--master", "local[2]",
            "--driver-memory", self.driver_memory,
            "--conf", "spark.ui.enabled=false",
            "--conf", "spark.sql.session.timeZone=UTC",
            "--conf", "spark.sql.shuffle.partitions=4",
            # Stream results partition by partition instead of collecting them in the driver first
            # (a warehouse streams too; without it a large result exhausts the 1 GB heap).
            "--conf", "spark.sql.thriftServer.incrementalCollect=true",
            "--conf", f"spark.sql.warehouse.dir={w / 'warehouse'}",
            "--conf", f"spark.hadoop.javax.jdo.option.ConnectionURL=jdbc:derby:;databaseName={w / 'metastore_db'};create=true",
            "--driver-java-options", f"-Dderby.system.home={w}",
            "--hiveconf", "hive.server2.transport.mode=http",
            "--hiveconf", f"hive.server2.thrift.http.port={self.port}",
            "--hiveconf", "hive.server2.thrift.http.path=cliservice",
            "--hiveconf", "hive.server2.authentication=NONE",
            "--hiveconf", "hive.server2.thrift.bind.host=127.0.0.1",
            "spark-internal",
        ]  # fmt: skip
        env = {**os.environ, "SPARK_HOME": str(self.spark_home), "SPARK_LOCAL_IP": "127.0.0.1"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=w, start_new_session=True,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Thrift server exited with {self.process.returncode}:\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Thrift server did not listen on {self.port} within {timeout_s:g} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        p, self.process = self.process, None
        if p is None or p.poll() is not None:
            return
        os.killpg(p.pid, signal.SIGTERM)  # its own group: the server and nothing else
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
