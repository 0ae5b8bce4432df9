"""``ainode pull``: a study kept in Orthanc, never forwarded, is pulled by accession and its SR lands in Orthanc.

One Orthanc (the PACS, no Lua, no forwarding) and one node (a process) for the module. The node knows
Orthanc three ways: as a Q/R SCP it asks to C-MOVE to the node's AE title, as a Q/R SCP it C-GETs
from, and as a DICOMweb server (QIDO-RS, WADO-RS). Each path pulls its own study by accession number
and the node's SR must appear in that study in Orthanc; a second pull of the same accession is a
no-op (nothing retrieved, no second SR). Unknown source, unknown accession and a source that is down
are one-line errors with exit 1, and leave nothing recorded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from node.db import AuditEvent, AuditKind, Instance, Job
from node.sample import write_sample
from tests.helpers import OrthancServer
from tests.helpers.ports import free_port
from tests.integration.nodeproc import NodeProcess


@pytest.fixture(scope="module")
def pull_node(module_orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    orthanc = module_orthanc
    dicom = {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
    node = NodeProcess(
        tmp_path_factory.mktemp("pull-node"),
        destinations={"orthanc": dicom},
        sources={
            "pacs-move": {**dicom, "retrieve": "move", "timeout": 20},
            "pacs-get": {**dicom, "retrieve": "get", "timeout": 20},
            "pacs-web": {"type": "dicomweb", "url": orthanc.dicomweb_url, "timeout": 20},
            # Nothing listens there: a source that is down.
            "down": {"type": "dicom", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port(), "timeout": 5},
        },
    )
    node.start()
    # The PACS must know the node as a modality: the C-MOVE destination, and allowed to query and retrieve.
    orthanc.add_modality("ainode", "AINODE", node.port)
    try:
        yield node
    finally:
        node.stop()


def _study_in_orthanc(orthanc: OrthancServer, folder: Path, accession: str) -> pydicom.Dataset:
    """A chest radiograph with this accession number, stored in Orthanc through REST (no forwarding)."""
    [path] = write_sample("cxr", folder).paths
    ds = pydicom.dcmread(path)
    ds.AccessionNumber = accession
    ds.save_as(path, enforce_file_format=True)
    orthanc.upload(path)
    return ds


def _sr_count(orthanc: OrthancServer, study_uid: str) -> int:
    return sum(1 for i in orthanc.instances() if i.study_instance_uid == study_uid and i.modality == "SR")


def _jobs(node: NodeProcess) -> int:
    db = node.database()
    try:
        with db.session() as s:
            return int(s.scalar(select(func.count()).select_from(Job)) or 0)
    finally:
        db.dispose()


def _instances_of(node: NodeProcess, study_uid: str) -> int:
    db = node.database()
    try:
        with db.session() as s:
            return int(s.scalar(select(func.count()).select_from(Instance).where(Instance.study_uid == study_uid)) or 0)
    finally:
        db.dispose()


@pytest.mark.parametrize(
    ("source", "accession"), [("pacs-move", "PULLMOVE1"), ("pacs-get", "PULLGET1"), ("pacs-web", "PULLWEB1")]
)
def test_pull_by_accession_brings_the_sr_to_orthanc_and_a_second_pull_is_a_no_op(
    pull_node: NodeProcess, module_orthanc: OrthancServer, tmp_path: Path, source: str, accession: str
) -> None:
    orthanc = module_orthanc
    ds = _study_in_orthanc(orthanc, tmp_path, accession)
    study_uid = str(ds.StudyInstanceUID)
    assert _instances_of(pull_node, study_uid) == 0  # never forwarded: the node has nothing of it

    first = pull_node.cli("pull", "--source", source, "--accession", accession)
    assert first.returncode == 0, first.stdout + first.stderr + pull_node.log()
    assert first.stdout.count("\n") == 1 and "Traceback" not in first.stderr, first
    assert "1 study, 1 series retrieved (1 instances received)" in first.stdout, first.stdout
    assert _instances_of(pull_node, study_uid) == 1
    db = pull_node.database()
    try:
        with db.session() as s:
            [pulled] = s.scalars(
                select(AuditEvent).where(AuditEvent.kind == AuditKind.PULLED).where(AuditEvent.study_uid == study_uid)
            ).all()
    finally:
        db.dispose()
    assert pulled.instance_count == 1 and pulled.message == first.stdout.strip()
    orthanc.wait_for_instances(study_uid=study_uid, modality="SR", timeout=60)
    pull_node.wait_delivered()

    second = pull_node.cli("pull", "--source", source, "--accession", accession)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 series retrieved (0 instances received), 1 already analysed and unchanged" in second.stdout, second
    # The study now holds the node's SR too: a result object is never pulled.
    assert "1 not analysable" in second.stdout, second.stdout
    time.sleep(2)  # a re-analysis would have queued a job by now (CR quiet period 0.5 s)
    assert _sr_count(orthanc, study_uid) == 1
    db = pull_node.database()
    try:
        with db.session() as s:
            jobs = s.scalars(select(Job).where(Job.study_uid == study_uid)).all()
    finally:
        db.dispose()
    assert len(jobs) == 1, [(j.id, j.state) for j in jobs]


def test_pull_of_one_series_by_study_uid(pull_node: NodeProcess, module_orthanc: OrthancServer, tmp_path: Path) -> None:
    ds = _study_in_orthanc(module_orthanc, tmp_path, "PULLSERIES1")
    study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
    done = pull_node.cli("pull", "--source", "pacs-web", "--study", study, "--series", series)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 series retrieved (1 instances received)" in done.stdout
    missing = pull_node.cli("pull", "--source", "pacs-web", "--study", study, "--series", "1.2.3.4.5")
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"ainode pull: source pacs-web: no series 1.2.3.4.5 in study {study}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--source", "nope", "--accession", "A1"), "ainode pull: no source named 'nope' (sources: "),
        (("--source", "pacs-move", "--accession", "NO-SUCH-ACC"), "ainode pull: source pacs-move: no study with"),
        (("--source", "pacs-web", "--accession", "NO-SUCH-ACC"), "ainode pull: source pacs-web: no study with"),
        (("--source", "down", "--accession", "A1"), "ainode pull: source down (DOWN@127.0.0.1:"),
    ],
)
def test_pull_failures_are_one_line_exit_1_and_record_nothing(
    pull_node: NodeProcess, args: tuple[str, ...], message: str
) -> None:
    jobs = _jobs(pull_node)
    failed = pull_node.cli("pull", *args)
    assert failed.returncode == 1, failed
    assert failed.stdout == ""
    assert failed.stderr.startswith(message) and failed.stderr.count("\n") == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    assert _jobs(pull_node) == jobs


def test_pull_bad_usage_exits_2(pull_node: NodeProcess) -> None:
    neither = pull_node.cli("pull", "--source", "pacs-web")
    assert neither.returncode == 2 and "one of the arguments --accession --study is required" in neither.stderr
    bad_uid = pull_node.cli("pull", "--source", "pacs-web", "--study", "not-a-uid")
    assert bad_uid.returncode == 2, bad_uid
    assert bad_uid.stderr.strip() == (
        "ainode pull: Study Instance UID 'not-a-uid' is not a DICOM UID (digits and dots, at most 64 characters)"
    )
