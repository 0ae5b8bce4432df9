"""STOW-RS intake through a node process: dicomweb-client stores, the node's SR reaches Orthanc.

``ainode serve`` as a subprocess (tests/integration/nodeproc.py) with an API
token in a file; dicomweb-client's ``store_instances`` POSTs to the node's
``/dicomweb/studies``. A stored radiograph is in the spool and the database
(calling AE: the token's name) and is analysed and delivered like a pushed one:
its SR arrives in Orthanc in the same study. Refused parts come back in the
FailedSOPSequence with their reasons while the good part is stored; no token is
401, another media type 415, a request over ``stow_max_request_size`` 413 with
nothing of it recorded. On a full data disk the parts that no longer fit fail
with 0xA700 (out of resources), nothing half-written stays, and the same node
takes them once space is freed.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from node.db import AuditEvent, AuditKind, Instance
from tests.helpers import OrthancServer
from tests.helpers.ports import free_port
from tests.helpers.smallfs import small_file_systems
from tests.integration.nodeproc import NodeProcess
from tests.node.test_http_auth import recorded

TOKEN = "stow-token-of-the-integration-test-0123456789"


def _node(tmp_path: Path, **settings: object) -> tuple[NodeProcess, str]:
    token_file = tmp_path / "ris.token"
    token_file.write_text(TOKEN + "\n")
    http_port = free_port()
    node = NodeProcess(
        tmp_path / "node", http_port=http_port, http_tokens=[{"name": "ris", "token_file": str(token_file)}], **settings
    )
    return node, f"http://127.0.0.1:{http_port}"


def _copy(source: Path, study_uid: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


def test_an_instance_stored_by_stow_rs_is_analysed_and_its_sr_reaches_orthanc(
    tmp_path: Path, orthanc: OrthancServer, rg1_uncr: Path
) -> None:
    node, base = _node(
        tmp_path,
        destinations={
            "orthanc": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
    )
    node.start()
    try:
        source = pydicom.dcmread(rg1_uncr)
        study = str(source.StudyInstanceUID)
        client = DICOMwebClient(url=base + "/dicomweb", headers={"Authorization": f"Bearer {TOKEN}"})
        answer = client.store_instances([source], study_instance_uid=study)
        [stored] = answer.ReferencedSOPSequence
        assert stored.ReferencedSOPInstanceUID == source.SOPInstanceUID and "FailedSOPSequence" not in answer
        db = node.database()
        row = recorded(db, source.SOPInstanceUID)  # the file is durable before the answer; its row follows
        assert (row.calling_ae, row.peer_address, row.study_uid) == ("ris", "127.0.0.1", study)
        assert Path(row.path).read_bytes()[128:132] == b"DICM"
        [sr] = orthanc.wait_for_instances(study_uid=study, modality="SR", timeout=90)
        assert sr.study_instance_uid == study
        with db.session() as session:
            kinds = [e.kind for e in session.query(AuditEvent).filter_by(study_uid=study)]
        assert AuditKind.RECEIVED in kinds and AuditKind.HTTP_REQUEST in kinds
        db.dispose()
    finally:
        node.stop()
    assert "Traceback" not in node.log()


def test_refused_parts_unauthenticated_wrong_media_type_and_too_large_requests(tmp_path: Path, rg1_uncr: Path) -> None:
    node, base = _node(tmp_path, stow_max_request_size=20 * 2**20)  # RG1_UNCR is 7.2 MB: two fit, three do not
    node.start()
    try:
        study = generate_uid()
        good, elsewhere = _copy(rg1_uncr, study), _copy(rg1_uncr, generate_uid())
        unreadable = _copy(rg1_uncr, study)
        del unreadable.SeriesInstanceUID  # the receiver cannot file it: 0xC210
        client = DICOMwebClient(url=base + "/dicomweb", headers={"Authorization": f"Bearer {TOKEN}"})
        answer = client.store_instances([good], study_instance_uid=study)
        assert len(answer.ReferencedSOPSequence) == 1
        with pytest.raises(requests.HTTPError) as all_failed:
            client.store_instances([unreadable, elsewhere], study_instance_uid=study)
        assert all_failed.value.response.status_code == 409
        failed = pydicom.Dataset.from_json(all_failed.value.response.json()).FailedSOPSequence
        assert {(f.ReferencedSOPInstanceUID, f.FailureReason) for f in failed} == {
            (unreadable.SOPInstanceUID, 0xC210),
            (elsewhere.SOPInstanceUID, 0xA900),
        }
        another = _copy(rg1_uncr, study)
        answer = client.store_instances([another, elsewhere], study_instance_uid=study)  # some failed: 202
        assert [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence] == [another.SOPInstanceUID]
        assert [i.FailureReason for i in answer.FailedSOPSequence] == [0xA900]

        anonymous = DICOMwebClient(url=base + "/dicomweb")
        with pytest.raises(requests.HTTPError) as refused:
            anonymous.store_instances([_copy(rg1_uncr, study)])
        assert refused.value.response.status_code == 401
        assert "Bearer" in refused.value.response.headers["WWW-Authenticate"]

        wrong = requests.post(
            base + "/dicomweb/studies",
            data=b"{}",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert wrong.status_code == 415 and "multipart/related" in wrong.json()["error"]

        with pytest.raises(requests.HTTPError) as too_large:
            client.store_instances([_copy(rg1_uncr, study) for _ in range(3)])
        assert too_large.value.response.status_code == 413

        db = node.database()
        recorded(db, another.SOPInstanceUID)
        with db.session() as session:
            stored = {r.sop_uid for r in session.query(Instance)}
        db.dispose()
        assert stored == {good.SOPInstanceUID, another.SOPInstanceUID}
        assert len(list((node.data_dir / "spool").rglob("*.dcm"))) == 2
        assert list((node.data_dir / "tmp").glob(".incoming-*")) == []
    finally:
        node.stop()
    assert "Traceback" not in node.log()


def test_a_full_disk_fails_the_parts_that_do_not_fit_with_0xa700_and_the_node_resumes(tmp_path: Path) -> None:
    with small_file_systems(tmp_path) as make:
        fs = make("fs", 8)
        ballast = fs / "ballast"  # what the administrator deletes to free space
        ballast.write_bytes(os.urandom(5 * 1024 * 1024))
        node, base = _node(tmp_path, data_dir=str(fs / "data"), quiet_period={"default": 60.0})
        node.data_dir = fs / "data"
        node.start()
        try:
            template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
            template.Rows = template.Columns = 512  # about 0.5 MB each: 6 MB do not fit in the 3 MB left
            template.PixelData = os.urandom(512 * 512 * 2)
            study = generate_uid()
            batch = []
            for _ in range(12):
                ds = copy.deepcopy(template)
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                batch.append(ds)
            client = DICOMwebClient(url=base + "/dicomweb", headers={"Authorization": f"Bearer {TOKEN}"})
            answer = client.store_instances(batch, study_instance_uid=study)  # 202: some stored
            stored = [i.ReferencedSOPInstanceUID for i in answer.ReferencedSOPSequence]
            failed = [(i.get("ReferencedSOPInstanceUID"), i.FailureReason) for i in answer.FailedSOPSequence]
            assert stored and failed and {reason for _, reason in failed} == {0xA700}
            order = [str(ds.SOPInstanceUID) for ds in batch]
            assert order[: len(stored)] == stored, "a part stored after the disk was full"
            assert list((node.data_dir / "tmp").glob(".incoming-*")) == []
            assert requests.get(base + "/healthz", timeout=10).status_code == 200
            assert "no space left on device" in node.log().lower()

            ballast.unlink()  # space freed: the same node takes the refused instances now
            refused = batch[len(stored) :]
            again = client.store_instances(refused, study_instance_uid=study)
            assert len(again.ReferencedSOPSequence) == len(refused) and "FailedSOPSequence" not in again
            db = node.database()
            recorded(db, str(refused[-1].SOPInstanceUID), timeout=30)
            with db.session() as session:
                assert {r.sop_uid for r in session.query(Instance)} == set(order)
            db.dispose()
        finally:
            node.stop()
    assert "Traceback" not in node.log()
