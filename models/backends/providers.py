"""Which ONNX Runtime execution providers this process's sessions use (issue 17: CPU and GPU workers).

The configuration lists providers per device (``devices`` in ``node.yaml``, e.g. ``gpu:
[CUDAExecutionProvider, CPUExecutionProvider]``); a process serving a device calls
:func:`set_onnx_providers` with its list once, before it loads models: ``ainode worker --device gpu``
in each worker process after the fork, ``ainode serve`` for its local pool. Every
:class:`~models.backends.onnx_backend.OnnxModel` created afterwards uses the chosen list.

A name ONNX Runtime does not know is a configuration error (a typo must not silently fall back to
the CPU). A known provider this onnxruntime build does not have (CUDA with the CPU-only wheel) is
dropped with one warning naming it; the others keep their order, and when none is left the CPU
provider serves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from models.errors import ModelError

__all__ = ["CPU_PROVIDER", "check_provider_names", "choose_providers", "onnx_providers", "set_onnx_providers"]

log = logging.getLogger("ainode.models")

CPU_PROVIDER = "CPUExecutionProvider"

_lock = threading.Lock()
_chosen: list[str] = [CPU_PROVIDER]


def check_provider_names(names: Sequence[str]) -> list[str]:
    """Return ``names`` as a list when each is an execution provider ONNX Runtime knows, once.

    Raises
    ------
    ModelError
        When the list is empty, a name repeats, or a name is not one of
        ``onnxruntime.get_all_providers()`` (the message lists them).
    """
    import onnxruntime as ort

    names = list(names)
    if not names:
        raise ModelError("no ONNX Runtime execution provider listed; list at least CPUExecutionProvider")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ModelError(f"ONNX Runtime execution provider(s) listed twice: {', '.join(repeated)}")
    known = ort.get_all_providers()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ModelError(
            f"unknown ONNX Runtime execution provider(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}"
        )
    return names


def choose_providers(requested: Sequence[str], available: Sequence[str] | None = None) -> list[str]:
    """The providers of ``requested`` this build has (``available``, default this onnxruntime's), in order.

    Those missing are dropped with one warning naming them; when none is left, ``[CPUExecutionProvider]``.

    Raises
    ------
    ModelError
        From :func:`check_provider_names`.
    """
    import onnxruntime as ort

    names = check_provider_names(requested)
    have = list(ort.get_available_providers() if available is None else available)
    kept = [n for n in names if n in have]
    missing = [n for n in names if n not in have]
    if not kept:
        kept = [CPU_PROVIDER]
    if missing:
        log.warning(
            "ONNX Runtime execution provider(s) %s not available in this onnxruntime build (it has %s); using %s",
            ", ".join(missing),
            ", ".join(have) or "none",
            ", ".join(kept),
        )
    return kept


def set_onnx_providers(requested: Sequence[str]) -> list[str]:
    """Choose (:func:`choose_providers`) the providers of the sessions this process creates from now on.

    Returns the chosen list. Sessions created before keep theirs: call this before loading models.
    """
    global _chosen
    chosen = choose_providers(requested)
    with _lock:
        _chosen = chosen
    return list(chosen)


def onnx_providers() -> list[str]:
    """The providers new ONNX Runtime sessions use: ``[CPUExecutionProvider]`` until :func:`set_onnx_providers`."""
    with _lock:
        return list(_chosen)
