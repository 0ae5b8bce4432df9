"""Spool: UIDs validated before use in a path, writes atomic and durable, out of disk mapped to StorageFull."""

import errno
import os
from pathlib import Path

import pytest

from node.errors import InputError, StorageFull
from node.spool import Spool, check_uid, write_durable


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../../etc/passwd",
        "1.2.3/../../x",
        "1.2.3\\x",
        "1.2.03",
        "1.2.a",
        "1." * 40 + "1",
        "1..2",
        ".1.2",
        "1.2.3\x00",
        "/abs/1.2",
    ],
)
def test_invalid_uids_never_become_paths(tmp_path: Path, bad: str) -> None:
    spool = Spool(tmp_path / "spool", tmp_path / "tmp")
    if bad == "1.2.3\x00":  # trailing NUL padding is legal in a UID value
        assert spool.path_for("1.2", "1.3", bad).name == "1.2.3.dcm"
        return
    with pytest.raises(InputError):
        spool.path_for("1.2", "1.3", bad)
    with pytest.raises(InputError):
        spool.path_for(bad, "1.3", "1.4")


def test_check_uid_messages() -> None:
    assert check_uid("1.2.840.10008", "X") == "1.2.840.10008"
    with pytest.raises(InputError, match="longer than 64"):
        check_uid("1." * 33 + "1", "SOPInstanceUID")
    with pytest.raises(InputError, match="SeriesInstanceUID is missing"):
        check_uid(None, "SeriesInstanceUID")


def test_store_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", tmp_path / "tmp")
    path = spool.store("1.2", "1.2.3", "1.2.3.4", b"DICM" * 100)
    assert path == tmp_path / "spool" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert path.read_bytes() == b"DICM" * 100
    assert list((tmp_path / "tmp").iterdir()) == []
    # A second store of the same instance replaces it whole.
    spool.store("1.2", "1.2.3", "1.2.3.4", b"new")
    assert path.read_bytes() == b"new"


def test_out_of_space_raises_storage_full_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool", tmp_path / "tmp")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageFull, match="no space left"):
        spool.store("1.2", "1.2.3", "1.2.3.4", b"x" * 10)
    monkeypatch.undo()
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "spool" / "1.2" / "1.2.3" / "1.2.3.4.dcm").exists()


def test_clean_tmp_removes_partial_files_of_a_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", tmp_path / "tmp")
    (tmp_path / "tmp" / ".incoming-abc.part").write_bytes(b"half")
    assert spool.clean_tmp() == 1
    write_durable(tmp_path / "out.dcm", b"ok", tmp_path / "tmp")
    assert (tmp_path / "out.dcm").read_bytes() == b"ok"


def test_keep_moves_the_received_file_into_place_without_copying_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", tmp_path / "tmp")
    received = tmp_path / "tmp" / ".incoming-scp-1.dcm"
    received.write_bytes(b"DICM" * 100)
    inode = received.stat().st_ino
    path = spool.keep(received, "1.2", "1.2.3", "1.2.3.4")
    assert path == tmp_path / "spool" / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert path.read_bytes() == b"DICM" * 100 and path.stat().st_ino == inode and not received.exists()
    # Received again: the new file replaces the old one whole.
    received.write_bytes(b"new")
    assert spool.keep(received, "1.2", "1.2.3", "1.2.3.4") == path and path.read_bytes() == b"new"


def test_keep_out_of_space_raises_storage_full_and_leaves_the_file_to_its_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path / "spool", tmp_path / "tmp")
    received = tmp_path / "tmp" / ".incoming-scp-1.dcm"
    received.write_bytes(b"x" * 10)

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageFull, match="no space left"):
        spool.keep(received, "1.2", "1.2.3", "1.2.3.4")
    monkeypatch.undo()
    assert received.read_bytes() == b"x" * 10  # the SCP deletes it
    assert not list((tmp_path / "spool").rglob("*.dcm"))


def test_keep_copies_a_file_from_another_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An intake that wrote elsewhere than the spool's file system: ``rename`` fails with EXDEV, the file is copied."""
    spool = Spool(tmp_path / "spool", tmp_path / "tmp")
    received = tmp_path / "elsewhere.dcm"
    received.write_bytes(b"DICM" * 10)
    real = os.replace

    def across(source: str | Path, target: str | Path) -> None:
        if Path(source) == received:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real(source, target)

    monkeypatch.setattr(os, "replace", across)
    path = spool.keep(received, "1.2", "1.2.3", "1.2.3.4")
    assert path.read_bytes() == b"DICM" * 10
    assert list((tmp_path / "tmp").iterdir()) == []  # the copy went through a temporary file, renamed into place
