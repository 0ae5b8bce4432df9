"""node.pull without a PACS: settings, argument checks, unreachable sources and the node, the hand-over of files.

The pulls themselves, against a real Orthanc over C-MOVE, C-GET and DICOMweb, are in
tests/integration/test_pull.py; the Orthanc change watch in tests/integration/test_orthanc_watcher.py.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import select

from core import status
from dimse.scp import StoreRequest
from node.db import AuditEvent, AuditKind, Database
from node.errors import ConfigError
from node.pull import (
    ForwardingIntake,
    PullArgumentError,
    Puller,
    PullError,
    ReceiverIntake,
    SourceUnavailable,
    UnknownSource,
    hand_over,
    load_puller,
)
from node.settings import DicomSourceSettings, DicomWebSourceSettings, Settings, load_settings
from tests.helpers.ports import free_port


def _settings(tmp_path: Path, **sources: dict[str, object]) -> Settings:
    return Settings.model_validate({"data_dir": str(tmp_path / "data"), "sources": sources})


@pytest.fixture
def sqlite(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.create_schema()
    return database


def _part10(sop_uid: str) -> bytes:
    """A small Part 10 file (a CR header without pixels)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1", sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3", "1.2.3.1", "CR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _refuse(request: StoreRequest) -> int:
    raise AssertionError(f"nothing may be stored, got {request.sop_instance_uid}")


def test_sources_take_the_destinations_keys(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        pacs={"type": "dicom", "ae_title": "PACS", "host": "10.0.0.5", "port": 104, "retrieve": "get"},
        web={"type": "dicomweb", "url": "https://pacs/dicom-web", "auth": "bearer", "token_env": "PACS_TOKEN"},
    )
    pacs, web = settings.sources["pacs"], settings.sources["web"]
    assert isinstance(pacs, DicomSourceSettings) and pacs.retrieve == "get" and pacs.timeout == 30
    assert isinstance(web, DicomWebSourceSettings) and web.auth == "bearer"
    assert _settings(tmp_path).sources == {} and _settings(tmp_path).orthanc_watch is None
    default = _settings(tmp_path, q={"type": "dicom", "ae_title": "Q", "host": "h", "port": 1}).sources["q"]
    assert isinstance(default, DicomSourceSettings) and default.retrieve == "move"


def test_orthanc_watch_must_name_a_source(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("orthanc_watch: {url: 'http://127.0.0.1:8042', source: web}\n")
    with pytest.raises(ConfigError, match=r"orthanc_watch.source names 'web' but sources defines only \[\]"):
        load_settings(config, environ={})


def test_a_source_secret_variable_is_not_read_as_a_setting(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(
        "sources: {web: {type: dicomweb, url: 'http://pacs/dicom-web', auth: basic, username: u,"
        " password_env: AINODE_PACS_PASSWORD}}\n"
    )
    settings = load_settings(config, environ={"AINODE_PACS_PASSWORD": "s3cret"})
    web = settings.sources["web"]
    assert isinstance(web, DicomWebSourceSettings)


def test_a_source_with_an_unset_secret_stops_start_up(tmp_path: Path, sqlite: Database) -> None:
    settings = _settings(
        tmp_path,
        web={
            "type": "dicomweb",
            "url": "http://pacs/dicom-web",
            "auth": "basic",
            "username": "u",
            "password_env": "AINODE_TEST_UNSET_PASSWORD",
        },
    )
    with pytest.raises(ConfigError, match="environment variable AINODE_TEST_UNSET_PASSWORD is not set"):
        load_puller(settings, sqlite, ReceiverIntake(_refuse))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give either an accession number or a Study Instance UID"),
        ({"accession": "A1", "study_uid": "1.2.3"}, "give either an accession number or a Study Instance UID"),
        ({"accession": "A*"}, "no wildcards"),
        ({"accession": "A" * 17}, "at most 16 characters"),
        ({"study_uid": "1.2.x"}, "Study Instance UID '1.2.x' is not a DICOM UID"),
        ({"study_uid": "1.2.3", "series_uid": "1..2"}, "Series Instance UID '1..2' is not a DICOM UID"),
    ],
)
def test_bad_arguments(tmp_path: Path, sqlite: Database, kwargs: dict[str, str], message: str) -> None:
    puller = Puller(_settings(tmp_path), sqlite, ReceiverIntake(_refuse))
    with pytest.raises(PullArgumentError, match=message):
        puller.pull("pacs", **kwargs)


def test_unknown_source_names_the_configured_ones_and_is_audited(tmp_path: Path, sqlite: Database) -> None:
    settings = _settings(tmp_path, pacs={"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104})
    with pytest.raises(UnknownSource, match=r"^no source named 'nope' \(sources: pacs\)$"):
        Puller(settings, sqlite, ReceiverIntake(_refuse)).pull("nope", accession="A1")
    with sqlite.session() as session:
        [event] = session.scalars(select(AuditEvent)).all()
    assert event.kind == AuditKind.PULL_FAILED
    assert event.message == "source nope, accession A1: no source named 'nope' (sources: pacs)"


@pytest.mark.parametrize("kind", ["dicom", "dicomweb"])
def test_a_source_that_is_down_is_one_line(tmp_path: Path, sqlite: Database, kind: str) -> None:
    port = free_port()  # nothing listens there
    source: dict[str, object] = (
        {"type": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": port, "timeout": 5}
        if kind == "dicom"
        else {"type": "dicomweb", "url": f"http://127.0.0.1:{port}/dicom-web", "timeout": 5}
    )
    puller = Puller(_settings(tmp_path, pacs=source), sqlite, ReceiverIntake(_refuse))
    with pytest.raises(SourceUnavailable) as raised:
        puller.pull("pacs", accession="A1")
    message = str(raised.value)
    assert "\n" not in message and message.startswith("source pacs (")
    assert "cannot connect" in message, message


def test_hand_over_gives_the_intake_the_file_and_removes_what_it_leaves(tmp_path: Path) -> None:
    seen: list[tuple[bytes, str]] = []

    def intake(request: StoreRequest) -> int:
        seen.append((request.path.read_bytes(), request.sop_instance_uid))
        return status.SUCCESS

    code = hand_over(
        ReceiverIntake(intake),
        tmp_path,
        b"part 10 bytes",
        calling_ae="PACS",
        peer_address="127.0.0.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        sop_instance_uid="1.2.3.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    assert code == status.SUCCESS and seen == [(b"part 10 bytes", "1.2.3.4")]
    assert list(tmp_path.iterdir()) == []


def test_hand_over_into_a_missing_folder_is_out_of_resources(tmp_path: Path) -> None:
    code = hand_over(
        ReceiverIntake(_refuse),
        tmp_path / "missing",
        b"x",
        calling_ae="PACS",
        peer_address="127.0.0.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        sop_instance_uid="1.2.3.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    assert code == status.OUT_OF_RESOURCES


def test_forwarding_to_a_node_that_is_not_running_says_so(tmp_path: Path) -> None:
    folder = tmp_path / "pull"
    folder.mkdir()
    port = free_port()
    intake = ForwardingIntake(folder, host="127.0.0.1", port=port, called_ae="AINODE", calling_ae="AINODE", timeout=5)
    code = hand_over(
        intake,
        tmp_path,
        _part10("1.2.3.4"),
        calling_ae="PACS",
        peer_address="127.0.0.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        sop_instance_uid="1.2.3.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    assert code == status.SUCCESS and len(list(folder.iterdir())) == 1  # kept until the series is sent
    with pytest.raises(PullError, match=rf"AINODE@127.0.0.1:{port}.*is 'ainode serve' running\?"):
        intake.flush()
    assert list(folder.iterdir()) == []


def test_the_receiver_intake_waits_for_the_rows_of_a_series(caplog: pytest.LogCaptureFixture) -> None:
    waits: list[float | None] = []

    def recorded(timeout: float | None) -> bool:
        waits.append(timeout)
        return len(waits) == 1  # committed the first time; still waiting the second

    intake = ReceiverIntake(_refuse, recorded)
    assert intake.flush() == 0 and waits == [ReceiverIntake.RECORD_TIMEOUT]
    assert "not committed yet" not in caplog.text
    assert intake.flush() == 0  # the instances are durable in the spool: not failed
    assert "their database rows are not committed yet" in caplog.text
