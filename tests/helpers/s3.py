"""A throw-away S3-compatible server for tests: moto's server mode on a free loopback port.

``moto_server`` comes with the test extra (``moto[server]``) and runs from the venv's bin folder.
Its state lives in memory only: :meth:`MotoServer.stop` loses every bucket and object, so an
"S3 restart" in a test is ``stop()``, ``start()`` (same port) and ``create_bucket()`` again;
what was stored before the stop is gone (moto cannot keep state across a restart).

Usage::

    with MotoServer() as server:          # or server = MotoServer(); server.start(); ...; server.stop()
        server.create_bucket("ainode")
        settings = {"type": "s3", "bucket": "ainode", "endpoint_url": server.endpoint_url, **server.credentials_env}

Credentials: moto accepts any key; :attr:`MotoServer.access_key_env` and :attr:`secret_key_env` name
environment variables this helper sets (in ``os.environ``) for the node and its subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from .externals import require_integration
from .ports import free_port, wait_for_port

__all__ = ["MotoServer"]

#: Names of the environment variables holding the test credentials (``storage.access_key_env`` / ``secret_key_env``).
ACCESS_KEY_ENV = "TEST_S3_ACCESS_KEY"
SECRET_KEY_ENV = "TEST_S3_SECRET_KEY"
REGION = "us-east-1"


class MotoServer:
    """moto's S3 server on 127.0.0.1 and a free port.

    Attributes
    ----------
    port : int
        The TCP port (kept across :meth:`stop` and :meth:`start`).
    endpoint_url : str
        ``http://127.0.0.1:<port>``, for ``storage.endpoint_url``.
    access_key_env, secret_key_env : str
        Environment variables holding the credentials (set by the constructor).
    """

    access_key_env = ACCESS_KEY_ENV
    secret_key_env = SECRET_KEY_ENV
    region = REGION

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        os.environ.setdefault(ACCESS_KEY_ENV, "testing")
        os.environ.setdefault(SECRET_KEY_ENV, "testing")
        self._log = Path(tempfile.mkstemp(prefix="ainode-moto-", suffix=".log")[1])
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def storage_settings(self) -> dict[str, Any]:
        """The ``storage:`` block of node.yaml for this server, without the bucket."""
        return {
            "type": "s3",
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_env": self.access_key_env,
            "secret_key_env": self.secret_key_env,
        }

    def start(self, timeout: float = 20.0) -> None:
        """Start the server (empty: no bucket) and wait until it answers."""
        require_integration("moto_server")
        if self._process is not None:
            return
        program = Path(sys.executable).with_name("moto_server")
        if not program.exists():
            raise FileNotFoundError(
                f"{program} not found: install the test extra (pip install -e '.[test]'), which brings moto[server]"
            )
        with open(self._log, "ab") as log:
            self._process = subprocess.Popen(
                [str(program), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                raise RuntimeError(f"moto_server exited at start:\n{self.log_tail()}")
            if wait_for_port(self.port, timeout=0.5):
                return
        self.stop()
        raise RuntimeError(f"moto_server did not open port {self.port} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server; its buckets and objects are lost (moto keeps them in memory only)."""
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def restart(self) -> None:
        """Stop and start again on the same port: an EMPTY server (moto cannot keep state across a restart)."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self) -> Any:
        """A boto3 S3 client of this server (the test's own view of the bucket)."""
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=os.environ[ACCESS_KEY_ENV],
            aws_secret_access_key=os.environ[SECRET_KEY_ENV],
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` under ``prefix``, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        found: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            found.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(found)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
        self._log.unlink(missing_ok=True)
