"""``POST /api/pull`` through a node process and the real puller: a study in Orthanc, pulled by HTTP.

A RIS or a script triggers a pull with a token: the node finds the study in
Orthanc by accession number over QIDO-RS, retrieves it over WADO-RS into its
receiver, analyses it and sends its SR back to Orthanc. A second pull of the
same accession answers 200 with the series skipped (nothing retrieved, no second
SR). A source that is not configured is 404, a source that is down 502, a call
without a token 401; every answer is one JSON object.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import requests

from node.db import AuditEvent, AuditKind
from node.sample import write_sample
from tests.helpers import OrthancServer
from tests.helpers.ports import free_port
from tests.integration.nodeproc import NodeProcess

TOKEN = "pull-token-of-the-integration-test-0123456789"


def test_a_pull_by_http_retrieves_the_study_and_its_sr_reaches_orthanc(tmp_path: Path, orthanc: OrthancServer) -> None:
    token_file = tmp_path / "ris.token"
    token_file.write_text(TOKEN)
    http_port = free_port()
    dicom = {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
    node = NodeProcess(
        tmp_path / "node",
        destinations={"orthanc": dicom},
        sources={
            "pacs-web": {"type": "dicomweb", "url": orthanc.dicomweb_url, "timeout": 20},
            "down": {"type": "dicom", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port(), "timeout": 5},
        },
        http_port=http_port,
        http_tokens=[{"name": "ris", "token_file": str(token_file)}],
    )
    [path] = write_sample("cxr", tmp_path / "sample").paths
    ds = pydicom.dcmread(path)
    ds.AccessionNumber = "HTTP-PULL-1"
    ds.save_as(path, enforce_file_format=True)
    orthanc.upload(path)
    study = str(ds.StudyInstanceUID)
    url = f"http://127.0.0.1:{http_port}/api/pull"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    node.start()
    try:
        answer = requests.post(
            url, json={"source": "pacs-web", "accession": "HTTP-PULL-1"}, headers=bearer, timeout=120
        )
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert (result["source"], result["studies"], result["series_requested"]) == ("pacs-web", 1, 1)
        assert (result["instances_received"], result["failed"]) == (1, 0)
        orthanc.wait_for_instances(study_uid=study, modality="SR", timeout=90)
        node.wait_delivered()

        again = requests.post(url, json={"source": "pacs-web", "accession": "HTTP-PULL-1"}, headers=bearer, timeout=120)
        assert again.status_code == 200, again.text
        assert (again.json()["series_requested"], again.json()["series_skipped"]) == (0, 1)
        assert again.json()["instances_received"] == 0

        unknown = requests.post(url, json={"source": "nowhere", "accession": "X"}, headers=bearer, timeout=30)
        assert unknown.status_code == 404 and "nowhere" in unknown.json()["error"]
        down = requests.post(url, json={"source": "down", "accession": "X"}, headers=bearer, timeout=60)
        assert down.status_code == 502 and "\n" not in down.json()["error"]
        anonymous = requests.post(url, json={"source": "pacs-web", "accession": "HTTP-PULL-1"}, timeout=30)
        assert anonymous.status_code == 401
    finally:
        node.stop()
    sr = [i for i in orthanc.instances() if i.study_instance_uid == study and i.modality == "SR"]
    assert len(sr) == 1  # the second pull analysed nothing again
    db = node.database()
    with db.session() as session:
        audited = [e.message for e in session.query(AuditEvent).filter_by(kind=AuditKind.HTTP_REQUEST)]
    db.dispose()
    assert sorted(m.split(":")[0] for m in audited) == [
        "200 POST /api/pull pacs-web accession",
        "200 POST /api/pull pacs-web accession",
        "404 POST /api/pull nowhere accession",
        "502 POST /api/pull down accession",
    ]
    assert "Traceback" not in node.log()
