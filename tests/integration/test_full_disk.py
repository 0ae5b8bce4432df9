"""Full disk: C-STORE answered 0xA700 (out of resources), nothing half-written, receiving resumes without a restart.

A full database disk is not a full spool: instances are still acknowledged (durable in
the spool) and their rows follow once there is space (``node.receiver``).

Each test makes a small file system of its own (``tests.helpers.smallfs``: a
size-limited tmpfs; a loop device with ext4 when tmpfs cannot be mounted) and
unmounts it at teardown.
Neither possible is a failure that says why, not a skip: the guarantee
"out of disk is a failure status, not a crash" (ARCHITECTURE.md) is not
tested otherwise.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from node.db import Database, Instance
from tests.helpers import echoscu, pynetdicom_store
from tests.helpers.smallfs import small_file_systems
from tests.integration.nodeproc import NodeProcess

OUT_OF_RESOURCES = 0xA700


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str, int], Path]]:
    """``make(name, size_mb)`` mounts a small file system under ``tmp_path``; all are unmounted at teardown."""
    with small_file_systems(tmp_path) as make:
        yield make


def _ct(rows: int) -> pydicom.Dataset:
    """A CT image of ``rows``² 16-bit pixels (about ``2·rows²`` bytes), in a new series."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = rows
    ds.PixelData = np.random.default_rng(rows).integers(0, 2000, size=(rows, rows), dtype=np.int16).tobytes()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    return ds


def _instances(template: pydicom.Dataset, count: int) -> list[pydicom.Dataset]:
    out = []
    for _ in range(count):
        ds = copy.deepcopy(template)  # Dataset.copy() is shallow: the copies would share one SOP Instance UID
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def _consistent(node: NodeProcess, db_url: str, recorded: set[str] | None = None) -> tuple[set[str], set[str]]:
    """Spool files and database rows; asserts nothing half-written: no temporary file, no row without its file.

    ``recorded``: instances whose rows must be there; waited for (rows follow acknowledgements in batches).
    """
    deadline = time.monotonic() + 30
    while True:
        files, rows = _files_and_rows(node, db_url)
        if recorded is None or recorded <= rows:
            return files, rows
        assert time.monotonic() < deadline, f"{len(recorded - rows)} acknowledged instances still without a row"
        time.sleep(0.1)


def _files_and_rows(node: NodeProcess, db_url: str) -> tuple[set[str], set[str]]:
    leftovers = list((node.data_dir / "tmp").glob("*"))
    assert leftovers == [], f"temporary files left behind: {leftovers}"
    files = {p.stem for p in (node.data_dir / "spool").rglob("*.dcm")}
    db = Database(db_url)
    try:
        with db.session() as s:
            rows = dict(s.execute(select(Instance.sop_uid, Instance.path)).all())
    finally:
        db.dispose()
    without_file = [uid for uid, path in rows.items() if not Path(path).is_file()]
    assert without_file == [], f"database rows without their spool file: {without_file}"
    for path in (node.data_dir / "spool").rglob("*.dcm"):  # every file complete: readable to its end
        pydicom.dcmread(path)
    return files, set(rows)


def test_full_data_disk_answers_out_of_resources_then_resumes_without_restart(
    small_fs: Callable[[str, int], Path], tmp_path: Path
) -> None:
    fs = small_fs("fs", 8)
    ballast = fs / "ballast"  # what the administrator deletes to free space
    ballast.write_bytes(os.urandom(5 * 1024 * 1024))
    node = NodeProcess(tmp_path / "node", data_dir=str(fs / "data"), quiet_period={"default": 60.0})
    node.data_dir = fs / "data"
    node.start()
    pid = node.proc.pid if node.proc else None
    db_url = f"sqlite:///{fs / 'data' / 'ainode.db'}"
    try:
        batch = _instances(
            _ct(512), 12
        )  # ~0.5 MB each: 6 MB do not fit in the 3 MB left, but do once the 5 MB ballast goes
        statuses = pynetdicom_store(node.port, batch)
        assert set(statuses) == {0, OUT_OF_RESOURCES}, [hex(s) if s is not None else s for s in statuses]
        accepted = [ds.SOPInstanceUID for ds, s in zip(batch, statuses, strict=False) if s == 0]
        refused = [ds for ds, s in zip(batch, statuses, strict=False) if s == OUT_OF_RESOURCES]
        assert statuses.index(OUT_OF_RESOURCES) == len(accepted), "a success after the disk was full"
        files, rows = _consistent(node, db_url, set(accepted))
        assert set(accepted) <= files
        # A refused instance never has a row; a complete file may remain and is recorded when sent again.
        assert not rows & {ds.SOPInstanceUID for ds in refused}
        assert echoscu("127.0.0.1", node.port, "AINODE", "STORESCU").returncode == 0
        assert "no space left on device" in node.log().lower()

        ballast.unlink()  # space freed: the same node takes the refused instances now
        again = pynetdicom_store(node.port, refused)
        assert again == [0] * len(refused), again
        assert node.proc is not None and node.proc.pid == pid and node.proc.poll() is None  # no restart
        files, rows = _consistent(node, db_url, {str(ds.SOPInstanceUID) for ds in batch})
        assert rows == files == {str(ds.SOPInstanceUID) for ds in batch}
    finally:
        node.stop()
    assert "Traceback" not in node.log()


def test_full_database_disk_delays_the_rows_and_loses_nothing(
    small_fs: Callable[[str, int], Path], tmp_path: Path
) -> None:
    """The spool is the durable record: instances are acknowledged while their rows wait for space."""
    dbfs = small_fs("dbfs", 2)
    db_url = f"sqlite:///{dbfs / 'ainode.db'}"
    node = NodeProcess(tmp_path / "node", database_url=db_url, quiet_period={"default": 60.0}).start()
    try:
        assert pynetdicom_store(node.port, _instances(_ct(16), 1)) == [0]
        ballast = dbfs / "ballast"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)  # fill the file system to the last block
        try:
            while os.write(fd, b"\1" * 4096) > 0:
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        batch = _instances(_ct(16), 40)
        assert pynetdicom_store(node.port, batch) == [0] * len(batch)
        sent = {str(ds.SOPInstanceUID) for ds in batch}
        files, rows = _consistent(node, db_url)
        assert sent <= files  # durable in the spool, acknowledged
        # Rows could not be written (all of them, or those past what the database's free pages held).
        assert "database or disk is full" in node.log() and "safe in the spool" in node.log()
        assert echoscu("127.0.0.1", node.port, "AINODE", "STORESCU").returncode == 0

        ballast.unlink()  # space freed: the rows follow without the sender doing anything
        files, rows = _consistent(node, db_url, sent)
    finally:
        node.stop()
    assert "Traceback" not in node.log()
