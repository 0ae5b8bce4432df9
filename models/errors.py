"""Errors raised by ``models/``: one tree with one base, :class:`ModelError`.

::

    ModelError                  what models/ raises; the node maps it at its edge
    ├── WeightsMissing          a model's weights file is absent
    ├── ChecksumMismatch        the weights file changed since its manifest was written
    └── PreprocessError         a DICOM image cannot be turned into model input (also a ValueError)
        └── SeriesError         a CT series cannot be ordered into one volume

Every other ``ModelError`` is a manifest, weights or backend problem (an invalid
``model.json``, weights that cannot be loaded, an extra that is not installed).
:class:`PreprocessError` is also a :class:`ValueError`, as it was before the tree had
one base, so code that catches bad input as ``ValueError`` still does.

``models/`` must not import ``node``; the node maps these to ``node.errors``
(``ModelError`` → ``node.errors.ModelError``, ``WeightsMissing`` →
``node.errors.WeightsMissing``, ``PreprocessError``, hence ``SeriesError``, → ``node.errors.InputError``)
at its edge with ``raise ... from exc``. A file that cannot be read as DICOM reaches
``models/`` as :class:`core.errors.UnreadableDicom` and leaves it as the error of the
step that read it (``SeriesError`` for a CT slice).
"""

from __future__ import annotations

__all__ = ["ModelError", "WeightsMissing", "ChecksumMismatch", "PreprocessError", "SeriesError"]


class ModelError(Exception):
    """Base of the errors of ``models/``; raised itself when a model cannot be described or loaded."""


class WeightsMissing(ModelError):
    """A model's weights file is absent; the message says how to provide it."""


class ChecksumMismatch(ModelError):
    """A weights file's SHA-256 differs from the one in its manifest."""


class PreprocessError(ModelError, ValueError):
    """A dataset's pixels cannot be turned into model input (missing, short, odd)."""


class SeriesError(PreprocessError):
    """A series' headers do not describe one orderable volume (PS3.3 C.7.6.2).

    Raised for: no slice left after localizers and duplicates are dropped, a missing
    Image Position/Orientation (Patient), a degenerate orientation, a non-axial
    reformat, mixed geometry, a slice file that cannot be read, or pixels that
    disagree with the plan.
    """
