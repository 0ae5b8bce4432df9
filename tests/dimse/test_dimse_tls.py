"""TLS (PS3.15 B.1 "Basic TLS Secure Transport Connection Profile") on loopback.

A throw-away self-signed certificate for 127.0.0.1 is made with the openssl CLI.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from dimse_helpers import LOCALHOST, NODE_AE, PACS_AE, DirectorySink, pydicom_file
from pydicom import dcmread

from core import status
from dimse import AssociationFailed, echo, store_files


def test_echo_and_store_over_tls(start_scp, tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))  # verifies 127.0.0.1 in the SAN
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink, ssl_context=server_context)

    assert (
        echo(host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE, ssl_context=client_context)
        == status.SUCCESS
    )
    (outcome,) = store_files(
        [pydicom_file("CT_small.dcm")],
        host=LOCALHOST,
        port=scp.port,
        called_ae=NODE_AE,
        calling_ae=PACS_AE,
        ssl_context=client_context,
    )
    assert outcome.succeeded
    assert sink.requests[0].sop_instance_uid == dcmread(pydicom_file("CT_small.dcm")).SOPInstanceUID

    # a client that does not trust the certificate gets no association
    untrusting = ssl.create_default_context()
    with pytest.raises(AssociationFailed):
        echo(host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE, ssl_context=untrusting, timeout=5)
    # and the server keeps serving
    assert (
        echo(host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE, ssl_context=client_context)
        == status.SUCCESS
    )


def test_stop_aborts_an_idle_tls_association(start_scp, tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    """stop() ends an open TLS association even though its thread is blocked reading."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from dimse import AssociationEvent

    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    events: list[AssociationEvent] = []
    scp = start_scp(DirectorySink(tmp_path), ssl_context=server_context, events=events)
    ae = AE(ae_title=PACS_AE)
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        LOCALHOST, scp.port, ae_title=NODE_AE, tls_args=(ssl.create_default_context(cafile=str(cert)), LOCALHOST)
    )
    assert assoc.is_established

    scp.stop(timeout=0.2)
    assoc.join(5)  # the requestor thread ends once it saw the abort

    assert [e.kind for e in events] == ["accepted", "aborted"]
    assert assoc.is_aborted
