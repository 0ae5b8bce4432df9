"""Fixtures for DIMSE tests: our SCP on a free loopback port, DCMTK storescp as a peer."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from dimse_helpers import LOCALHOST, NODE_AE, PACS_AE, running_storescp

from dimse import AllowedPeer, AssociationEvent, StorageSCP, StoreRequest


@pytest.fixture
def start_scp() -> Iterator[Callable[..., StorageSCP]]:
    """Start a :class:`StorageSCP` on a free loopback port; all are stopped at teardown."""
    started: list[StorageSCP] = []

    def start(
        sink: Callable[[StoreRequest], int],
        allowed_peers: Sequence[AllowedPeer] = (AllowedPeer(PACS_AE),),
        events: list[AssociationEvent] | None = None,
        **kwargs: Any,
    ) -> StorageSCP:
        scp = StorageSCP(
            ae_title=NODE_AE,
            port=0,
            host=LOCALHOST,
            sink=sink,
            allowed_peers=allowed_peers,
            on_association=events.append if events is not None else None,
            **kwargs,
        )
        scp.start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop(timeout=5)


@pytest.fixture
def dcmtk_storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``storescp`` with its default syntaxes (uncompressed only): yields (port, directory)."""
    with running_storescp(tmp_path / "storescp") as port:
        yield port, tmp_path / "storescp"


@pytest.fixture
def dcmtk_storescp_implicit_only(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``storescp +xi``: accepts Implicit VR Little Endian only."""
    with running_storescp(tmp_path / "storescp", "+xi") as port:
        yield port, tmp_path / "storescp"


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A throw-away self-signed certificate and key for 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is not on PATH"
    cert, key = tmp_path / "node.crt", tmp_path / "node.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ainode-test",
            "-addext",
            f"subjectAltName=IP:{LOCALHOST}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key
