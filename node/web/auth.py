"""Authentication of the node's HTTP server: API tokens and users with hashed passwords.

Two kinds of credentials, both from the configuration (``node.yaml``):

``http_tokens: [{name, token_env | token_file}]``
    Sent as ``Authorization: Bearer <token>``. The token itself is never in the
    file: an environment variable or a file holds it. Compared in constant time
    (:func:`hmac.compare_digest`) with every configured token.
``http_users: [{name, password_hash}]``
    Sent as HTTP Basic (RFC 7617). The file holds the scrypt hash made by
    ``ainode hash-password`` (:func:`hash_password`), never the password.

A request with neither, or with a wrong one, is answered ``401`` with a
``WWW-Authenticate`` challenge naming both schemes. The name of the token or
user is what the node records as the caller (audit rows, ``calling_ae`` of
instances received by STOW-RS), so names follow the AE title's limit of 16
characters.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["CHALLENGE", "Authenticator", "hash_password", "verify_password"]

#: The ``WWW-Authenticate`` value of a 401 (RFC 7235 4.1: one header may carry several challenges).
CHALLENGE = 'Bearer realm="ainode", Basic realm="ainode", charset="UTF-8"'

# scrypt with N=2**14, r=8, p=1: 16 MiB and tens of milliseconds per check (RFC 7914; OWASP's minimum
# is N=2**17 with p=1 for interactive logins -- a caller here is a script or a RIS, checked per request,
# so the cost is kept per request instead of per session).
_N, _R, _P = 2**14, 8, 1
_PREFIX = "scrypt"
_HASH = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * n + 2**20, dklen=32)


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (base64) of ``password``, for ``http_users[].password_hash``."""
    salt = os.urandom(16)
    digest = _scrypt(password, salt, _N, _R, _P)
    return "$".join(
        [_PREFIX, str(_N), str(_R), str(_P), base64.b64encode(salt).decode(), base64.b64encode(digest).decode()]
    )


def check_hash_format(value: str) -> str:
    """``value`` if it is a hash made by :func:`hash_password`; else ``ValueError`` saying how to make one."""
    match = _HASH.match(value)
    if match is None:
        raise ValueError("not a password hash: make one with 'ainode hash-password' (scrypt$N$r$p$salt$hash)")
    n, r, p = (int(g) for g in match.groups()[:3])
    if n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16 or n > 2**20:
        raise ValueError("scrypt parameters out of range (N a power of two up to 2**20, r 1-64, p 1-16)")
    return value


def verify_password(password: str, password_hash: str) -> bool:
    """Whether ``password`` matches a hash made by :func:`hash_password` (constant-time comparison)."""
    match = _HASH.match(password_hash)
    if match is None:
        return False
    n, r, p = (int(g) for g in match.groups()[:3])
    salt, expected = base64.b64decode(match.group(4)), base64.b64decode(match.group(5))
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), expected)


@functools.cache
def _dummy_hash() -> str:
    """Checked when the user is unknown, so that a wrong name takes as long as a wrong password."""
    return hash_password("no such user")


@dataclass(frozen=True)
class Outcome:
    """Who a request authenticated as (``name``), or why it did not (``refusal``)."""

    name: str | None
    refusal: str | None = None
    #: The name the caller claimed (a Basic user name), for the audit of a refusal.
    claimed: str | None = None


class Authenticator:
    """Checks an ``Authorization`` header against the configured tokens and users.

    Parameters
    ----------
    tokens : sequence of (name, token)
        The API tokens, read from their environment variables or files.
    users : mapping of name to password hash
    """

    def __init__(self, tokens: Sequence[tuple[str, str]], users: Mapping[str, str]) -> None:
        self._tokens = [(name, token.encode()) for name, token in tokens]
        self._users = dict(users)

    @property
    def configured(self) -> bool:
        """Whether anyone can log in at all (with nothing configured, every request is refused)."""
        return bool(self._tokens or self._users)

    def check(self, authorization: str | None) -> Outcome:
        """The caller of a request with this ``Authorization`` header (blocking: scrypt for Basic)."""
        if not authorization:
            return Outcome(None, "no credentials (Authorization: Bearer <token>, or Basic)")
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer":
            offered = value.encode()
            found = None
            for name, token in self._tokens:  # every token is compared: the time does not tell which matched
                if hmac.compare_digest(offered, token) and found is None:
                    found = name
            return Outcome(found) if found else Outcome(None, "unknown token")
        if scheme.lower() == "basic":
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return Outcome(None, "malformed Basic credentials")
            if not sep:
                return Outcome(None, "malformed Basic credentials")
            stored = self._users.get(user)
            if verify_password(password, stored or _dummy_hash()) and stored is not None:
                return Outcome(user)
            return Outcome(None, "unknown user or wrong password", claimed=user)
        return Outcome(None, f"unsupported authorization scheme {scheme[:20]!r} (use Bearer or Basic)")
