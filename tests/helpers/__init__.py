"""Shared helpers for the test suite: servers, reference tools, test images.

Fixtures built on these live in ``tests/conftest.py``; import the functions
with ``from tests.helpers import ...``.
"""

from . import externals
from .dicom_tools import (
    DciodvfyReport,
    assert_dciodvfy_clean,
    dciodvfy,
    echoscu,
    pynetdicom_store,
    require_tool,
    storescu,
    tool_env,
)
from .orthanc import OrthancInstance, OrthancServer, find_dicomweb_plugin
from .ports import free_port, wait_for_port
from .postgres import PostgresServer, find_postgres_bindir
from .radiographs import (
    DX_FOR_PRESENTATION,
    PATIENT_MODULE_KEYWORDS,
    cxr_view_dir,
    frontal_radiograph_from_png,
    lateral_radiograph,
    radiograph_copies,
    radiograph_from_png,
    repo_root,
    rg1_uncr_path,
)

__all__ = [
    "DX_FOR_PRESENTATION",
    "PATIENT_MODULE_KEYWORDS",
    "DciodvfyReport",
    "OrthancInstance",
    "OrthancServer",
    "PostgresServer",
    "assert_dciodvfy_clean",
    "cxr_view_dir",
    "dciodvfy",
    "echoscu",
    "externals",
    "find_dicomweb_plugin",
    "find_postgres_bindir",
    "free_port",
    "frontal_radiograph_from_png",
    "lateral_radiograph",
    "radiograph_copies",
    "radiograph_from_png",
    "repo_root",
    "require_tool",
    "rg1_uncr_path",
    "pynetdicom_store",
    "storescu",
    "tool_env",
    "wait_for_port",
]
