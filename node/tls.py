"""TLS contexts for DICOM (PS3.15 B.1 and BCP 195) and HTTPS, built and checked in one place.

PS3.15 Annex B.1 ("Basic TLS Secure Transport Connection Profile") and the
BCP 195 profiles (B.9, B.10) ask for TLS 1.2 or later, certificates in X.509,
and the ciphers of RFC 7525/9325. Python's default contexts
(``ssl.create_default_context``) offer only forward-secret AEAD suites for
TLS 1.2; the minimum version is pinned to TLS 1.2 here, so an older OpenSSL
configuration cannot lower it. Where ``ca_certificates`` is configured, only
those CAs are trusted (not the system's public CAs as well): on the SCP for
client certificates, on the SCU for the PACS's certificate.

Every file is opened at start-up, not at the first association: a missing or
unreadable file, a file that holds no certificate, or a private key that does
not belong to the certificate is a :class:`~node.errors.ConfigError` that
names the configuration key and the file.

Functions
---------
server_context(tls)            the node's TLS port (StorageSCP)
client_context(key, ...)       a TLS destination or ``ainode echo`` (StoreSCU)
destination_context(name, d)   the context of a ``type: dicom`` destination, or None
https_verify(name, d)          the ``verify`` argument of requests for a DICOMweb destination
handshake_error(host, port, c) why a TLS handshake fails, for a delivery's message
probe_context(tls)             the readiness probe of the node's own TLS port
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from node.errors import ConfigError

if TYPE_CHECKING:
    from node.settings import DicomDestinationSettings, HttpServerSettings, TlsSettings

__all__ = [
    "client_context",
    "destination_context",
    "handshake_error",
    "https_verify",
    "probe_context",
    "server_context",
]

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _readable(key: str, path: Path) -> str:
    """The path as a string, or a ConfigError naming the key when the file cannot be read."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 16)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}") from exc
    if b"-----BEGIN" not in head:
        raise ConfigError(f"{key}: {path} is not a PEM file (no '-----BEGIN' line)")
    return str(path)


def _load_chain(context: ssl.SSLContext, key_prefix: str, certificate: Path, private_key: Path) -> None:
    cert = _readable(f"{key_prefix}certificate", certificate)
    key = _readable(f"{key_prefix}private_key", private_key)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise ConfigError(
                f"{key_prefix}private_key: {private_key} does not belong to {key_prefix}certificate {certificate}"
            ) from exc
        raise ConfigError(
            f"{key_prefix}certificate/{key_prefix}private_key: cannot load {certificate} with {private_key} "
            f"(a PEM certificate and its unencrypted PEM key are expected): {exc.reason or exc}"
        ) from exc


def _load_cas(context: ssl.SSLContext, key: str, path: Path) -> None:
    cafile = _readable(key, path)
    try:
        context.load_verify_locations(cafile=cafile)
    except ssl.SSLError as exc:
        raise ConfigError(f"{key}: {path} holds no usable CA certificate: {exc.reason or exc}") from exc


def server_context(tls: TlsSettings, key_prefix: str = "tls.") -> ssl.SSLContext:
    """The SSL context of the node's TLS Storage SCP (PS3.15 B.1, B.9), and of its HTTPS server.

    Parameters
    ----------
    tls : TlsSettings
        ``certificate`` and ``private_key`` (PEM files), ``ca_certificates``
        (PEM bundle of the CAs whose client certificates are accepted) and
        ``require_client_certificate``.
    key_prefix : str
        How error messages name the settings (``tls.``, or ``http_tls.`` for HTTPS).

    Raises
    ------
    ConfigError
        Naming the ``tls.*`` key and the file that is missing, unreadable,
        not PEM, or a key that does not match the certificate.
    """
    if tls.certificate is None or tls.private_key is None:
        raise ConfigError("tls: enabled TLS needs 'certificate' and 'private_key' (PEM file paths)")
    # Built bare, not with create_default_context: that would also trust the system's public CAs
    # to sign client certificates. The ciphers and options are the same.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= (
        ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_DH_USE | ssl.OP_SINGLE_ECDH_USE
    )
    context.minimum_version = MINIMUM_VERSION
    _load_chain(context, key_prefix, tls.certificate, tls.private_key)
    if tls.ca_certificates is not None:
        _load_cas(context, "tls.ca_certificates", tls.ca_certificates)
    # With CAs but no requirement a client may still present a certificate, which is then verified.
    if tls.require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates is not None:
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(
    key: str,
    *,
    ca_certificates: Path | None = None,
    certificate: Path | None = None,
    private_key: Path | None = None,
    verify_hostname: bool = True,
) -> ssl.SSLContext:
    """An SSL context that verifies a DICOM server (PS3.15 B.1), optionally with a client certificate.

    Parameters
    ----------
    key : str
        The configuration key the files belong to (e.g. ``destinations.pacs``), for messages.
    ca_certificates : Path, optional
        PEM bundle of the CAs trusted (only these); the system's CAs when omitted.
    certificate, private_key : Path, optional
        The node's client certificate and key, when the server asks for one.
    verify_hostname : bool, optional
        Check that the certificate names the host (a PACS addressed by IP
        needs that IP in the certificate's subjectAltName). The certificate
        chain is verified either way.

    Raises
    ------
    ConfigError
        Naming the key and the file that cannot be used.
    """
    if ca_certificates is None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        # Only the configured CAs: a PACS with a private CA must not also be trusted to public CAs.
        cafile = _readable(f"{key}.ca_certificates", ca_certificates)
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"{key}.ca_certificates: {ca_certificates} holds no usable CA certificate: {exc.reason or exc}"
            ) from exc
    context.minimum_version = MINIMUM_VERSION
    if certificate is not None and private_key is not None:
        _load_chain(context, f"{key}.", certificate, private_key)
    context.check_hostname = verify_hostname
    return context


def destination_context(name: str, dest: DicomDestinationSettings) -> ssl.SSLContext | None:
    """The client context of a ``type: dicom`` destination with ``tls: true``; ``None`` for plain TCP."""
    if not dest.tls:
        return None
    return client_context(
        f"destinations.{name}",
        ca_certificates=dest.ca_certificates,
        certificate=dest.certificate,
        private_key=dest.private_key,
        verify_hostname=dest.verify_hostname,
    )


def https_verify(name: str, dest: HttpServerSettings, *, key: str | None = None) -> bool | str:
    """The ``verify`` argument of requests: ``False``, ``True`` (system CAs) or a checked CA bundle path.

    ``key`` names the settings in messages (default ``destinations.NAME``; ``sources.NAME``, ``orthanc_watch``).
    """
    if not dest.verify_tls:
        return False
    if dest.ca_certificates is None:
        return True
    # Loaded once here so that a bad bundle stops the node at start-up, not at the first delivery.
    _load_cas(ssl.create_default_context(), f"{key or 'destinations.' + name}.ca_certificates", dest.ca_certificates)
    return str(dest.ca_certificates)


def handshake_error(host: str, port: int, context: ssl.SSLContext, timeout: float = 10) -> str | None:
    """Try a TLS handshake alone; return OpenSSL's reason when it fails, ``None`` when it succeeds.

    The DICOM association layer reports only that no association came about;
    this names the cause (e.g. ``certificate verify failed: unable to get local
    issuer certificate``) for the delivery's message. A failed TCP connection
    returns ``None``: that is not a TLS problem.
    """
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    try:
        with context.wrap_socket(raw, server_hostname=host if context.check_hostname else None) as tls_sock:
            # TLS 1.3 servers refuse a client certificate only after the client's side of the handshake:
            # a short read shows the alert (a DICOM server otherwise waits silently for A-ASSOCIATE-RQ).
            tls_sock.settimeout(1.0)
            with contextlib.suppress(TimeoutError):
                tls_sock.recv(1)
        return None
    except ssl.SSLCertVerificationError as exc:
        return f"TLS handshake failed: {exc.verify_message or exc.reason} (check ca_certificates and verify_hostname)"
    except ssl.SSLError as exc:
        return f"TLS handshake failed: {exc.reason or exc}"
    except OSError as exc:
        return f"TLS handshake failed: {exc.strerror or exc}"
    finally:
        raw.close()


def probe_context(tls: TlsSettings) -> ssl.SSLContext:
    """A client context for the node's readiness probe of its own TLS port.

    The probe only needs the handshake to complete, so the server certificate
    is not verified; when client certificates are required it presents the
    node's own certificate (which must then be signed by one of
    ``tls.ca_certificates`` for the probe to pass).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = MINIMUM_VERSION
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls.require_client_certificate and tls.certificate is not None and tls.private_key is not None:
        _load_chain(context, "tls.", tls.certificate, tls.private_key)
    return context
