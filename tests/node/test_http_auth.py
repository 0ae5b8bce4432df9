"""The HTTP server's authentication, its audit, the pull endpoint and STOW-RS intake, in one process.

A started :class:`node.service.Node` with its HTTP server on a free port on
loopback; requests by ``requests`` and dicomweb-client. The pull endpoint runs
against a puller that answers as :class:`node.pull.Puller` does (the real one,
against Orthanc, is exercised by ``tests/integration/test_pull.py``). STOW-RS
through a node process and into Orthanc: ``tests/integration/test_stow.py``.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.uid import generate_uid

from node.audit import query
from node.cli import main
from node.db import AuditKind, Database, Instance
from node.errors import ConfigError
from node.http import ReadinessProbe
from node.pull import NothingFound, PullArgumentError, PullResult, SourceUnavailable, UnknownSource
from node.service import Node
from node.settings import Settings, load_settings
from node.web.auth import Authenticator, hash_password, verify_password
from tests.node.test_http import _settings

TOKEN = "t0ken-of-the-ris-integration-0123456789"
PASSWORD = "correct horse battery staple"


class FakePuller:
    """Answers as node.pull.Puller: a result, or the PullError its arguments call for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def pull(
        self,
        source: str,
        *,
        accession: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
    ) -> PullResult:
        self.calls.append((source, {"accession": accession, "study_uid": study_uid, "series_uid": series_uid}))
        if source != "pacs":
            raise UnknownSource(f"no source named {source!r} (sources: pacs)")
        if (accession is None) == (study_uid is None):
            raise PullArgumentError("give either an accession number or a Study Instance UID (one of them)")
        if accession == "DOWN":
            raise SourceUnavailable("source 'pacs' (ORTHANC@127.0.0.1:4242) unreachable: connection refused")
        if accession == "NONE":
            raise NothingFound("source 'pacs' has no study with accession number 'NONE'")
        if accession == "BUG":
            raise RuntimeError("an unexpected failure\nwith a second line")
        return PullResult("pacs", 1, 2, 1, 7, 0, "pulled 1 study: 2 series retrieved (7 instances), 1 unchanged")


def _auth_settings(tmp_path: Path, **overrides: Any) -> Settings:
    token_file = tmp_path / "ris.token"
    token_file.write_text(TOKEN + "\n")
    values: dict[str, Any] = {
        "http_tokens": [{"name": "ris", "token_file": token_file}],
        "http_users": [{"name": "admin", "password_hash": hash_password(PASSWORD)}],
        **overrides,
    }
    return _settings(tmp_path, **values)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Node, str, FakePuller]]:
    node = Node(_auth_settings(tmp_path))
    puller = FakePuller()
    node.puller = puller  # type: ignore[assignment]  # in place of the sources' puller
    node.start()
    http = node.http_server()
    http.start()
    try:
        yield node, f"http://127.0.0.1:{http.port}", puller
    finally:
        http.stop()
        node.stop()


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _audit(node: Node, kind: AuditKind) -> list[Any]:
    return query(node.db, kinds=[kind.value])


# -- passwords and tokens --------------------------------------------------------------------------


def test_password_hashes_verify_only_their_password_and_differ_per_salt() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first != second and first.startswith("scrypt$16384$8$1$")
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + " ", first) and not verify_password("", first)
    assert not verify_password(PASSWORD, "plain text in the file")


def test_a_password_instead_of_its_hash_is_refused_in_configuration(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"data_dir: {tmp_path}\nhttp_users: [{{name: admin, password_hash: {PASSWORD!r}}}]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    message = str(caught.value)
    assert "http_users.0.password_hash" in message and "ainode hash-password" in message
    assert PASSWORD not in message


def test_a_token_variable_named_like_a_setting_is_not_read_as_one_and_tokens_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"data_dir: {tmp_path}\nhttp_tokens: [{{name: ris, token_env: AINODE_RIS_TOKEN}}]\n")
    monkeypatch.delenv("AINODE_RIS_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="AINODE_RIS_TOKEN is not set"):
        load_settings(config, environ={}).http_tokens[0].secret()
    monkeypatch.setenv("AINODE_RIS_TOKEN", "short")
    settings = load_settings(config)  # not an unknown setting 'ris_token'
    with pytest.raises(ConfigError, match="shorter than 16 characters"):
        settings.http_tokens[0].secret()
    monkeypatch.setenv("AINODE_RIS_TOKEN", TOKEN)
    assert load_settings(config).http_tokens[0].secret() == TOKEN
    config.write_text(
        f"data_dir: {tmp_path}\nhttp_tokens: [{{name: ris, token_env: A, token_file: {tmp_path / 't'}}}]\n"
    )
    with pytest.raises(ConfigError, match="exactly one of 'token_env' and 'token_file'"):
        load_settings(config, environ={})


def test_each_caller_needs_its_own_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"name \['ris'\] more than once"):
        _auth_settings(tmp_path, http_users=[{"name": "ris", "password_hash": hash_password(PASSWORD)}])
    with pytest.raises(ValueError, match="http_tokens.0.name"):
        _auth_settings(tmp_path, http_tokens=[{"name": "a name with spaces", "token_env": "X"}])


def test_authenticator_names_the_caller_or_why_not() -> None:
    auth = Authenticator([("ris", TOKEN), ("other", "another-token-0123456789")], {"admin": hash_password(PASSWORD)})
    assert auth.check(f"Bearer {TOKEN}").name == "ris"
    assert auth.check("bearer another-token-0123456789").name == "other"
    assert auth.check(f"Bearer {TOKEN[:-1]}").refusal == "unknown token"
    assert auth.check(_basic("admin", PASSWORD)["Authorization"]).name == "admin"
    wrong = auth.check(_basic("admin", "wrong")["Authorization"])
    assert wrong.name is None and wrong.claimed == "admin" and wrong.refusal == "unknown user or wrong password"
    assert auth.check(_basic("nobody", PASSWORD)["Authorization"]).refusal == "unknown user or wrong password"
    assert auth.check("Basic !!!").refusal == "malformed Basic credentials"
    assert auth.check("Basic " + base64.b64encode(b"no-colon").decode()).refusal == "malformed Basic credentials"
    assert auth.check("Digest x").refusal.startswith("unsupported authorization scheme")
    assert auth.check(None).refusal.startswith("no credentials")
    assert not Authenticator([], {}).configured


def test_hash_password_command_prints_a_hash_of_the_password_on_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))  # a pipe: not a terminal
    assert main(["hash-password"]) == 0
    out, err = capsys.readouterr()
    assert verify_password(PASSWORD, out.strip()) and PASSWORD not in out + err
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["hash-password"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == "ainode: error: a password needs at least 8 characters"


# -- the server ------------------------------------------------------------------------------------


def test_only_health_and_readiness_are_open(served: tuple[Node, str, FakePuller]) -> None:
    node, base, puller = served
    assert requests.get(base + "/healthz", timeout=10).status_code == 200
    assert requests.get(base + "/readyz", timeout=10).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, _basic("admin", "wrong password")):
        answer = requests.post(base + "/api/pull", json={"source": "pacs", "accession": "A1"}, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="ainode", Basic realm="ainode"')
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json()["error"].startswith("authentication required: ")
        stow = requests.post(
            base + "/dicomweb/studies",
            data=b"--b\r\n\r\n--b--\r\n",
            headers={**headers, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        )
        assert stow.status_code == 401
    assert puller.calls == []
    refused = _audit(node, AuditKind.HTTP_REFUSED)
    assert len(refused) == 6
    messages = sorted(r.message for r in refused)
    assert sum("401 POST /api/pull: no credentials" in m for m in messages) == 1
    assert sum("401 STOW-RS POST /dicomweb/studies: unknown token" in m for m in messages) == 1
    assert [r.calling_ae for r in refused if "wrong password" in r.message] == ["admin", "admin"]
    assert {r.peer_address for r in refused} == {"127.0.0.1"}
    assert all(TOKEN not in m and "wrong-token" not in m and "wrong password" not in m.split(":")[0] for m in messages)


def test_metrics_need_a_token_or_user_by_default(served: tuple[Node, str, FakePuller]) -> None:
    node, base, _ = served
    assert Settings().http_metrics_auth is True
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, _basic("admin", "wrong password")):
        answer = requests.get(base + "/metrics", headers=headers, timeout=10)
        assert answer.status_code == 401 and "ainode_" not in answer.text
        assert answer.headers["WWW-Authenticate"].startswith('Bearer realm="ainode"')
    for headers in (BEARER, _basic("admin", PASSWORD)):
        answer = requests.get(base + "/metrics", headers=headers, timeout=10)
        assert answer.status_code == 200 and "ainode_instances_received_total 0.0" in answer.text
    refused = [r.message for r in _audit(node, AuditKind.HTTP_REFUSED)]
    assert len(refused) == 3 and all(m.startswith("401 GET /metrics: ") for m in refused), refused
    # A scrape is not an action: accepted ones leave no audit row.
    assert _audit(node, AuditKind.HTTP_REQUEST) == []


def test_metrics_open_to_a_logged_in_admin_session(served: tuple[Node, str, FakePuller]) -> None:
    _, base, _ = served
    browser = requests.Session()
    assert browser.get(base + "/metrics", timeout=10).status_code == 401
    login = browser.post(
        base + "/login", data={"username": "admin", "password": PASSWORD}, allow_redirects=False, timeout=10
    )
    assert login.status_code == 303 and browser.cookies
    answer = browser.get(base + "/metrics", timeout=10)
    assert answer.status_code == 200 and "ainode_instances_received_total" in answer.text
    forged = {name: value[:-4] + "AAAA" for name, value in browser.cookies.items()}
    assert requests.get(base + "/metrics", cookies=forged, timeout=10).status_code == 401


def test_metrics_are_open_with_http_metrics_auth_false(tmp_path: Path) -> None:
    node = Node(_settings(tmp_path, http_metrics_auth=False))  # nobody configured: every other route refuses
    http = node.http_server()
    http.start()
    try:
        base = f"http://127.0.0.1:{http.port}"
        answer = requests.get(base + "/metrics", timeout=10)
        assert answer.status_code == 200 and "ainode_instances_received_total" in answer.text
        assert requests.post(base + "/api/pull", json={"source": "pacs", "accession": "A1"}).status_code == 401
    finally:
        http.stop()
        node.db.dispose()


def test_stow_waits_for_the_node_to_finish_starting(tmp_path: Path) -> None:
    node = Node(_auth_settings(tmp_path))  # serve starts HTTP first: /healthz answers during recovery
    http = node.http_server()
    http.start()
    try:
        answer = requests.post(
            f"http://127.0.0.1:{http.port}/dicomweb/studies",
            data=_instance(tmp_path, generate_uid()).read_bytes(),
            headers={**BEARER, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
            timeout=10,
        )
        assert (answer.status_code, answer.headers["Retry-After"]) == (503, "5")
        assert answer.json()["error"].startswith("the node is starting")
    finally:
        http.stop()
        node.db.dispose()


def test_an_unreadable_token_file_stops_the_http_server_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.token"
    node = Node(_settings(tmp_path, http_tokens=[{"name": "ris", "token_file": missing}]))
    try:
        with pytest.raises(ConfigError) as caught:
            node.http_server()
        assert str(caught.value).startswith(f"http_tokens 'ris': cannot read token file {missing}")
        assert "\n" not in str(caught.value)
    finally:
        node.db.dispose()


def test_nobody_configured_refuses_everyone_and_says_so(tmp_path: Path) -> None:
    node = Node(_settings(tmp_path))
    node.puller = FakePuller()  # type: ignore[assignment]
    http = node.http_server()
    http.start()
    try:
        answer = requests.post(
            f"http://127.0.0.1:{http.port}/api/pull", json={"source": "pacs", "accession": "A1"}, headers=BEARER
        )
        assert answer.status_code == 401
        assert "no http_tokens or http_users are configured" in answer.json()["error"]
    finally:
        http.stop()
        node.db.dispose()


def test_pull_endpoint_answers_the_result_or_the_failure_with_its_status(
    served: tuple[Node, str, FakePuller],
) -> None:
    node, base, puller = served

    def pull(body: Any, headers: dict[str, str] = BEARER) -> requests.Response:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return requests.post(base + "/api/pull", data=raw, headers=headers, timeout=10)

    ok = pull({"source": "pacs", "accession": "A1"}, _basic("admin", PASSWORD))
    assert ok.status_code == 200
    assert ok.json() == {
        "source": "pacs",
        "studies": 1,
        "series_requested": 2,
        "series_skipped": 1,
        "instances_received": 7,
        "failed": 0,
        "message": "pulled 1 study: 2 series retrieved (7 instances), 1 unchanged",
    }
    study, series = generate_uid(), generate_uid()
    assert pull({"source": "pacs", "study": study, "series": series}).status_code == 200
    assert puller.calls == [
        ("pacs", {"accession": "A1", "study_uid": None, "series_uid": None}),
        ("pacs", {"accession": None, "study_uid": study, "series_uid": series}),
    ]
    cases = [
        (b"not json", 400, "body is not JSON"),
        (b"[1, 2]", 400, "body must be a JSON object"),
        ({"source": "pacs", "accession": "A1", "patient": "x"}, 400, "unknown key(s) 'patient'"),
        ({"accession": "A1"}, 400, "'source' is required"),
        ({"source": "pacs", "accession": 12}, 400, "'accession' must be a non-empty string"),
        ({"source": "pacs"}, 400, "give either an accession number or a Study Instance UID"),
        ({"source": "elsewhere", "accession": "A1"}, 404, "no source named 'elsewhere'"),
        ({"source": "pacs", "accession": "NONE"}, 404, "has no study with accession number"),
        ({"source": "pacs", "accession": "DOWN"}, 502, "unreachable: connection refused"),
        (b"{" + b" " * 5000 + b"}", 413, "at most 4096 bytes"),
    ]
    for body, status, error in cases:
        answer = pull(body)
        assert (answer.status_code, answer.headers["Content-Type"]) == (status, "application/json"), body
        assert error in answer.json()["error"], (body, answer.json())
        assert "\n" not in answer.json()["error"]
    done = _audit(node, AuditKind.HTTP_REQUEST)
    assert sorted(r.message.split(":")[0] for r in done) == sorted(
        [
            "200 POST /api/pull pacs accession",
            f"200 POST /api/pull pacs study {study} series {series}",
            "400 POST /api/pull pacs accession",  # the puller's argument error
            "404 POST /api/pull elsewhere accession",
            "404 POST /api/pull pacs accession",
            "502 POST /api/pull pacs accession",
        ]
    )
    assert {r.calling_ae for r in done} == {"ris", "admin"}
    assert not any("A1" in (r.message or "") for r in done)  # accession numbers stay out of the audit
    assert len([r for r in _audit(node, AuditKind.HTTP_REFUSED) if r.message.startswith("400")]) == 5


def test_a_failing_handler_answers_500_with_one_line_and_the_node_keeps_serving(
    served: tuple[Node, str, FakePuller], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, base, _ = served
    answer = requests.post(base + "/api/pull", json={"source": "pacs", "accession": "BUG"}, headers=BEARER)
    assert answer.status_code == 500
    assert answer.json() == {"error": "internal error (see the node's log)"}
    assert "Traceback" not in answer.text and "unexpected failure" not in answer.text
    assert "an unexpected failure" in caplog.text and "Traceback" in caplog.text

    def failing_checks(self: ReadinessProbe) -> dict[str, str]:
        raise OSError("probe failed")

    monkeypatch.setattr(ReadinessProbe, "checks", failing_checks)
    answer = requests.get(base + "/readyz", timeout=10)
    assert (answer.status_code, answer.json()) == (500, {"error": "internal error (see the node's log)"})
    assert requests.get(base + "/healthz", timeout=10).text == "ok\n"
    assert node.receiver.counts == {"stored": 0, "rejected": 0}


# -- STOW-RS in process ----------------------------------------------------------------------------


def _instance(folder: Path, study_uid: str, side: int = 64) -> Path:
    """A small CR (``side`` x ``side`` pixels of 16 bits) of ``study_uid`` as a Part 10 file."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = pydicom.uid.ComputedRadiographyImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "CR", "STOW1", "Stow^Test"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(side * side * 2)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def recorded(db: Database, sop_uid: str, timeout: float = 10) -> Instance:
    """The instance's row, once the receiver's recorder has committed it (rows follow the durable files)."""
    deadline = time.monotonic() + timeout
    while True:
        with db.session() as session:
            row = session.query(Instance).filter_by(sop_uid=sop_uid).one_or_none()
            if row is not None or time.monotonic() > deadline:
                assert row is not None, f"{sop_uid} not recorded within {timeout} s"
                session.expunge(row)
                return row
        time.sleep(0.05)


def test_stow_stores_good_parts_and_names_the_refused_ones(
    served: tuple[Node, str, FakePuller], tmp_path: Path
) -> None:
    node, base, _ = served
    study = generate_uid()
    good = pydicom.dcmread(_instance(tmp_path, study))
    other = pydicom.dcmread(_instance(tmp_path, generate_uid()))
    client = DICOMwebClient(url=base + "/dicomweb", headers=BEARER)
    answer = client.store_instances([good, other], study_instance_uid=study)
    [stored] = answer.ReferencedSOPSequence
    assert (stored.ReferencedSOPClassUID, stored.ReferencedSOPInstanceUID) == (good.SOPClassUID, good.SOPInstanceUID)
    [failed] = answer.FailedSOPSequence
    assert failed.ReferencedSOPInstanceUID == other.SOPInstanceUID and failed.FailureReason == 0xA900
    row = recorded(node.db, good.SOPInstanceUID)  # the file is durable before the answer; its row follows
    assert (row.calling_ae, row.peer_address, row.study_uid) == ("ris", "127.0.0.1", study)
    assert Path(row.path).is_file()
    with node.db.session() as session:
        assert session.query(Instance).filter_by(sop_uid=other.SOPInstanceUID).count() == 0
    [received] = _audit(node, AuditKind.RECEIVED)
    assert (received.calling_ae, received.study_uid, received.instance_count) == ("ris", study, 1)
    [request] = _audit(node, AuditKind.HTTP_REQUEST)
    assert request.message.startswith(f"202 STOW-RS POST /dicomweb/studies/{study}: 1 stored, 1 failed (0xA900 ")
    assert list(node.settings.tmp_dir.glob(".incoming-*")) == []  # nothing left behind


def test_stow_refuses_other_media_types_malformed_bodies_and_keeps_nothing(
    served: tuple[Node, str, FakePuller], tmp_path: Path
) -> None:
    node, base, _ = served
    part = _instance(tmp_path, generate_uid()).read_bytes()

    def post(content_type: str | None, body: bytes, url: str = "/dicomweb/studies") -> requests.Response:
        headers = {**BEARER, **({"Content-Type": content_type} if content_type else {})}
        return requests.post(base + url, data=body, headers=headers, timeout=30)

    related = 'multipart/related; type="application/dicom"; boundary=XyZ'
    body = b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--XyZ--\r\n"
    cases = [
        (None, body, "/dicomweb/studies", 415, "no Content-Type"),
        ("application/dicom", part, "/dicomweb/studies", 415, "media type 'application/dicom' not supported"),
        ('multipart/related; type="application/dicom+json"; boundary=XyZ', body, "/dicomweb/studies", 415, "only"),
        ('multipart/related; type="application/dicom"', body, "/dicomweb/studies", 400, "without a boundary"),
        (related, body[: len(body) // 2], "/dicomweb/studies", 400, "ends before the closing boundary"),
        (related, b"--XyZ--\r\n", "/dicomweb/studies", 400, "without a part"),
        (related, body, "/dicomweb/studies/1.2.03", 400, "is not a UID"),
    ]
    for content_type, data, url, status, error in cases:
        answer = post(content_type, data, url)
        assert answer.status_code == status, (content_type, answer.text)
        assert error in answer.json()["error"], (content_type, answer.json())
    assert list(node.settings.tmp_dir.glob(".incoming-*")) == []
    assert list(node.settings.spool_dir.rglob("*.dcm")) == []  # the durable record (rows follow files)
    # A part that is no DICOM file and a part of another media type fail; the good one is stored (202).
    mixed = (
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nnot a DICOM file at all\r\n"
        b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n"
        b"--XyZ\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XyZ--\r\n"
    )
    answer = post(related, mixed)
    assert answer.status_code == 202 and answer.headers["Content-Type"] == "application/dicom+json"
    response = pydicom.Dataset.from_json(answer.json())
    assert [f.FailureReason for f in response.FailedSOPSequence] == [0xC210, 0xC210]
    assert len(response.ReferencedSOPSequence) == 1
    answer = post(related, b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nnothing\r\n--XyZ--\r\n")
    assert answer.status_code == 409
    assert [f.FailureReason for f in pydicom.Dataset.from_json(answer.json()).FailedSOPSequence] == [0xC210]


def test_a_client_gone_mid_request_leaves_no_part_file_and_the_node_keeps_serving(
    served: tuple[Node, str, FakePuller], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node, base, _ = served
    port = int(base.rsplit(":", 1)[1])
    part = _instance(tmp_path, generate_uid()).read_bytes()
    head = (
        "POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {TOKEN}\r\n"
        'Content-Type: multipart/related; type="application/dicom"; boundary=XyZ\r\n'
        f"Content-Length: {10 * len(part)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(head + b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n" + part[: len(part) // 2])
        deadline = time.monotonic() + 10
        while not list(node.settings.tmp_dir.glob(".incoming-stow-*")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert list(node.settings.tmp_dir.glob(".incoming-stow-*")), "the part was not being written"
    deadline = time.monotonic() + 10
    while list(node.settings.tmp_dir.glob(".incoming-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(node.settings.tmp_dir.glob(".incoming-*")) == []
    assert list(node.settings.spool_dir.rglob("*.dcm")) == []
    client = DICOMwebClient(url=base + "/dicomweb", headers=BEARER)
    assert len(client.store_instances([pydicom.dcmread(_instance(tmp_path, generate_uid()))]).ReferencedSOPSequence)
    assert "the client went away before the end of its request" in caplog.text and "Traceback" not in caplog.text


def test_stow_beyond_the_size_limit_is_413_and_stores_nothing(tmp_path: Path) -> None:
    node = Node(_auth_settings(tmp_path, stow_max_request_size=100_000))
    node.start()
    http = node.http_server()
    http.start()
    try:
        base = f"http://127.0.0.1:{http.port}"
        small = pydicom.dcmread(_instance(tmp_path, generate_uid()))  # 8 kB of pixels
        client = DICOMwebClient(url=base + "/dicomweb", headers=BEARER)
        assert len(client.store_instances([small]).ReferencedSOPSequence) == 1
        big = [pydicom.dcmread(_instance(tmp_path, generate_uid(), side=200)) for _ in range(2)]  # 2 x 80 kB
        with pytest.raises(requests.HTTPError) as caught:
            client.store_instances(big)
        assert caught.value.response.status_code == 413
        assert "exceeds stow_max_request_size (100000 bytes)" in caught.value.response.json()["error"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted as the body arrives
            yield b"--XyZ\r\nContent-Type: application/dicom\r\n\r\n"
            for _ in range(20):
                yield b"\0" * 10_000

        answer = requests.post(
            base + "/dicomweb/studies",
            data=chunks(),
            headers={**BEARER, "Content-Type": 'multipart/related; type="application/dicom"; boundary=XyZ'},
            timeout=30,
        )
        assert answer.status_code == 413
        assert recorded(node.db, small.SOPInstanceUID) is not None
        assert len(list(node.settings.spool_dir.rglob("*.dcm"))) == 1
        assert list(node.settings.tmp_dir.glob(".incoming-*")) == []
    finally:
        http.stop()
        node.stop()


def test_https_when_a_certificate_is_configured(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is not on PATH"
    key, cert = tmp_path / "http.key", tmp_path / "http.crt"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    node = Node(_auth_settings(tmp_path, http_tls={"certificate": cert, "private_key": key}))
    node.puller = FakePuller()  # type: ignore[assignment]
    http = node.http_server()
    http.start()
    try:
        base = f"https://127.0.0.1:{http.port}"
        assert requests.get(base + "/healthz", verify=str(cert), timeout=10).text == "ok\n"
        answer = requests.post(
            base + "/api/pull", json={"source": "pacs", "accession": "A1"}, headers=BEARER, verify=str(cert)
        )
        assert answer.status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{http.port}/healthz", timeout=10)  # no plain HTTP on that port
    finally:
        http.stop()
        node.db.dispose()
    with pytest.raises(ConfigError, match="http_tls.private_key"):
        Node(_auth_settings(tmp_path, http_tls={"certificate": cert, "private_key": cert})).http_server()
