"""One reading of pydantic's validation errors, for the messages of every configuration file.

Settings (``node.yaml``), routing rules (``routing.yaml``) and model manifests
(``model.json``) each word their messages for their own reader, but take the
problems out of a :class:`pydantic.ValidationError` the same way:
:func:`problems` gives one :class:`Problem` per error, with the location as
a dotted key, the message without pydantic's ``"Value error, "`` prefix, and
the offending value only where it is safe to show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

__all__ = ["Problem", "problems"]

#: Error types whose input is never shown: an unknown key's value may be a secret
#: (``AINODE_PASSWORD=...`` read as a key), and a missing one has none.
_HIDDEN_INPUT = frozenset({"missing", "extra_forbidden"})


@dataclass(frozen=True)
class Problem:
    """One validation error.

    Attributes
    ----------
    loc : tuple
        pydantic's location: keys (str) and list indexes (int).
    key : str
        ``loc`` joined with dots (empty at the top level).
    message : str
        What is wrong, without pydantic's ``"Value error, "`` prefix.
    type : str
        pydantic's error type (``"missing"``, ``"extra_forbidden"``, ...).
    input : Any
        The offending value.
    input_shown : bool
        Whether ``input`` may be shown to the reader (not for unknown or
        missing keys, nor for a whole mapping).
    context_error : BaseException or None
        The exception a validator raised, when one did.
    """

    loc: tuple[int | str, ...]
    key: str
    message: str
    type: str
    input: Any
    input_shown: bool
    context_error: BaseException | None


def problems(exc: ValidationError) -> list[Problem]:
    """The problems of a validation error, in pydantic's order."""
    found = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        original = (err.get("ctx") or {}).get("error")
        found.append(
            Problem(
                loc=loc,
                key=".".join(str(part) for part in loc),
                message=str(err["msg"]).removeprefix("Value error, "),
                type=str(err["type"]),
                input=err.get("input"),
                input_shown=err["type"] not in _HIDDEN_INPUT and not isinstance(err.get("input"), dict),
                context_error=original if isinstance(original, BaseException) else None,
            )
        )
    return found
