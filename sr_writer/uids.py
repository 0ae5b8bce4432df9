"""New UIDs for the objects we write, under the organisation's configured root.

PS3.5 section 9.1: a UID is at most 64 characters, digits and dots, and no
component has a leading zero. The root is limited to 53 characters: pydicom's
``generate_uid`` takes a prefix (``root + "."``) of at most 54, which leaves at
least 10 random digits in a 64-character UID.

Inside :func:`deterministic_uids` (the node runs every job in one) the UIDs are not random:
each is derived from the scope's seed and a counter, so running the same job again (after a
crash, or a broker's redelivery) writes objects with the same UIDs, which a PACS takes as the
same objects rather than second copies. The scope is a :mod:`contextvars` variable: each thread
(each job of the local pool) has its own, and code that writes objects for a job in another
thread must run there through :func:`contextvars.copy_context` (the writers run in the job's
own thread, one after the other, so the counter's order is the program's).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from pydicom.uid import generate_uid

from sr_writer.errors import ParameterError

__all__ = ["MAX_ROOT_LENGTH", "deterministic_uids", "is_under_root", "new_uid", "validate_uid_root"]

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


@dataclass
class _Scope:
    seed: str
    counter: Iterator[int] = field(default_factory=lambda: itertools.count(1))


_scope: ContextVar[_Scope | None] = ContextVar("ainode_uid_scope", default=None)


@contextmanager
def deterministic_uids(*seed: str | int | None) -> Iterator[None]:
    """Within the block, :func:`new_uid` derives each UID from ``seed`` and a counter.

    Parameters
    ----------
    *seed : str, int or None
        What identifies the work, e.g. a job's id, series, generation, pipeline and analysis key.
        The same seed and the same sequence of calls give the same UIDs; any difference in the
        seed gives other UIDs. Scopes nest: the innermost one counts.
    """
    token = _scope.set(_Scope(json.dumps(["ainode result uids", *seed])))
    try:
        yield
    finally:
        _scope.reset(token)


def new_uid(root: str) -> str:
    """A new UID ``root.<digits>`` of at most 64 characters.

    Random, or inside :func:`deterministic_uids` the SHA-512 of the scope's seed and the call's
    number as a decimal integer, cut to fit (pydicom's ``generate_uid`` with entropy sources).

    Parameters
    ----------
    root : str
        The configured UID root, checked with :func:`validate_uid_root`.
    """
    prefix = validate_uid_root(root) + "."
    scope = _scope.get()
    if scope is None:
        return str(generate_uid(prefix=prefix))
    return str(generate_uid(prefix=prefix, entropy_srcs=[scope.seed, "#", str(next(scope.counter))]))


def is_under_root(uid: str, root: str) -> bool:
    """True when ``uid`` is a valid UID that starts with ``root + "."``."""
    return len(uid) <= 64 and bool(_UID_RE.match(uid)) and uid.startswith(root + ".")
