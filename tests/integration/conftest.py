"""Fixtures of the end-to-end tests: ``ct_node``, one ``ainode serve`` per module that sends its results back to the
module's Orthanc (test_ct_pipelines.py, test_ct_plausibility_delivery.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.helpers import OrthancServer
from tests.integration.nodeproc import NodeProcess


@pytest.fixture(scope="module")
def ct_node(module_orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One node for the module, sending results back to the module's Orthanc by C-STORE."""
    orthanc = module_orthanc
    node = NodeProcess(
        tmp_path_factory.mktemp("ct-node"),
        full_models=True,
        destinations={
            "orthanc": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
        quiet_period={"default": 1.0, "CR": 0.5, "DX": 0.5},
    )
    node.start()
    try:
        time.sleep(0.5)  # the start-up report is logged right after the port opens
        for pipeline in ("ct_pe", "ct_lumbar"):
            assert f"pipeline {pipeline!r} disabled" not in node.log(), node.log()
        orthanc.add_modality("ainode", "AINODE", node.port)
        yield node
    finally:
        node.stop()
