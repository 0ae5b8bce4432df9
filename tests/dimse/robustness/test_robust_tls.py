"""Robustness, the TLS port (PS3.15 B.1): the association request deadline covers the TLS handshake (issue 16: the
timers reset on every read, also during the handshake), and a peer that speaks plain DICOM to the TLS port is let go.

The module's node has a TLS port beside its plain one, with a self-signed certificate for 127.0.0.1; the good
peer's C-ECHO runs on the plain port.
"""

from __future__ import annotations

import contextlib
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from robust_harness import LIMITS, MARGIN, Case, Conn, RobustNode, good_rq, running_node, summary, trickle

from tests.helpers import free_port

pytestmark = pytest.mark.integration

DEADLINE = LIMITS["association_request_timeout"]


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 made by the openssl command."""
    cert, key = directory / "server.crt", directory / "server.key"
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is not on PATH"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_port(node: RobustNode) -> int:
    assert node.tls_port is not None
    return node.tls_port


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RobustNode]:
    """This module's node: the suite's limits, and a TLS port (overrides conftest's ``node``)."""
    workdir = tmp_path_factory.mktemp("robust-tls-node")
    cert, key = _self_signed(workdir)
    tls = {"enabled": True, "port": free_port(), "certificate": str(cert), "private_key": str(key)}
    with running_node(workdir, tls=tls) as started:
        yield started


def _client_hello() -> bytes:
    """The first flight of a TLS client (its ClientHello record), as a real client sends it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_side=False)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_slow_tls_handshake(case: Case, tls_port: int) -> None:
    """Issue 16, PS3.15 B.1 / PS3.8 9.1.5: three connections trickle a ClientHello at a byte per 0.2 s; the
    association request deadline, which includes the handshake, ends them; C-ECHO works meanwhile."""
    conns = [Conn(tls_port, "127.0.11.1") for _ in range(3)]
    case.conns.extend(conns)
    case.probe()
    answers = trickle(conns, _client_hello(), interval=0.2, duration=DEADLINE + 2 * MARGIN)
    case.probe()
    case.record(summary(answers))
    for a in answers:
        assert a.kind in ("closed", "reset") and a.after <= DEADLINE + MARGIN, summary(answers)


def test_silent_tls_connection(case: Case, tls_port: int) -> None:
    """PS3.15 B.1: a connection to the TLS port that never starts its handshake is closed by the deadline."""
    conn = Conn(tls_port, "127.0.11.2")
    case.conns.append(conn)
    case.probe()
    got = case.record(conn.end(DEADLINE + MARGIN))
    assert got.kind in ("closed", "reset"), got
    assert got.after <= DEADLINE + MARGIN


def test_handshake_then_slow_rq(case: Case, tls_port: int) -> None:
    """Issue 16: after a quick handshake, an A-ASSOCIATE-RQ trickled inside TLS at a byte per 0.2 s is ended by the
    same deadline."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = Conn(tls_port, "127.0.11.3")
    case.conns.append(conn)
    raw = conn.sock
    conn.sock = context.wrap_socket(raw)
    case.probe()
    answers = trickle([conn], good_rq(), interval=0.2, duration=DEADLINE + 2 * MARGIN)
    case.record(summary(answers))
    assert answers[0].kind in ("closed", "reset", "ABORT"), summary(answers)
    assert answers[0].after <= DEADLINE + MARGIN


def test_plain_dicom_to_tls_port(case: Case, tls_port: int) -> None:
    """PS3.15 B.1: an A-ASSOCIATE-RQ in clear on the TLS port fails the handshake; the node closes at once."""
    conn = Conn(tls_port, "127.0.11.4")
    case.conns.append(conn)
    conn.send(good_rq())
    case.probe()
    got = case.record(conn.end(DEADLINE + MARGIN))
    assert got.kind in ("closed", "reset"), got
    assert got.after < MARGIN


def test_tls_association_works(case: Case, tls_port: int) -> None:
    """The control case: a TLS client's association on the TLS port is accepted."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = Conn(tls_port, "127.0.11.5")
    case.conns.append(conn)
    conn.sock = context.wrap_socket(conn.sock)
    case.record(conn.associate())
    case.probe()
