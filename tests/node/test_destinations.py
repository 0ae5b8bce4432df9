"""Result senders against real servers: Orthanc's DICOMweb plugin (STOW-RS) and DCMTK's storescp.

Every server runs on 127.0.0.1 on a free port, with its files in pytest's
temporary folder, and is stopped (and waited for) at teardown.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from core import status as dimse_status
from node.destinations import DeliveryAttempt, DicomDestination, DicomWebDestination, is_permanent_status
from tests.helpers.storescp_config import jpeg_lossless_only

pytestmark = pytest.mark.integration

USER, PASSWORD = "ainode", "correct-horse-battery"
# Debian installs Orthanc plugins in /usr/share/orthanc/plugins; other builds elsewhere.
PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so*",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    assert found, f"{name} is not installed (Debian packages orthanc, dcmtk)"
    return found


def _dicomweb_plugin() -> str:
    override = os.environ.get("AINODE_ORTHANC_DICOMWEB_PLUGIN")
    if override:
        return override
    for pattern in PLUGIN_GLOBS:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[0]
    raise AssertionError("Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@dataclass(frozen=True)
class Orthanc:
    http_port: int
    dicomweb_url: str

    def get(self, route: str) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.http_port}{route}", auth=(USER, PASSWORD), timeout=10)

    def sop_instance_uids(self) -> set[str]:
        uids = set()
        for orthanc_id in self.get("/instances").json():
            tags = self.get(f"/instances/{orthanc_id}/simplified-tags").json()
            uids.add(tags["SOPInstanceUID"])
        return uids


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A real Orthanc with the DICOMweb plugin and HTTP Basic authentication."""
    root = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "ainode-test",
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "Plugins": [_dicomweb_plugin()],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "RegisteredUsers": {USER: PASSWORD},
        "AuthenticationEnabled": True,
        "RemoteAccessAllowed": False,
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("wb")
    process = subprocess.Popen(
        [_tool("Orthanc"), str(root / "orthanc.json")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    server = Orthanc(http_port, f"http://127.0.0.1:{http_port}/dicom-web")
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"Orthanc exited: {(root / 'orthanc.log').read_text()[-2000:]}"
            try:
                if server.get("/system").ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "Orthanc did not answer /system within 30 s"
            time.sleep(0.1)
        yield server
    finally:
        _stop(process)
        log.close()


@pytest.fixture()
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    """DCMTK's Storage SCP writing what it receives to a folder."""
    received = tmp_path / "received"
    received.mkdir()
    port = _free_port()
    process = _start_storescp(port, received, "+xa")  # accept compressed syntaxes too
    try:
        yield port, received, process
    finally:
        _stop(process)


def _start_storescp(port: int, folder: Path, *extra: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [_tool("storescp"), "-aet", "STORESCP", "-od", str(folder), *extra, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            assert process.poll() is None, "storescp exited at start-up"
            assert time.monotonic() < deadline, "storescp did not listen within 10 s"
            time.sleep(0.02)


def _copy(name: str, folder: Path) -> Path:
    target = folder / name
    shutil.copy(get_testdata_file(name), target)
    return target


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


# --- STOW-RS ----------------------------------------------------------------------


def test_stow_rs_with_basic_auth_stores_in_orthanc(orthanc: Orthanc, tmp_path: Path) -> None:
    files = [_copy("RG1_UNCR.dcm", tmp_path), _copy("CT_small.dcm", tmp_path)]
    destination = DicomWebDestination(
        "orthanc-web", url=orthanc.dicomweb_url, auth="basic", username=USER, password=PASSWORD, timeout=10
    )
    attempt = destination.send(files)
    assert attempt == DeliveryAttempt(
        ok=True, permanent=False, message=attempt.message, statuses={_uid(f): 0 for f in files}
    )
    assert attempt.message == f"orthanc-web ({orthanc.dicomweb_url}): stored 2 of 2"
    assert {_uid(f) for f in files} <= orthanc.sop_instance_uids()


def test_stow_rs_wrong_password_is_permanent_and_secret_free(orthanc: Orthanc, tmp_path: Path) -> None:
    wrong = "not-the-password"
    destination = DicomWebDestination(
        "orthanc-web", url=orthanc.dicomweb_url, auth="basic", username=USER, password=wrong, timeout=10
    )
    attempt = destination.send([_copy("RG1_UNCR.dcm", tmp_path)])
    assert not attempt.ok and attempt.permanent
    assert attempt.message == (
        f"orthanc-web ({orthanc.dicomweb_url}): HTTP 401 Unauthorized "
        "(authentication failed: check the username/password or token)"
    )
    assert wrong not in attempt.message and wrong not in repr(destination)


def test_stow_rs_without_credentials_is_refused(orthanc: Orthanc, tmp_path: Path) -> None:
    attempt = DicomWebDestination("anon", url=orthanc.dicomweb_url, timeout=10).send([_copy("CT_small.dcm", tmp_path)])
    assert (attempt.ok, attempt.permanent) == (False, True)
    assert "HTTP 401" in attempt.message


def test_stow_rs_closed_port_is_transient(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}/dicom-web"  # nothing listens there
    attempt = DicomWebDestination("down", url=url, auth="bearer", token="t0ken", timeout=5).send(
        [_copy("RG1_UNCR.dcm", tmp_path)]
    )
    assert (attempt.ok, attempt.permanent, attempt.statuses) == (False, False, {})
    assert attempt.message == f"down ({url}): cannot connect (connection refused or host unreachable)"


def test_stow_rs_unreadable_file_is_reported_and_the_rest_is_sent(orthanc: Orthanc, tmp_path: Path) -> None:
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    good = _copy("RG1_UNCR.dcm", tmp_path)
    destination = DicomWebDestination(
        "orthanc-web", url=orthanc.dicomweb_url, auth="basic", username=USER, password=PASSWORD, timeout=10
    )
    attempt = destination.send([broken, good])
    assert not attempt.ok and attempt.permanent
    assert attempt.statuses == {_uid(good): 0}
    assert "stored 1 of 2" in attempt.message and "1 file(s) unreadable" in attempt.message


def test_secrets_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="needs a username and a password"):
        DicomWebDestination("x", url="http://127.0.0.1:1/dicom-web", auth="basic", username="u")
    with pytest.raises(ValueError, match="needs a token"):
        DicomWebDestination("x", url="http://127.0.0.1:1/dicom-web", auth="bearer")


# --- C-STORE ----------------------------------------------------------------------


def test_c_store_to_storescp(storescp: tuple[int, Path, subprocess.Popen[bytes]], tmp_path: Path) -> None:
    port, received, _ = storescp
    files = [_copy("RG1_UNCR.dcm", tmp_path), _copy("CT_small.dcm", tmp_path), _copy("RG1_J2KR.dcm", tmp_path)]
    destination = DicomDestination("pacs", ae_title="STORESCP", host="127.0.0.1", port=port, calling_ae="AINODE")
    attempt = destination.send(files)
    assert attempt.ok and not attempt.permanent
    assert attempt.statuses == {_uid(f): dimse_status.SUCCESS for f in files}
    assert attempt.message == f"pacs (STORESCP@127.0.0.1:{port}): stored 3 of 3"
    assert {_uid(f) for f in received.iterdir()} == {_uid(f) for f in files}


def test_c_store_closed_port_is_transient(tmp_path: Path) -> None:
    port = _free_port()
    destination = DicomDestination(
        "pacs", ae_title="STORESCP", host="127.0.0.1", port=port, calling_ae="AINODE", timeout=5
    )
    attempt = destination.send([_copy("CT_small.dcm", tmp_path)])
    assert (attempt.ok, attempt.permanent, attempt.statuses) == (False, False, {})
    # dimse.scu words a refused TCP connection as "aborted"; either way it is retried.
    assert attempt.message.startswith(f"pacs (STORESCP@127.0.0.1:{port}): ")
    assert "could not associate" in attempt.message or "aborted the association" in attempt.message


def test_c_store_rejected_permanent_association_is_permanent(tmp_path: Path) -> None:
    # A pynetdicom SCP that checks the Called AE Title: its A-ASSOCIATE-RJ is
    # deterministic (storescp --refuse closes at once, which sometimes reads as an abort).
    scp = AE(ae_title="ORTHANC")
    scp.require_called_aet = True
    scp.add_supported_context(CTImageStorage)
    port = _free_port()
    server = scp.start_server(("127.0.0.1", port), block=False)
    try:
        destination = DicomDestination(
            "pacs", ae_title="WRONG_AET", host="127.0.0.1", port=port, calling_ae="AINODE", timeout=5
        )
        attempt = destination.send([_copy("CT_small.dcm", tmp_path)])
    finally:
        server.shutdown()
    assert (attempt.ok, attempt.permanent, attempt.statuses) == (False, True, {})
    assert "rejected the association: Rejected Permanent" in attempt.message
    assert "Called AE title not recognised" in attempt.message


def test_c_store_unreadable_file_fails_permanently_while_the_rest_arrives(
    storescp: tuple[int, Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    port, received, _ = storescp
    broken = tmp_path / "broken.dcm"
    broken.write_text("not DICOM")
    good = _copy("CT_small.dcm", tmp_path)
    attempt = DicomDestination("pacs", ae_title="STORESCP", host="127.0.0.1", port=port, calling_ae="AINODE").send(
        [broken, good]
    )
    assert (attempt.ok, attempt.permanent) == (False, True)
    assert attempt.statuses == {_uid(good): 0}
    assert [_uid(f) for f in received.iterdir()] == [_uid(good)]


def test_c_store_unaccepted_transfer_syntax_fails_only_that_instance(tmp_path: Path) -> None:
    port = _free_port()
    received = tmp_path / "received"
    received.mkdir()
    process = _start_storescp(port, received)  # uncompressed syntaxes only: no JPEG 2000
    try:
        files = [_copy("CT_small.dcm", tmp_path), _copy("RG1_J2KR.dcm", tmp_path)]
        attempt = DicomDestination("pacs", ae_title="STORESCP", host="127.0.0.1", port=port, calling_ae="AINODE").send(
            files
        )
    finally:
        _stop(process)
    ct, j2k = (_uid(f) for f in files)
    assert attempt.statuses == {ct: dimse_status.SUCCESS, j2k: dimse_status.SOP_CLASS_NOT_SUPPORTED}
    assert (attempt.ok, attempt.permanent) == (False, True)  # resending the same file cannot help
    assert f"{j2k}: no acceptable transfer syntax: the peer accepts Computed Radiography Image Storage" in (
        attempt.message
    )
    assert "SOP class not supported" not in attempt.message
    assert attempt.notes.keys() == {j2k}
    assert [_uid(f) for f in received.iterdir()] == [ct]


def test_c_store_to_a_jpeg_lossless_only_archive_names_the_transfer_syntax_not_the_sop_class(tmp_path: Path) -> None:
    """storescp with a JPEG-lossless-only profile takes CT, but not uncompressed: the message says so."""
    port = _free_port()
    received = tmp_path / "received"
    received.mkdir()
    process = _start_storescp(port, received, *jpeg_lossless_only(tmp_path))
    try:
        ct, mr = _copy("CT_small.dcm", tmp_path), _copy("MR_small.dcm", tmp_path)
        attempt = DicomDestination("pacs", ae_title="STORESCP", host="127.0.0.1", port=port, calling_ae="AINODE").send(
            [ct, mr]
        )
    finally:
        _stop(process)
    assert (attempt.ok, attempt.permanent) == (False, True)
    assert attempt.statuses == {_uid(ct): 0x0122, _uid(mr): 0x0122}
    assert attempt.notes[_uid(ct)] == (
        "no acceptable transfer syntax: the peer accepts CT Image Storage in none of "
        "Explicit VR Little Endian, Implicit VR Little Endian"
    )
    assert attempt.notes[_uid(mr)].startswith("SOP class not supported: the peer rejected MR Image Storage")
    assert f"{_uid(ct)}: no acceptable transfer syntax" in attempt.message
    assert list(received.iterdir()) == []


def test_nothing_to_send_is_ok() -> None:
    destination = DicomDestination("pacs", ae_title="X", host="127.0.0.1", port=1, calling_ae="AINODE")
    assert destination.send([]).ok


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(0xA700, False), (0x0110, False), (0xA900, True), (0xC210, True), (0x0122, True), (0x0124, True)],
)
def test_permanent_failure_statuses(status: int, permanent: bool) -> None:
    assert is_permanent_status(status) is permanent


# --- STOW-RS answers Orthanc does not give: a small HTTP server on loopback ---------


class _StowServer:
    """Answers each STOW-RS POST with a fixed HTTP status and DICOM JSON body; records headers."""

    def __init__(self, status: int, body: dict[str, object] | None) -> None:
        self.status = status
        self.body = body
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                server.requests.append({"path": self.path, **dict(self.headers.items())})
                payload = json.dumps(server.body).encode() if server.body is not None else b""
                self.send_response(server.status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicomweb"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> _StowServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _sop_item(uid: str, reason_tag: str | None = None, reason: int | None = None) -> dict[str, object]:
    item: dict[str, object] = {
        "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
        "00081155": {"vr": "UI", "Value": [uid]},
    }
    if reason_tag is not None:
        item[reason_tag] = {"vr": "US", "Value": [reason]}
    return item


def test_stow_rs_bearer_token_and_warning_counts_as_stored(tmp_path: Path) -> None:
    ct = _copy("CT_small.dcm", tmp_path)
    body = {"00081199": {"vr": "SQ", "Value": [_sop_item(_uid(ct), "00081196", 0xB000)]}}
    with _StowServer(200, body) as server:
        attempt = DicomWebDestination("web", url=server.url, auth="bearer", token="s3cr3t-token").send([ct])
    assert server.requests[0]["path"] == "/dicomweb/studies"
    assert server.requests[0]["Authorization"] == "Bearer s3cr3t-token"
    assert (attempt.ok, attempt.statuses) == (True, {_uid(ct): 0xB000})
    assert attempt.message.endswith("stored 1 of 1 (1 with a warning)")


@pytest.mark.parametrize(("http_status", "permanent"), [(503, False), (429, False), (408, False), (400, True)])
def test_stow_rs_http_status_classes(tmp_path: Path, http_status: int, permanent: bool) -> None:
    with _StowServer(http_status, None) as server:
        attempt = DicomWebDestination("web", url=server.url).send([_copy("CT_small.dcm", tmp_path)])
    assert len(server.requests) == 1  # no hidden retries inside dicomweb-client
    assert (attempt.ok, attempt.permanent) == (False, permanent)
    assert f"HTTP {http_status}" in attempt.message


@pytest.mark.parametrize(("reason", "permanent"), [(0xA700, False), (0xC000, True)])
def test_stow_rs_409_uses_each_instances_failure_reason(tmp_path: Path, reason: int, permanent: bool) -> None:
    ct, cr = _copy("CT_small.dcm", tmp_path), _copy("RG1_UNCR.dcm", tmp_path)
    body = {
        "00081199": {"vr": "SQ", "Value": [_sop_item(_uid(cr))]},
        "00081198": {"vr": "SQ", "Value": [_sop_item(_uid(ct), "00081197", reason)]},
    }
    with _StowServer(409, body) as server:
        attempt = DicomWebDestination("web", url=server.url).send([ct, cr])
    assert attempt.statuses == {_uid(cr): 0, _uid(ct): reason}
    assert (attempt.ok, attempt.permanent) == (False, permanent)
    assert "HTTP 409" in attempt.message and "stored 1 of 2" in attempt.message
