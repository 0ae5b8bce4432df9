"""Helpers for DIMSE tests: free ports, DCMTK subprocesses, a directory sink.

DCMTK tools run as subprocesses with ``TCP_NODELAY=1`` (otherwise each C-STORE
stalls ~40 ms on Nagle/delayed ACK).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom.data import get_testdata_file

from core import status
from dimse import StoreRequest

LOCALHOST = "127.0.0.1"
NODE_AE = "AINODE"
PACS_AE = "PACS"


def free_port() -> int:
    """A TCP port free on loopback right now (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def dcmtk_env() -> dict[str, str]:
    return dict(os.environ, TCP_NODELAY="1")


def run_dcmtk(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a DCMTK command line tool; its log goes to stderr with ``-v``."""
    tool = shutil.which(args[0])
    assert tool is not None, f"DCMTK tool {args[0]} is not on PATH"
    return subprocess.run([tool, *args[1:]], capture_output=True, text=True, env=dcmtk_env(), timeout=timeout)


def pydicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} not found"
    return Path(path)


@dataclass(frozen=True)
class ReceivedRequest:
    """What a :class:`DirectorySink` keeps of one :class:`~dimse.StoreRequest`: its fields and its bytes.

    The request's own file is deleted once the sink returns; ``data`` is what it held.
    """

    calling_ae: str
    peer_address: str
    peer_port: int
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int
    data: bytes


class DirectorySink:
    """A sink that writes each instance to ``<dir>/<SOP Instance UID>.dcm`` and keeps it in ``requests``."""

    def __init__(self, directory: Path, result: int = status.SUCCESS) -> None:
        self.directory = directory
        self.result = result
        self.requests: list[ReceivedRequest] = []

    def __call__(self, request: StoreRequest) -> int:
        data = request.data
        assert len(data) == request.size == request.path.stat().st_size
        (self.directory / f"{request.sop_instance_uid}.dcm").write_bytes(data)
        fields = {name: getattr(request, name) for name in ReceivedRequest.__dataclass_fields__ if name != "data"}
        self.requests.append(ReceivedRequest(**fields, data=data))
        return self.result


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the DCMTK server exited at start-up"
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


@contextmanager
def running_storescp(out_dir: Path, *options: str) -> Iterator[int]:
    """Run DCMTK ``storescp`` (AE title DCMTKSCP) writing to ``out_dir``; yields its port."""
    out_dir.mkdir()
    port = free_port()
    tool = shutil.which("storescp")
    assert tool is not None, "DCMTK storescp is not on PATH"
    process = subprocess.Popen(
        [tool, "-aet", "DCMTKSCP", *options, "-od", str(out_dir), str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
