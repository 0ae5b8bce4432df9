"""DICOM TLS (PS3.15 B.1, BCP 195) and DICOMweb over HTTPS, against a real ``ainode serve``.

The test makes its own small PKI with the openssl CLI: a CA, a server
certificate for 127.0.0.1 (IP in the subjectAltName), a client certificate,
and a second CA with its own client certificate that the node must refuse.
DCMTK's storescu/echoscu/storescp are the TLS peers; Orthanc serves STOW-RS
over HTTPS with Basic authentication.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from node import tls
from node.db import Delivery, DeliveryState, JobState
from node.dispatcher import build_senders
from node.errors import ConfigError
from node.settings import Settings, TlsSettings, load_settings
from tests.helpers import OrthancServer, echoscu, free_port, require_tool, storescu, tool_env, wait_for_port
from tests.integration.nodeproc import NodeProcess

LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    server_pem: Path  # certificate and key in one file (Orthanc's SslCertificate)
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is not on PATH"
    subprocess.run([openssl, *args], check=True, capture_output=True)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-keyout",
        str(key),
        "-out",
        str(cert),
    )
    return cert, key


def _make_leaf(directory: Path, name: str, ca: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (directory / f"{name}{s}" for s in (".crt", ".key", ".csr", ".ext"))
    ext.write_text(f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\nsubjectAltName=IP:{LOCALHOST}\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _make_ca(d, "ainode-test-ca")
    other_ca = _make_ca(d, "other-ca")
    server = _make_leaf(d, "server", ca, "serverAuth,clientAuth")
    client = _make_leaf(d, "client", ca, "clientAuth")
    other_client = _make_leaf(d, "other-client", other_ca, "clientAuth")
    pem = d / "server.pem"
    pem.write_text(server[0].read_text() + server[1].read_text())
    return Pki(ca[0], server[0], server[1], pem, client[0], client[1], other_ca[0], *other_client)


def _tls_settings(pki: Pki, port: int, **more: object) -> dict[str, object]:
    return {
        "enabled": True,
        "port": port,
        "certificate": str(pki.server_cert),
        "private_key": str(pki.server_key),
        "ca_certificates": str(pki.ca),
        **more,
    }


def _wait(condition: Callable[[], bool], timeout: float, what: str, node: NodeProcess) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s:\n{node.log()}")
        time.sleep(0.1)


def _last_errors(node: NodeProcess, destination: str) -> list[str]:
    db = node.database()
    try:
        with db.session() as s:
            return [d.last_error or "" for d in s.scalars(select(Delivery).where(Delivery.destination == destination))]
    finally:
        db.dispose()


# -- the node's TLS port, with DCMTK as the sender -------------------------------------------------


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[tuple[NodeProcess, int, int]]:
    """A node with a plain port and a TLS port that requires a client certificate signed by the test CA."""
    tls_port, http_port = free_port(), free_port()
    node = NodeProcess(
        tmp_path_factory.mktemp("tls-node"),
        http_port=http_port,
        tls=_tls_settings(pki, tls_port, require_client_certificate=True),
    ).start()
    try:
        assert wait_for_port(tls_port), node.log()
        yield node, tls_port, http_port
    finally:
        node.stop()


def _client_tls(pki: Pki, cert: Path | None = None, key: Path | None = None) -> tuple[str, ...]:
    """DCMTK's options: +tls KEY CERT (or anonymous +tla) and the CA that verifies the node."""
    identity = ("+tls", str(key), str(cert)) if cert and key else ("+tla",)
    return (*identity, "+cf", str(pki.ca))


def test_dcmtk_stores_over_tls_with_a_client_certificate_and_the_node_analyses(
    tls_node: tuple[NodeProcess, int, int], pki: Pki, rg1_uncr: Path
) -> None:
    node, tls_port, http_port = tls_node
    assert (
        echoscu(LOCALHOST, tls_port, "AINODE", "STORESCU", _client_tls(pki, pki.client_cert, pki.client_key)).returncode
        == 0
    )

    sent = storescu(
        [rg1_uncr], LOCALHOST, tls_port, "AINODE", extra_args=_client_tls(pki, pki.client_cert, pki.client_key)
    )

    assert sent.returncode == 0 and "E: " not in sent.stderr, sent.stderr
    [job] = node.wait_jobs(1)
    assert job.state == JobState.DONE, (job.error, node.log())
    assert job.pipeline == "cxr"
    assert job.study_uid == str(pydicom.dcmread(rg1_uncr, stop_before_pixels=True).StudyInstanceUID)
    # /readyz checks both DICOM ports; its TLS probe completes a handshake, so it logs no failed one
    # (the fixture's bare connect that waited for the port did).
    failed_before = node.log().count("TLS handshake with")
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=10) as answer:
        assert answer.status == 200
    time.sleep(0.5)
    assert node.log().count("TLS handshake with") == failed_before


def test_clients_without_a_certificate_or_from_another_ca_are_refused(
    tls_node: tuple[NodeProcess, int, int], pki: Pki, rg1_uncr: Path
) -> None:
    node, tls_port, _ = tls_node
    failed_before = node.log().count("TLS handshake with")
    anonymous = storescu([rg1_uncr], LOCALHOST, tls_port, "AINODE", extra_args=_client_tls(pki))
    foreign = storescu(
        [rg1_uncr],
        LOCALHOST,
        tls_port,
        "AINODE",
        extra_args=_client_tls(pki, pki.other_client_cert, pki.other_client_key),
    )

    for refused in (anonymous, foreign):
        assert refused.returncode != 0, refused.stderr
        assert "TLS" in refused.stderr or "SSL" in refused.stderr or "Association" in refused.stderr, refused.stderr
    _wait(lambda: node.log().count("TLS handshake with") >= failed_before + 2, 10, "logged refusals", node)
    assert "Traceback" not in node.log()
    # still serving with the right certificate
    assert (
        echoscu(LOCALHOST, tls_port, "AINODE", "STORESCU", _client_tls(pki, pki.client_cert, pki.client_key)).returncode
        == 0
    )


def test_plain_dicom_to_the_tls_port_fails_and_the_node_keeps_serving(
    tls_node: tuple[NodeProcess, int, int], pki: Pki
) -> None:
    node, tls_port, _ = tls_node
    plain = echoscu(LOCALHOST, tls_port, "AINODE", "STORESCU", timeout=60)

    assert plain.returncode != 0
    assert echoscu(LOCALHOST, node.port, "AINODE", "STORESCU").returncode == 0
    assert (
        echoscu(LOCALHOST, tls_port, "AINODE", "STORESCU", _client_tls(pki, pki.client_cert, pki.client_key)).returncode
        == 0
    )
    assert node.proc is not None and node.proc.poll() is None
    assert "Traceback" not in node.log()


# -- start-up checks ---------------------------------------------------------------------------------


def test_a_key_that_does_not_match_the_certificate_stops_serve_with_the_key_and_file(tmp_path: Path, pki: Pki) -> None:
    node = NodeProcess(
        tmp_path / "node",
        tls={
            "enabled": True,
            "port": free_port(),
            "certificate": str(pki.server_cert),
            "private_key": str(pki.client_key),
        },
    )
    with pytest.raises(RuntimeError) as failed:
        node.start(timeout=30)
    assert "tls.private_key" in str(failed.value) and str(pki.client_key) in str(failed.value)
    assert "Traceback" not in str(failed.value)


def test_unusable_tls_files_are_config_errors_naming_key_and_file(tmp_path: Path, pki: Pki) -> None:
    missing = tmp_path / "absent.key"
    not_pem = tmp_path / "notpem.crt"
    not_pem.write_text("hello\n")
    cases = [
        (TlsSettings(enabled=True, certificate=pki.server_cert, private_key=missing), "tls.private_key", missing),
        (TlsSettings(enabled=True, certificate=not_pem, private_key=pki.server_key), "tls.certificate", not_pem),
        (
            TlsSettings(enabled=True, certificate=pki.server_cert, private_key=pki.server_key, ca_certificates=missing),
            "tls.ca_certificates",
            missing,
        ),
    ]
    for settings, key, path in cases:
        with pytest.raises(ConfigError) as failed:
            tls.server_context(settings)
        assert key in str(failed.value) and str(path) in str(failed.value)

    context = tls.server_context(TlsSettings(enabled=True, certificate=pki.server_cert, private_key=pki.server_key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2

    dest = {
        "type": "dicom",
        "ae_title": "PACS",
        "host": LOCALHOST,
        "port": 104,
        "tls": True,
        "ca_certificates": str(missing),
    }
    with pytest.raises(ConfigError, match=r"destinations\.pacs\.ca_certificates"):
        build_senders(Settings(destinations={"pacs": dest}, default_destinations=[]))
    web = {"type": "dicomweb", "url": "https://pacs.invalid/dicom-web", "ca_certificates": str(not_pem)}
    with pytest.raises(ConfigError, match=r"destinations\.web\.ca_certificates"):
        build_senders(Settings(destinations={"web": web}, default_destinations=[]))


def test_settings_say_what_is_wrong_with_a_tls_section(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    for text, expected in [
        ("tls: {enabled: true}\n", "needs 'certificate' and 'private_key'"),
        ("port: null\n", "the node would not listen"),
        ("tls: {enabled: true, port: 11112, certificate: a.crt, private_key: a.key}\n", "must differ"),
        ("destinations: {p: {type: dicom, ae_title: P, host: h, port: 1, ca_certificates: ca.crt}}\n", "set tls: true"),
    ]:
        config.write_text(text)
        with pytest.raises(ConfigError, match=expected):
            load_settings(config, environ={})


def test_tls_only_node_is_ready_and_answers_ainode_echo(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """``port: null`` turns the plain port off; /readyz and ``ainode echo`` then use the TLS port."""
    from node.service import Node

    settings = Settings(
        port=None,
        host=LOCALHOST,
        data_dir=tmp_path / "data",
        allowed_peers=[],
        destinations={},
        default_destinations=[],
        http_port=0,
        tls=TlsSettings(**_tls_settings(pki, free_port())),
    )
    node = Node(settings)
    node.start()
    try:
        assert node.tls_port == settings.tls.port and node.plain_scp is None
        server = node.http_server()
        assert server.readiness.checks()["dicom"] == "ok"
        server.stop()
        config = tmp_path / "node.yaml"
        config.write_text(
            f"port: null\ndata_dir: {tmp_path / 'data'}\ndestinations: {{}}\ndefault_destinations: []\n"
            f"tls: {{enabled: true, port: {settings.tls.port}, certificate: {pki.server_cert}, "
            f"private_key: {pki.server_key}}}\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "node.cli", "echo"],
            capture_output=True,
            text=True,
            env={**os.environ, "AINODE_CONFIG": str(config)},
            cwd=Path(__file__).parents[2],
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "over TLS: status 0x0000 (success)" in result.stdout
    finally:
        node.stop()
    assert "handshake" not in caplog.text


# -- the node's SCU to TLS destinations -------------------------------------------------------------


@contextlib.contextmanager
def _storescp(out: Path, *tls_options: str) -> Iterator[int]:
    """DCMTK's storescp writing into ``out``; plain TCP, or TLS with ``tls_options``."""
    port = free_port()
    out.mkdir()
    proc = subprocess.Popen(
        [require_tool("storescp"), *tls_options, "-od", str(out), "-aet", "TLSPACS", str(port)],
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    try:
        # a bare connect: a TLS storescp notes a failed handshake and goes on
        assert wait_for_port(port), f"storescp did not open port {port}"
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def dcmtk_tls_storescp(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, Path]]:
    """DCMTK's storescp on TLS, requiring a client certificate signed by the test CA."""
    out = tmp_path / "received"
    with _storescp(out, "+tls", str(pki.server_key), str(pki.server_cert), "+cf", str(pki.ca)) as port:
        yield port, out


def test_node_delivers_over_tls_and_never_falls_back_to_plain(
    tmp_path: Path, pki: Pki, rg1_uncr: Path, dcmtk_tls_storescp: tuple[int, Path]
) -> None:
    port, received = dcmtk_tls_storescp
    good = {
        "type": "dicom",
        "ae_title": "TLSPACS",
        "host": LOCALHOST,
        "port": port,
        "tls": True,
        "ca_certificates": str(pki.ca),
        "certificate": str(pki.client_cert),
        "private_key": str(pki.client_key),
        "timeout": 10,
    }
    untrusted = {**good, "ca_certificates": str(pki.other_ca)}  # the PACS certificate does not verify
    plain_dir = tmp_path / "plain-received"
    with _storescp(plain_dir) as plain_port:
        # a peer that speaks only plain DICOM: a TLS destination must fail, never send in the clear
        plain = {**good, "port": plain_port}
        node = NodeProcess(
            tmp_path / "node",
            destinations={"secure": good, "untrusted": untrusted, "plain": plain},
            delivery={"max_attempts": 1, "backoff_initial": 0.1, "backoff_max": 0.2},
        ).start()
        echoed, refused = _deliver_and_echo(node, rg1_uncr)

    modalities = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).Modality) for p in received.iterdir())
    assert "SR" in modalities, node.log()
    assert len(modalities) == len(_last_errors(node, "secure")), modalities  # one copy of each result
    errors = _last_errors(node, "untrusted")
    assert errors and all("certificate verify failed" in e for e in errors), errors
    assert _last_errors(node, "plain") and node.deliveries(DeliveryState.DEAD) == 2 * len(errors)
    assert not any(plain_dir.iterdir()), "a TLS destination sent in plain TCP"
    assert echoed.returncode == 0 and "over TLS: status 0x0000" in echoed.stdout, echoed.stdout + echoed.stderr
    assert refused.returncode == 1 and "certificate verify failed" in refused.stdout, refused.stdout


def _deliver_and_echo(node: NodeProcess, image: Path) -> tuple[subprocess.CompletedProcess[str], ...]:
    try:
        assert storescu([image], LOCALHOST, node.port, "AINODE").returncode == 0
        node.wait_jobs(1)
        _wait(
            lambda: node.deliveries(DeliveryState.PENDING) + node.deliveries(DeliveryState.SENDING) == 0,
            60,
            "finished deliveries",
            node,
        )
        return node.cli("echo", "secure"), node.cli("echo", "untrusted")
    finally:
        node.stop()


# -- DICOMweb over HTTPS with Basic authentication --------------------------------------------------


class _HttpsFront:
    """A TLS-terminating reverse proxy in front of Orthanc's HTTP port (as nginx would be).

    Orthanc 1.10.1 as packaged by Debian has ``SslEnabled``, but its embedded
    CivetWeb server crashes (SIGSEGV) on the first HTTPS request with
    OpenSSL 3; a front end is also how Orthanc is usually exposed. It passes
    every request through unchanged, ``Authorization`` included: Orthanc
    itself checks the password.
    """

    def __init__(self, upstream_port: int, certificate: Path, key: Path) -> None:
        upstream = upstream_port

        class Forward(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn = http.client.HTTPConnection(LOCALHOST, upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                finally:
                    conn.close()
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "connection", "transfer-encoding", "keep-alive"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
                pass

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate, key)
        self._server = ThreadingHTTPServer((LOCALHOST, 0), Forward)
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://{LOCALHOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def test_stow_rs_over_https_with_basic_auth_keeps_the_password_out_of_logs_and_output(
    tmp_path: Path, pki: Pki, rg1_uncr: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password, wrong = "s3cret-Pa55-tls-test", "wrong-Pa55-tls-test"
    # AINODE_-prefixed like config/node.yaml's example: a secret, not a setting override
    monkeypatch.setenv("AINODE_TEST_STOW_PASSWORD", password)
    # requests would let this override a configured ca_certificates; the node must not
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki.other_ca))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(pki.other_ca))
    secret_file = tmp_path / "wrong-password"
    secret_file.write_text(wrong + "\n")
    orthanc = OrthancServer(tmp_path / "orthanc", http_auth=("ainode", password)).start()
    front = _HttpsFront(orthanc.http_port, pki.server_cert, pki.server_key)
    try:
        web = {
            "type": "dicomweb",
            "url": f"{front.url}/dicom-web",
            "auth": "basic",
            "username": "ainode",
            "password_env": "AINODE_TEST_STOW_PASSWORD",
            "ca_certificates": str(pki.ca),
            "timeout": 10,
        }
        node = NodeProcess(
            tmp_path / "node",
            destinations={
                "archive": web,
                "wrong-password": {**web, "password_env": None, "password_file": str(secret_file)},
                "system-cas": {**web, "ca_certificates": None},  # the default trust (here: the other CA)
            },
            delivery={"max_attempts": 1, "backoff_initial": 0.1, "backoff_max": 0.2},
        ).start()
        try:
            assert storescu([rg1_uncr], LOCALHOST, node.port, "AINODE").returncode == 0
            study = str(pydicom.dcmread(rg1_uncr, stop_before_pixels=True).StudyInstanceUID)
            stored = orthanc.wait_for_instances(study_uid=study, modality="SR", timeout=60)
            _wait(
                lambda: node.deliveries(DeliveryState.PENDING) + node.deliveries(DeliveryState.SENDING) == 0,
                60,
                "finished deliveries",
                node,
            )
            outputs = [node.cli(*args) for args in (("deliveries",), ("audit",), ("jobs",), ("echo", "archive"))]
        finally:
            node.stop()
    finally:
        front.close()
        orthanc.stop()

    assert len(stored) == 1  # the SR came through the archive destination only
    refused = _last_errors(node, "wrong-password")
    assert refused and all("HTTP 401" in e for e in refused), refused
    untrusted = _last_errors(node, "system-cas")
    assert untrusted and all("certificate verify failed" in e for e in untrusted), untrusted
    assert node.deliveries(DeliveryState.DEAD) == len(refused) + len(untrusted)
    everything = node.log_path.read_text() + "".join(o.stdout + o.stderr for o in outputs)
    everything += "".join(e for d in ("archive", "wrong-password", "system-cas") for e in _last_errors(node, d))
    assert "HTTP 401" in everything  # the refusal is reported ...
    for secret in (password, wrong):
        assert secret not in everything  # ... but no password, anywhere

    senders = build_senders(Settings(destinations={"archive": web}, default_destinations=[]))
    assert password not in repr(senders) and "archive" in repr(senders)


# -- verify_hostname, and secrets kept in AINODE_* variables ---------------------------------------


def test_verify_hostname_checks_the_subject_alt_name_and_false_still_checks_the_chain(tmp_path: Path, pki: Pki) -> None:
    """The server certificate names IP 127.0.0.1 only: 'localhost' does not match it."""
    from dimse.scp import AllowedPeer, StorageSCP
    from node.destinations import DicomDestination

    received: list[str] = []

    def sink(request: object) -> int:
        received.append(str(getattr(request, "sop_instance_uid", "")))
        return 0

    scp = StorageSCP(
        ae_title="TLSPACS",
        port=0,
        host=LOCALHOST,
        sink=sink,  # type: ignore[arg-type]
        allowed_peers=[AllowedPeer("AINODE")],
        ssl_context=tls.server_context(
            TlsSettings(enabled=True, certificate=pki.server_cert, private_key=pki.server_key)
        ),
    )
    scp.start()
    image = Path(get_testdata_file("SC_rgb.dcm"))
    try:

        def send(host: str, verify_hostname: bool, ca: Path) -> str:
            context = tls.client_context("destinations.pacs", ca_certificates=ca, verify_hostname=verify_hostname)
            return (
                DicomDestination(
                    "pacs",
                    ae_title="TLSPACS",
                    host=host,
                    port=scp.port,
                    calling_ae="AINODE",
                    timeout=5,
                    ssl_context=context,
                )
                .send([image])
                .message
            )

        mismatch = send("localhost", True, pki.ca)
        assert "stored" not in mismatch and "Hostname mismatch" in mismatch, mismatch
        assert "stored 1 of 1" in send("localhost", False, pki.ca)
        assert "stored 1 of 1" in send(LOCALHOST, True, pki.ca)
        untrusted = send("localhost", False, pki.other_ca)  # no hostname check, but the chain still fails
        assert "certificate verify failed" in untrusted, untrusted
    finally:
        scp.stop(timeout=5)
    assert len(received) == 2


def test_a_secret_in_an_ainode_variable_is_not_a_setting_and_is_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        "destinations: {web: {type: dicomweb, url: 'https://pacs.invalid/dicom-web', auth: basic,\n"
        "  username: ainode, password_env: AINODE_WEB_PASSWORD}}\ndefault_destinations: [web]\n"
    )
    environ = {"AINODE_WEB_PASSWORD": "pa55-in-env", "AINODE_UNKNOWN_TOKEN": "t0ken-in-env"}
    with pytest.raises(ConfigError) as failed:  # a misspelt variable is an unknown key, its value not shown
        load_settings(config, environ=environ)
    assert "unknown_token" in str(failed.value) and "t0ken-in-env" not in str(failed.value)

    settings = load_settings(config, environ={"AINODE_WEB_PASSWORD": "pa55-in-env"})
    monkeypatch.setenv("AINODE_WEB_PASSWORD", "pa55-in-env")
    senders = build_senders(settings)
    assert "pa55-in-env" not in repr(settings) + repr(senders)
