"""A delivery's last_error names why an instance was not sent (the SCU's note), not its local status code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select

from core import status
from node.db import Database, Delivery, DeliveryState
from node.destinations import DeliveryAttempt
from node.dispatcher import Dispatcher
from node.settings import Settings
from tests.node.test_commitment import _results

NOTE = "no acceptable transfer syntax: the peer accepts CT Image Storage in none of Explicit VR Little Endian"


class NotSent:
    """A destination whose SCU could not send the one instance for want of a transfer syntax."""

    def __init__(self, uid: str) -> None:
        self.uid = uid

    def send(self, paths: Sequence[Path]) -> DeliveryAttempt:
        return DeliveryAttempt(
            False,
            True,
            f"pacs (X@127.0.0.1:1): stored 0 of 1; failed: {self.uid}: {NOTE}",
            {self.uid: status.SOP_CLASS_NOT_SUPPORTED},
            {self.uid: NOTE},
        )


def test_last_error_is_the_reason_not_a_status_code(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_schema()
    (uid,) = _results(db, tmp_path / "outbox", 1)
    Dispatcher(Settings(data_dir=tmp_path / "data"), db, {"pacs": NotSent(uid)}).run_once()
    with db.session() as session:
        delivery = session.scalars(select(Delivery)).one()
        state, error = delivery.state, delivery.last_error
    db.dispose()
    assert state == DeliveryState.DEAD  # the same file can never pass: at once a dead letter
    assert error is not None and NOTE in error
    assert "0x0122" not in error and "SOP class not supported" not in error
