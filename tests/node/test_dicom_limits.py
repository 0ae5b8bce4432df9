"""The dicom_limits settings (issue 16) reach the node's SCP; max_pdu 0 is refused at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.errors import ConfigError
from node.service import Node
from node.settings import DicomLimitsSettings, load_settings


def _environ(tmp_path: Path, **more: str) -> dict[str, str]:
    return {
        "AINODE_DATA_DIR": str(tmp_path / "data"),
        "AINODE_PORT": "0",
        "AINODE_HOST": "127.0.0.1",
        "AINODE_HTTP_PORT": "0",
        "AINODE_DESTINATIONS": "{}",
        "AINODE_DEFAULT_DESTINATIONS": "[]",
        **more,
    }


def test_shipped_defaults_are_the_documented_ones() -> None:
    limits = load_settings(environ={}).dicom_limits
    assert limits == DicomLimitsSettings()
    assert limits.model_dump() == {
        "association_request_timeout": 10,
        "acse_timeout": 30,
        "network_timeout": 60,
        "dimse_timeout": 60,
        "max_negotiating": 64,
        "max_negotiating_per_address": 8,
        "max_dataset_size": 4 << 30,  # room for a 2 GB multi-frame
    }


def test_environment_overrides_reach_the_scp_and_files_land_beside_the_spool(tmp_path: Path) -> None:
    settings = load_settings(
        environ=_environ(
            tmp_path,
            AINODE_DICOM_LIMITS__ASSOCIATION_REQUEST_TIMEOUT="2",
            AINODE_DICOM_LIMITS__MAX_NEGOTIATING="5",
            AINODE_DICOM_LIMITS__MAX_NEGOTIATING_PER_ADDRESS="3",
            AINODE_DICOM_LIMITS__MAX_DATASET_SIZE="1000000",
            AINODE_DICOM_LIMITS__DIMSE_TIMEOUT="7",
        )
    )
    node = Node(settings)

    scp = node.scp
    assert (scp.association_request_timeout, scp.max_negotiating, scp.max_negotiating_per_address) == (2, 5, 3)
    assert (scp.max_dataset_size, scp.dimse_timeout, scp.network_timeout, scp.acse_timeout) == (1000000, 7, 60, 30)
    # the SCP writes where the receiver can keep a file by a rename: the spool's file system
    assert scp._incoming_dir == node.spool.tmp_dir == settings.tmp_dir


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("AINODE_MAX_PDU", "0", "0 ('unlimited' in PS3.8) is not accepted"),
        ("AINODE_MAX_PDU", "4294967296", "less than 4294967296"),
        ("AINODE_DICOM_LIMITS__ASSOCIATION_REQUEST_TIMEOUT", "0", "dicom_limits.association_request_timeout"),
        ("AINODE_DICOM_LIMITS__MAX_NEGOTIATING", "0", "dicom_limits.max_negotiating"),
    ],
)
def test_limits_out_of_range_stop_the_start_with_the_reason(
    tmp_path: Path, variable: str, value: str, words: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ=_environ(tmp_path, **{variable: value}))
    assert words in str(raised.value)
