"""Small fakes that ship with the node, for tests of its callers (no network needed)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

from core.dicomfile import read_dataset
from node.destinations import DeliveryAttempt


class FakeDestination:
    """A destination that keeps what it receives; switch it ``down`` to make sends fail.

    ``received`` maps SOP Instance UID to how many times it was sent, so tests
    can check "delivered once" and "nothing dropped".
    """

    def __init__(self, down: bool = False, permanent: bool = False) -> None:
        self.down = down
        self.permanent = permanent
        self.received: dict[str, int] = {}
        self.attempts = 0
        self._lock = threading.Lock()

    def send(self, paths: Sequence[Path]) -> DeliveryAttempt:
        with self._lock:
            self.attempts += 1
            if self.down:
                return DeliveryAttempt(
                    ok=False, permanent=self.permanent, message="fake destination is down", statuses={}
                )
            statuses = {}
            for path in paths:
                uid = str(read_dataset(path, header_only=True).SOPInstanceUID)
                self.received[uid] = self.received.get(uid, 0) + 1
                statuses[uid] = 0
            return DeliveryAttempt(ok=True, permanent=False, message="stored", statuses=statuses)
