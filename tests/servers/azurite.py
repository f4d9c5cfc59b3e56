"""Azurite, the Azure Storage emulator (npm ``azurite``), for landing tests on real blob storage.

``tools/install_azurite.sh`` (run by ``.ci/run``) installs it into ``tools/.azurite``. One
``azurite-blob`` runs per test session on 127.0.0.1 with a random free port and in-memory storage
(telemetry off: nothing leaves the machine), and is stopped at the end. Missing Azurite fails the
tests that need it (they never skip).

Public names (to combine these tests with another state backend):
 - fixture ``azurite`` (session): an :class:`Azurite` (``endpoint``, ``account``, ``key``, ``fs``).
 - fixture ``azure_landing``: a fresh container per test; sets ``COHORTSYNC_LANDING__PATH`` (an
   ``abfss://`` URL), ``COHORTSYNC_LANDING__AZURE_ENDPOINT`` and ``AZURE_STORAGE_ACCOUNT_KEY`` in
   the environment for the test (CLI runs and subprocesses inherit them) and returns an
   :class:`AzureLanding`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from urllib.parse import urlencode
from xml.etree import ElementTree

import pyarrow.fs as pafs
import pytest

REPO = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO / "tools" / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's fixed development account and its well-known key (public, documented by Microsoft).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Azurite:
    endpoint: str  # http://127.0.0.1:PORT
    account: str
    key: str
    fs: pafs.AzureFileSystem

    def env(self) -> dict[str, str]:
        """What cohortsync needs besides the landing URL: the emulator endpoint and the account key."""
        return {"COHORTSYNC_LANDING__AZURE_ENDPOINT": self.endpoint, "AZURE_STORAGE_ACCOUNT_KEY": self.key}

    def new_container(self) -> str:
        name = f"t{uuid.uuid4().hex[:20]}"
        self.fs.create_dir(name)
        return name

    def url(self, container: str, prefix: str = "landing") -> str:
        return f"abfss://{container}@{self.account}.dfs.core.windows.net/{prefix}"

    def _infos(self, root: str) -> list[pafs.FileInfo]:
        """A recursive listing through pyarrow; when pyarrow fails with "Connection was closed", the
        same listing through a plain HTTP client.

        Seen in about one crash trial of twenty: once a delete has left pyarrow's directory marker
        (a zero-byte blob ``…/table/``) in a folder, pyarrow's listing of that folder fails with
        "Connection was closed by the server while trying to read a response", in this process and
        in a fresh one, although Azurite's answer to the very same List Blobs request, fetched with
        http.client, is a complete 200. The tests check the landing against the state, so they list
        with a client that does not have the problem; cohortsync itself would see a transient
        error there (docs/sync.md, "Object storage")."""
        try:
            return list(self.fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True)))
        except OSError as e:
            if "Connection was closed" not in str(e):
                raise
        return [pafs.FileInfo(name, pafs.FileType.File) for name in self.list_blobs(root)]

    def list_blobs(self, root: str) -> list[str]:
        """``container/prefix/…`` of every blob under ``root`` but directory markers (List Blobs, flat)."""
        container, _, prefix = root.partition("/")
        names: list[str] = []
        marker = ""
        while True:
            query = {"comp": "list", "restype": "container", "prefix": prefix + "/" if prefix else ""}
            if marker:
                query["marker"] = marker
            date, version = formatdate(usegmt=True), "2021-08-06"
            canonical = f"/{self.account}/{self.account}/{container}" + "".join(
                f"\n{k}:{v}" for k, v in sorted(query.items()))
            to_sign = "GET\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n" + canonical
            signature = base64.b64encode(
                hmac.new(base64.b64decode(self.key), to_sign.encode(), hashlib.sha256).digest()).decode()
            con = http.client.HTTPConnection(self.endpoint.split("://", 1)[1], timeout=60)
            try:
                con.request("GET", f"/{self.account}/{container}?{urlencode(query)}", headers={
                    "x-ms-date": date, "x-ms-version": version,
                    "Authorization": f"SharedKey {self.account}:{signature}"})
                response = con.getresponse()
                body = response.read()
            finally:
                con.close()
            assert response.status == 200, (response.status, body[:300])
            doc = ElementTree.fromstring(body)
            for blob in doc.iter("Blob"):
                name = blob.findtext("Name") or ""
                if not name.endswith("/"):
                    names.append(f"{container}/{name}")
            marker = doc.findtext("NextMarker") or ""
            if not marker:
                return names

    def copy_tree(self, src: str, dst: str) -> None:
        """Copy every blob under ``container/prefix`` src to dst (server-side), to clone a landing."""
        for info in self._infos(src):
            if info.type == pafs.FileType.File:
                self.fs.copy_file(info.path, dst + info.path[len(src) :])

    def files(self, root: str) -> dict[str, bytes]:
        """Every blob under ``container/prefix`` with its content, by path relative to it."""
        out = {}
        for info in self._infos(root):
            if info.type == pafs.FileType.File:
                with self.fs.open_input_stream(info.path) as f:
                    out[info.path[len(root) + 1 :]] = f.read()
        return out


@dataclass
class AzureLanding:
    azurite: Azurite
    container: str
    prefix: str
    url: str

    @property
    def root(self) -> str:
        """The landing root as a path of ``azurite.fs``."""
        return f"{self.container}/{self.prefix}"

    def files(self) -> dict[str, bytes]:
        return self.azurite.files(self.root)


def _filesystem(endpoint: str) -> pafs.AzureFileSystem:
    authority = endpoint.split("://", 1)[1]
    return pafs.AzureFileSystem(
        ACCOUNT, account_key=KEY, blob_storage_authority=authority, dfs_storage_authority=authority,
        blob_storage_scheme="http", dfs_storage_scheme="http",
    )


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    if not AZURITE_BIN.exists():
        pytest.fail(f"Azurite is not installed ({AZURITE_BIN} missing): run tools/install_azurite.sh (.ci/run does)")
    if shutil.which("node") is None:
        pytest.fail("Azurite needs node (Debian: apt-get install nodejs npm); .ci/run installs it")
    work = Path(tempfile.mkdtemp(prefix="azurite-"))
    for attempt in itertools.count():
        port = free_port()
        proc = subprocess.Popen(
            [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
             "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry",
             # Node's 5 s default closes idle connections that pyarrow's client may be reusing at that
             # very moment ("Connection was closed by the server"); Azure keeps them for minutes.
             "--blobKeepAliveTimeout", "300",
             # AZURITE_DEBUG_LOG=FILE keeps Azurite's debug log of every request, to study a failure.
             *(["--debug", os.environ["AZURITE_DEBUG_LOG"]] if os.environ.get("AZURITE_DEBUG_LOG") else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        if proc.poll() is None and time.monotonic() < deadline:
            break
        err = proc.stderr.read().decode(errors="replace")[-300:] if proc.poll() is not None and proc.stderr else ""
        proc.kill()
        proc.wait()
        if attempt >= 2:
            pytest.fail(f"Azurite did not start on 127.0.0.1:{port}: {err}")
    endpoint = f"http://127.0.0.1:{port}"
    try:
        yield Azurite(endpoint, ACCOUNT, KEY, _filesystem(endpoint))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def azure_landing(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> AzureLanding:
    """A landing in a container of its own; the environment points cohortsync at it."""
    container = azurite.new_container()
    landing = AzureLanding(azurite, container, "landing", azurite.url(container))
    for k, v in {**azurite.env(), "COHORTSYNC_LANDING__PATH": landing.url}.items():
        monkeypatch.setenv(k, v)
    for k in ("AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(k, raising=False)
    return landing


