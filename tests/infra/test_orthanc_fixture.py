"""The Orthanc fixture starts a real server that stores, forwards and serves DICOMweb."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from dicomweb_client.api import DICOMwebClient
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification

from tests.helpers import OrthancServer, echoscu, free_port, lateral_radiograph


def test_orthanc_answers_rest_and_loads_dicomweb(orthanc: OrthancServer) -> None:
    system = orthanc.api.get_system()
    assert system["Version"].startswith("1.")
    assert system["DicomAet"] == "ORTHANC"
    assert system["DicomPort"] == orthanc.dicom_port
    assert orthanc.api.has_loaded_plugin("dicom-web")
    assert orthanc.instance_count() == 0


def test_orthanc_accepts_c_echo_from_dcmtk(orthanc: OrthancServer) -> None:
    proc = echoscu("127.0.0.1", orthanc.dicom_port, orthanc.aet, "ANYONE")
    assert proc.returncode == 0, proc.stderr


def test_storescu_lands_rg1_in_orthanc(orthanc: OrthancServer, rg1_uncr: Path) -> None:
    orthanc.store_with_storescu([rg1_uncr])

    source = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)
    [stored] = orthanc.wait_for_instances(study_uid=source.StudyInstanceUID, modality="CR", timeout=5)
    assert orthanc.instance_count() == 1
    assert stored.sop_instance_uid == source.SOPInstanceUID
    assert stored.sop_class_uid == source.SOPClassUID
    downloaded = pydicom.dcmread(io.BytesIO(orthanc.download_instance(stored.id)))
    assert downloaded.SOPInstanceUID == source.SOPInstanceUID
    assert downloaded.PixelData == pydicom.dcmread(rg1_uncr).PixelData


def test_stow_rs_into_dicomweb_url(orthanc: OrthancServer, tmp_path: Path) -> None:
    lateral = pydicom.dcmread(lateral_radiograph(tmp_path))
    client = DICOMwebClient(url=orthanc.dicomweb_url)

    client.store_instances([lateral])

    [stored] = orthanc.wait_for_instances(study_uid=lateral.StudyInstanceUID, timeout=5)
    assert stored.modality == "DX"
    assert stored.sop_instance_uid == lateral.SOPInstanceUID
    found = client.search_for_studies(search_filters={"StudyInstanceUID": lateral.StudyInstanceUID})
    assert len(found) == 1


def test_forward_study_reaches_a_dicom_peer(orthanc_factory: Callable[..., OrthancServer], rg1_uncr: Path) -> None:
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    port = free_port()
    peer = AE(ae_title="PEER")
    peer.add_supported_context(ComputedRadiographyImageStorage)
    peer.add_supported_context(Verification)
    server = peer.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        orthanc = orthanc_factory(modalities={"peer": ["PEER", "127.0.0.1", port]})
        orthanc.upload(rg1_uncr)
        source = pydicom.dcmread(rg1_uncr, stop_before_pixels=True)

        answer = orthanc.forward_study(source.StudyInstanceUID, "peer")
    finally:
        server.shutdown()

    assert answer["InstancesCount"] == 1
    assert answer["FailedInstancesCount"] == 0
    assert received == [source.SOPInstanceUID]


def test_modality_added_at_run_time_is_used(orthanc: OrthancServer) -> None:
    port = free_port()
    peer = AE(ae_title="LATEPEER")
    peer.add_supported_context(Verification)
    server = peer.start_server(("127.0.0.1", port), block=False)
    try:
        orthanc.add_modality("late", "LATEPEER", port)
        answer = orthanc.api.post("modalities/late/echo", json={}).status_code
    finally:
        server.shutdown()
    assert answer == 200


def test_stop_ends_the_process_and_frees_the_port(tmp_path: Path) -> None:
    server = OrthancServer(tmp_path / "orthanc").start()
    started = time.monotonic()
    server.stop()
    assert not server.running
    assert time.monotonic() - started < 10
    # The HTTP port is free again: binding it succeeds.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", server.http_port))


def test_module_orthanc_is_shared_within_a_module(module_orthanc: OrthancServer, tmp_path: Path) -> None:
    before = module_orthanc.instance_count()
    ids = module_orthanc.upload(lateral_radiograph(tmp_path))
    assert len(ids) == 1
    assert module_orthanc.instance_count() == before + 1


def test_module_orthanc_keeps_what_earlier_tests_stored(module_orthanc: OrthancServer) -> None:
    assert module_orthanc.running
    assert module_orthanc.instance_count() >= 1
