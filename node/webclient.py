"""HTTP sessions and DICOMweb clients for the servers the node talks to: STOW-RS destinations, DICOMweb
sources (``node.pull``) and an Orthanc's REST API (``node.watcher``).

One place builds them, so Basic (RFC 7617) and Bearer (RFC 6750) authentication and certificate
checking behave the same everywhere. Passwords and tokens are never put in a message, a log line or a
``repr``.
"""

from __future__ import annotations

from typing import Any, Literal

import requests
from dicomweb_client import DICOMwebClient

__all__ = ["ConfiguredSession", "dicomweb_client", "http_session"]

Auth = Literal["none", "basic", "bearer"]


class ConfiguredSession(requests.Session):
    """A session whose configured ``verify`` (a CA bundle, or False) wins over the environment.

    requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override
    ``Session.verify``, which would silently replace a server's configured
    ``ca_certificates`` with the system bundle. Proxies from the environment
    still apply.
    """

    def merge_environment_settings(
        self,
        url: str,
        proxies: dict[str, str] | None,
        stream: bool | None,
        verify: bool | str | None,
        cert: str | tuple[str, str] | None,
    ) -> dict[str, Any]:
        settings: dict[str, Any] = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


def http_session(
    what: str,
    *,
    auth: Auth = "none",
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    verify_tls: bool | str = True,
) -> ConfiguredSession:
    """A session sending Basic or Bearer authentication and checking certificates as configured.

    ``what`` names the server in error messages (e.g. ``"destination archive"``).

    Raises
    ------
    ValueError
        Credentials missing for ``auth``, or an unknown ``auth``.
    """
    if auth == "basic" and (username is None or password is None):
        raise ValueError(f"{what}: auth 'basic' needs a username and a password")
    if auth == "bearer" and not token:
        raise ValueError(f"{what}: auth 'bearer' needs a token")
    if auth not in ("none", "basic", "bearer"):
        raise ValueError(f"{what}: auth must be 'none', 'basic' or 'bearer', not {auth!r}")
    session = ConfiguredSession()
    session.verify = verify_tls
    if auth == "basic":
        session.auth = (username or "", password or "")
    elif auth == "bearer":
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def dicomweb_client(
    what: str,
    *,
    url: str,
    auth: Auth = "none",
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    timeout: float = 30,
    verify_tls: bool | str = True,
) -> DICOMwebClient:
    """A ``dicomweb-client`` for the DICOMweb root ``url`` on :func:`http_session`, with no retries of its own.

    The caller owns retries and back-off (the dispatcher for deliveries, the puller's caller for pulls).

    Raises
    ------
    ValueError
        As :func:`http_session`.
    """
    session = http_session(what, auth=auth, username=username, password=password, token=token, verify_tls=verify_tls)
    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)
    return client
