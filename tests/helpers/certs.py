"""A self-signed certificate for a test server on 127.0.0.1, made with OpenSSL."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .externals import require_integration

__all__ = ["self_signed_certificate"]


def self_signed_certificate(directory: Path, name: str = "http") -> tuple[Path, Path]:
    """``(certificate, key)``: PEM files of a one-day RSA certificate for ``IP:127.0.0.1``, written in ``directory``."""
    require_integration("openssl")
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl is not on PATH (apt-get install openssl)"
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
