"""``orthanc_watch``: the node follows Orthanc's ``/changes`` feed instead of being forwarded to by Lua.

A study stored in Orthanc (no forwarding rule) becomes a StableSeries change; the node pulls that
series through its DICOMweb source and its SR lands in Orthanc. The node's own SR is a change too and
is not pulled. After a restart the node resumes after the last change it handled: a study stored while
it was down is pulled, and nothing before it is pulled again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from core import status
from dimse.scp import StoreRequest
from node.db import AuditEvent, AuditKind, Database
from node.pull import Puller, ReceiverIntake
from node.sample import write_sample
from node.settings import Settings
from node.watcher import STATE_FILE, OrthancWatcher
from tests.helpers import OrthancServer
from tests.integration.nodeproc import NodeProcess


def _store(orthanc: OrthancServer, folder: Path) -> str:
    [path] = write_sample("cxr", folder).paths
    orthanc.upload(path)
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _log(node: NodeProcess) -> str:
    """The node's whole log, both runs (``NodeProcess.log`` keeps the end only)."""
    return node.log_path.read_text(errors="replace")


def _srs(orthanc: OrthancServer, study_uid: str) -> int:
    return sum(1 for i in orthanc.instances() if i.study_instance_uid == study_uid and i.modality == "SR")


@pytest.mark.parametrize("through", ["dicomweb", "c-get"])
def test_watcher_pulls_stable_series_and_resumes_after_restart(
    orthanc_factory: Callable[..., OrthancServer], tmp_path: Path, through: str
) -> None:
    orthanc = orthanc_factory(extra_config={"StableAge": 1})
    dicom = {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
    # Orthanc's DICOMweb, or its Q/R SCP by C-GET: either way the instances go to the node's receiver in-process.
    source = (
        {"type": "dicomweb", "url": orthanc.dicomweb_url, "timeout": 20}
        if through == "dicomweb"
        else {**dicom, "retrieve": "get", "timeout": 20}
    )
    node = NodeProcess(
        tmp_path / "node",
        destinations={"orthanc": dicom},
        sources={"orthanc": source},
        orthanc_watch={"url": orthanc.http_url, "source": "orthanc", "poll_seconds": 0.3},
    )
    orthanc.add_modality("ainode", "AINODE", node.port)  # allowed to query and retrieve
    state = node.data_dir / STATE_FILE
    node.start()
    try:
        deadline = time.monotonic() + 10
        while not state.exists():  # the watch records where it starts
            assert time.monotonic() < deadline, node.log()
            time.sleep(0.1)
        first = _store(orthanc, tmp_path / "a")
        orthanc.wait_for_instances(study_uid=first, modality="SR", timeout=60)
        node.wait_delivered()
        time.sleep(3)  # the SR's own StableSeries change (after StableAge) is handled: not pulled, not analysed
    finally:
        node.stop()
    assert _srs(orthanc, first) == 1
    assert "not retrieved: result object not routed" in _log(node), node.log()
    handled = json.loads(state.read_text())["last"]
    pulls_before = _log(node).count(f"pull of study {first}")
    assert pulls_before >= 1

    second = _store(orthanc, tmp_path / "b")  # stored while the node is down
    node.start()
    try:
        orthanc.wait_for_instances(study_uid=second, modality="SR", timeout=60)
        node.wait_delivered()
        time.sleep(3)
    finally:
        node.stop()
    assert json.loads(state.read_text())["last"] > handled
    # Resumed after the last change handled: the first study's changes were not pulled again.
    assert _log(node).count(f"pull of study {first}") == pulls_before, node.log()
    assert _srs(orthanc, first) == 1 and _srs(orthanc, second) == 1


def test_a_change_whose_instances_were_refused_is_pulled_again(
    orthanc_factory: Callable[..., OrthancServer], tmp_path: Path
) -> None:
    """The node refuses the pulled instance twice (out of resources, as with a full disk): the watch does not move
    past the change, and the third pull stores it."""
    orthanc = orthanc_factory(extra_config={"StableAge": 1})
    settings = Settings.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": {"web": {"type": "dicomweb", "url": orthanc.dicomweb_url, "timeout": 20}},
            "orthanc_watch": {"url": orthanc.http_url, "source": "web", "poll_seconds": 0.2},
        }
    )
    settings.tmp_dir.mkdir(parents=True)
    db = Database(settings.db_url())
    db.create_schema()
    answers = [status.OUT_OF_RESOURCES, status.OUT_OF_RESOURCES]
    stored: list[str] = []

    def receiver(request: StoreRequest) -> int:
        if answers:
            return answers.pop(0)
        stored.append(request.sop_instance_uid)
        return status.SUCCESS

    assert settings.orthanc_watch is not None
    watcher = OrthancWatcher(settings.orthanc_watch, Puller(settings, db, ReceiverIntake(receiver)), settings.data_dir)
    watcher.start()
    try:
        deadline = time.monotonic() + 10
        while not (settings.data_dir / STATE_FILE).exists():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        [path] = write_sample("cxr", tmp_path / "a").paths
        orthanc.upload(path)
        deadline = time.monotonic() + 30
        while not stored:
            assert time.monotonic() < deadline, f"not stored; refusals left: {answers}"
            time.sleep(0.1)
    finally:
        watcher.stop()
    assert stored == [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)]
    with db.session() as session:
        pulls = session.scalars(select(AuditEvent).where(AuditEvent.kind == AuditKind.PULLED)).all()
    db.dispose()
    assert [p.instance_count for p in pulls] == [0, 0, 1], [p.message for p in pulls]
