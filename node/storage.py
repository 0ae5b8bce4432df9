"""Where the spool and the outbox live: the one place that builds them from settings.

The roles (``ainode serve``, ``ainode worker``) get their spool and outbox here, so the
storage backend (``storage:`` in node.yaml) is chosen in one place.
"""

from __future__ import annotations

from node.settings import Settings
from node.spool import Outbox, Spool


def open_spool(settings: Settings) -> Spool:
    """The spool of received instances for ``settings``."""
    return Spool(settings.spool_dir, settings.tmp_dir)


def open_outbox(settings: Settings) -> Outbox:
    """The outbox of result objects for ``settings``."""
    return Outbox(settings.outbox_dir, settings.tmp_dir)
