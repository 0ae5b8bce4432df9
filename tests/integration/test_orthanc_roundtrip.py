"""The spine against a real Orthanc: PACS -> node -> SR back in the same study.

Orthanc plays the PACS. DCMTK's storescu puts radiographs into Orthanc,
Orthanc forwards the study to the node (C-STORE), and the node's SR must
arrive in the same study in Orthanc -- once by C-STORE, once by STOW-RS --,
pass dciodvfy, and say frontal or lateral correctly.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from tests.helpers import OrthancServer, assert_dciodvfy_clean, echoscu, lateral_radiograph, storescu
from tests.integration.nodeproc import NodeProcess
from tests.integration.srread import coded_values, referenced_sops, texts

IMAGE_VIEW = "111031"


@pytest.fixture
def lateral_dicom(tmp_path: Path) -> Path:
    """A lateral chest DX built from a held-out real lateral radiograph."""
    return lateral_radiograph(tmp_path)


def _sr_from_orthanc(orthanc: OrthancServer, study_uid: str, tmp_path: Path) -> tuple[pydicom.Dataset, Path]:
    [sr] = orthanc.wait_for_instances(study_uid=study_uid, modality="SR", timeout=60)
    data = orthanc.download_instance(sr.id)
    path = tmp_path / f"{sr.sop_instance_uid}.dcm"
    path.write_bytes(data)
    return pydicom.dcmread(BytesIO(data)), path


def test_frontal_radiograph_forwarded_by_orthanc_gets_sr_back_by_cstore(
    tmp_path: Path, orthanc: OrthancServer, rg1_uncr: Path
) -> None:
    node = NodeProcess(
        tmp_path / "node",
        destinations={
            "orthanc": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
    )
    node.start()
    try:
        orthanc.add_modality("ainode", "AINODE", node.port)
        orthanc.store_with_storescu([rg1_uncr])
        source = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
        answer = orthanc.forward_study(str(source.StudyInstanceUID), "ainode")
        assert answer.get("FailedInstancesCount", 0) == 0, answer
        sr, path = _sr_from_orthanc(orthanc, str(source.StudyInstanceUID), tmp_path)
    finally:
        node.stop()
    assert_dciodvfy_clean(path)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.PatientID == source.PatientID
    assert coded_values(sr, IMAGE_VIEW) and coded_values(sr, IMAGE_VIEW)[0].lower().startswith("frontal")
    assert str(source.SOPInstanceUID) in referenced_sops(sr)
    assert sr.Manufacturer == "ainode"
    purposes = [c.PurposeOfReferenceCodeSequence[0].CodeValue for c in sr.ContributingEquipmentSequence]
    assert "Newcode1" in purposes


def test_lateral_radiograph_gets_view_filter_sr_back_by_stow_rs(
    tmp_path: Path, orthanc: OrthancServer, lateral_dicom: Path
) -> None:
    node = NodeProcess(
        tmp_path / "node", destinations={"orthanc-web": {"type": "dicomweb", "url": orthanc.dicomweb_url}}
    )
    node.start()
    try:
        orthanc.add_modality("ainode", "AINODE", node.port)
        orthanc.store_with_storescu([lateral_dicom])
        source = pydicom.dcmread(lateral_dicom, stop_before_pixels=True)
        orthanc.forward_study(str(source.StudyInstanceUID), "ainode")
        sr, path = _sr_from_orthanc(orthanc, str(source.StudyInstanceUID), tmp_path)
    finally:
        node.stop()
    assert_dciodvfy_clean(path)
    assert coded_values(sr, IMAGE_VIEW)[0].lower().startswith("lateral")
    assert any("not analysed further" in t.lower() for t in texts(sr)), texts(sr)


def test_unknown_calling_ae_is_rejected(tmp_path: Path, rg1_uncr: Path) -> None:
    node = NodeProcess(tmp_path / "node").start()
    try:
        refused = storescu([rg1_uncr], "127.0.0.1", node.port, "AINODE", "INTRUDER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in (refused.stdout + refused.stderr)
        wrong_called = echoscu("127.0.0.1", node.port, "NOTTHENODE", "STORESCU")
        assert wrong_called.returncode != 0
        assert "Called AE Title Not Recognized" in (wrong_called.stdout + wrong_called.stderr)
        assert echoscu("127.0.0.1", node.port, "AINODE", "STORESCU").returncode == 0
    finally:
        node.stop()
    assert not list((node.data_dir / "spool").rglob("*.dcm"))
