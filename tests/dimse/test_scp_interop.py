"""StorageSCP with the requestors it meets in practice: DCMTK, pynetdicom (our SCU) and Orthanc.

Every received instance must parse and equal the data set that was sent.
"""

from __future__ import annotations

import subprocess
import threading
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from dimse_helpers import LOCALHOST, NODE_AE, PACS_AE, DirectorySink, dcmtk_env, pydicom_file, run_dcmtk
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from core import status
from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dimse import AllowedPeer, AssociationEvent, StoreRequest, echo, store_files

FILES = ("CT_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm")


def without_padding(dataset: Dataset) -> Dataset:
    """DCMTK drops the trailing padding element (FFFC,FFFC) some pydicom test files carry; pynetdicom keeps it."""
    if 0xFFFCFFFC in dataset:
        del dataset[0xFFFCFFFC]
    return dataset


def ct_file(folder: Path, rows: int = 512) -> Path:
    """A CT instance of ``rows``×``rows`` 16-bit pixels (~0.5 MB), Explicit VR Little Endian."""
    dataset = dcmread(pydicom_file("CT_small.dcm"))
    dataset.Rows = dataset.Columns = rows
    dataset.PixelData = np.random.default_rng(1).integers(0, 2000, (rows, rows), dtype=np.int16).tobytes()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = folder / "big_ct.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def assert_received(sink: DirectorySink, original: Path) -> None:
    """The sink got ``original``'s data set, in its own transfer syntax, with our File Meta."""
    sent = dcmread(original)
    (request,) = [r for r in sink.requests if r.sop_instance_uid == sent.SOPInstanceUID]
    received = dcmread(sink.directory / f"{sent.SOPInstanceUID}.dcm")
    assert request.transfer_syntax_uid == sent.file_meta.TransferSyntaxUID
    assert received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert received.file_meta.MediaStorageSOPClassUID == sent.SOPClassUID
    assert received.PixelData == sent.PixelData
    assert without_padding(received) == without_padding(sent)


def test_storescu_fragmenting_at_16k_sends_a_large_instance_intact(start_scp, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    big = ct_file(tmp_path / "in")
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink)

    result = run_dcmtk(
        "storescu",
        "-v",
        "-aet",
        PACS_AE,
        "-aec",
        NODE_AE,
        "--max-send-pdu",
        "16384",
        LOCALHOST,
        str(scp.port),
        str(big),
        str(pydicom_file("CT_small.dcm")),
    )

    assert result.returncode == 0, result.stderr
    assert_received(sink, big)
    assert_received(sink, pydicom_file("CT_small.dcm"))


def test_our_scu_stores_and_echoes(start_scp, tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink)
    paths = [pydicom_file(name) for name in FILES]

    outcomes = store_files(paths, host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE)

    assert [o.status for o in outcomes] == [status.SUCCESS] * len(FILES)
    for path in paths:
        assert_received(sink, path)
    assert echo(host=LOCALHOST, port=scp.port, called_ae=NODE_AE, calling_ae=PACS_AE) == status.SUCCESS


def test_concurrent_associations_are_served_in_parallel(start_scp, tmp_path: Path) -> None:
    inside: list[int] = []
    most = [0]
    lock = threading.Lock()
    sink_dir = DirectorySink(tmp_path)

    def slow_sink(request: StoreRequest) -> int:
        with lock:
            inside.append(1)
            most[0] = max(most[0], len(inside))
        time.sleep(0.3)
        with lock:
            inside.pop()
            return sink_dir(request)

    scp = start_scp(slow_sink)
    senders = [
        subprocess.Popen(
            ["storescu", "-aet", PACS_AE, "-aec", NODE_AE, *option, LOCALHOST, str(scp.port), str(pydicom_file(name))],
            env=dcmtk_env(),
            stderr=subprocess.PIPE,
        )
        for name, option in zip(FILES, ((), ("-xw",), ("-xr",)), strict=False)
    ]

    assert [p.wait(30) for p in senders] == [0, 0, 0]
    assert most[0] == 3  # one thread per association: the three sinks overlapped
    for name in FILES:
        assert_received(sink_dir, pydicom_file(name))


def test_stop_lets_an_association_in_progress_finish(start_scp, tmp_path: Path) -> None:
    events: list[AssociationEvent] = []
    first_store = threading.Event()
    sink_dir = DirectorySink(tmp_path)

    def slow_sink(request: StoreRequest) -> int:
        first_store.set()
        time.sleep(0.2)
        return sink_dir(request)

    scp = start_scp(slow_sink, events=events)
    sender = subprocess.Popen(
        [
            "storescu",
            "-aet",
            PACS_AE,
            "-aec",
            NODE_AE,
            LOCALHOST,
            str(scp.port),
            *(str(pydicom_file("CT_small.dcm")) for _ in range(3)),
        ],
        env=dcmtk_env(),
        stderr=subprocess.PIPE,
    )
    assert first_store.wait(10)

    scp.stop(timeout=10)

    assert sender.wait(10) == 0
    assert len(sink_dir.requests) == 3
    assert [e.kind for e in events] == ["accepted", "released"]


def test_orthanc_forwards_studies_intact(start_scp, orthanc, tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink, allowed_peers=[AllowedPeer(orthanc.aet, host=LOCALHOST)])
    orthanc.add_modality("ainode", NODE_AE, scp.port)
    studies = []
    for name in FILES:
        orthanc.upload(pydicom_file(name))
        studies.append(dcmread(pydicom_file(name)).StudyInstanceUID)

    answers = [orthanc.forward_study(study, "ainode") for study in dict.fromkeys(studies)]

    assert all(answer.get("FailedInstancesCount", 0) == 0 for answer in answers), answers
    assert {r.calling_ae for r in sink.requests} == {orthanc.aet}
    for name in FILES:
        # Orthanc sends what it stored, in the stored transfer syntax, which we accept
        assert_received(sink, pydicom_file(name))
        received = dcmread(tmp_path / f"{dcmread(pydicom_file(name)).SOPInstanceUID}.dcm")
        assert received.file_meta.SourceApplicationEntityTitle == orthanc.aet


@pytest.mark.parametrize(
    "sop_class",
    [
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.5",  # Nuclear Medicine Image Storage (Retired)
    ],
    ids=["us-retired", "us-multiframe-retired", "nm-retired"],
)
def test_storescu_stores_retired_sop_classes_storescp_accepts(start_scp, tmp_path: Path, sop_class: str) -> None:
    """Old modalities still send these; DCMTK's storescp accepts them, so the node does (issue 16)."""
    dataset = dcmread(pydicom_file("CT_small.dcm"))
    dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID = sop_class
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "retired.dcm"
    dataset.save_as(path, enforce_file_format=True)
    (tmp_path / "in").mkdir()
    sink = DirectorySink(tmp_path / "in")
    scp = start_scp(sink)

    # -R proposes the files' own SOP classes: storescu's default list has none of the retired ones
    result = run_dcmtk("storescu", "-v", "-R", "-aet", PACS_AE, "-aec", NODE_AE, LOCALHOST, str(scp.port), str(path))

    assert result.returncode == 0, result.stderr
    assert "Received Store Response (Success)" in result.stderr
    (request,) = sink.requests
    assert request.sop_class_uid == sop_class
    assert dcmread(BytesIO(request.data)).SOPInstanceUID == dataset.SOPInstanceUID


def test_association_and_stored_file_name_ainode_as_the_implementation(start_scp, tmp_path: Path) -> None:
    """PS3.7 D.3.3.2 and PS3.10 7.1: the A-ASSOCIATE-AC and the file meta carry ainode's own UID and name."""
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink)

    result = run_dcmtk(
        "storescu", "-d", "-aet", PACS_AE, "-aec", NODE_AE, LOCALHOST, str(scp.port), str(pydicom_file("CT_small.dcm"))
    )

    assert result.returncode == 0, result.stderr
    assert f"Their Implementation Class UID:    {IMPLEMENTATION_CLASS_UID}\n" in result.stderr
    assert f"Their Implementation Version Name: {IMPLEMENTATION_VERSION_NAME}\n" in result.stderr
    meta = dcmread(BytesIO(sink.requests[0].data), stop_before_pixels=True).file_meta
    assert (meta.ImplementationClassUID, meta.ImplementationVersionName) == (
        IMPLEMENTATION_CLASS_UID,
        IMPLEMENTATION_VERSION_NAME,
    )
    assert meta.SourceApplicationEntityTitle == PACS_AE
