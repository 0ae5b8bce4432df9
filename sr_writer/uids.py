"""New UIDs for the objects we write, under the organisation's configured root.

PS3.5 section 9.1: a UID is at most 64 characters, digits and dots, and no
component has a leading zero. The root is limited to 53 characters: pydicom's
``generate_uid`` takes a prefix (``root + "."``) of at most 54, which leaves at
least 10 random digits in a 64-character UID.
"""

from __future__ import annotations

import re

from pydicom.uid import generate_uid

from sr_writer.errors import ParameterError

__all__ = ["MAX_ROOT_LENGTH", "is_under_root", "new_uid", "validate_uid_root"]

MAX_ROOT_LENGTH = 53
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def validate_uid_root(root: str) -> str:
    """Check a UID root and return it unchanged.

    Parameters
    ----------
    root : str
        E.g. ``"1.2.826.0.1.3680043.10.1234"``; without a trailing dot.

    Raises
    ------
    sr_writer.errors.ParameterError
        (a ValueError) When the root is empty, longer than 53 characters, or not digits and
        dots in PS3.5 section 9.1 form (no empty component, no leading zero).
    """
    if not isinstance(root, str) or not root:
        raise ParameterError("UID root is empty; configure an organisation root such as '1.2.826.0.1.3680043.10.1234'")
    if len(root) > MAX_ROOT_LENGTH:
        raise ParameterError(
            f"UID root {root!r} is {len(root)} characters; at most {MAX_ROOT_LENGTH} so generated UIDs stay within 64"
        )
    if not _UID_RE.match(root):
        raise ParameterError(
            f"UID root {root!r} is not a valid UID prefix (PS3.5 9.1): only digits and dots, "
            "no empty component, no leading zero, no trailing dot"
        )
    return root


def new_uid(root: str) -> str:
    """A new random UID ``root.<digits>`` of at most 64 characters.

    Parameters
    ----------
    root : str
        The configured UID root, checked with :func:`validate_uid_root`.
    """
    return str(generate_uid(prefix=validate_uid_root(root) + "."))


def is_under_root(uid: str, root: str) -> bool:
    """True when ``uid`` is a valid UID that starts with ``root + "."``."""
    return len(uid) <= 64 and bool(_UID_RE.match(uid)) and uid.startswith(root + ".")
