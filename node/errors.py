"""The node's exception tree.

::

    NodeError                  base of every error the node raises on purpose
    ├── ConfigError            configuration file or environment is invalid
    ├── ModelUnavailable       a model cannot be verified or loaded (stops the node or its pipeline)
    ├── InputError             a DICOM input cannot be analysed (recorded on its job)
    └── StorageError           the spool, outbox or database cannot be written
        └── StorageFull        out of disk space (C-STORE answers 0xA700)

Lower layers' errors are mapped to these where the node catches them, with
``raise ... from exc``: ``models.errors.ModelError`` (hence ``WeightsMissing``,
``ChecksumMismatch``) to :class:`ModelUnavailable`, ``core.errors.UnreadableDicom``
and ``models.errors.PreprocessError`` to :class:`InputError`, ``OSError`` to
:class:`StorageError`. A result that cannot be delivered is not an exception: a
destination reports it as a ``node.destinations.DeliveryAttempt``. The ``ainode``
command prints any of them as one line (``ainode: error: ...``) and exits 2.
"""

from __future__ import annotations

__all__ = [
    "NodeError",
    "ConfigError",
    "ModelUnavailable",
    "InputError",
    "StorageError",
    "StorageFull",
]


class NodeError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(NodeError):
    """The configuration is invalid; the message names the key and an example."""


class ModelUnavailable(NodeError):
    """A model cannot be used: invalid manifest, weights changed since their manifest, or unloadable weights."""


class InputError(NodeError):
    """A DICOM input cannot be analysed; the reason is recorded on its job."""


class StorageError(NodeError):
    """The spool, outbox or database could not be written."""


class StorageFull(StorageError):
    """No space left on the device holding the data directory."""
