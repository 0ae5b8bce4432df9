"""core.dicomfile.encode_part10: what the node writes names ainode in its File Meta Information."""

from __future__ import annotations

from io import BytesIO

import pydicom
from pydicom.data import get_testdata_file

from core.dicomfile import encode_part10
from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME


def test_encoded_file_names_ainode_and_keeps_the_data_set() -> None:
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert source.file_meta.ImplementationClassUID != IMPLEMENTATION_CLASS_UID
    encoded = encode_part10(source)
    assert encoded[128:132] == b"DICM"
    back = pydicom.dcmread(BytesIO(encoded))
    assert back.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert back.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert back.SOPInstanceUID == source.SOPInstanceUID
    assert back.PixelData == source.PixelData


def test_implementation_identity_is_valid_dicom() -> None:
    # PS3.5 9.1: a UID of at most 64 characters, digits and dots, no leading zero in a component;
    # PS3.7 D.3.3.2.3: version name at most 16 characters.
    assert len(IMPLEMENTATION_CLASS_UID) <= 64
    assert all(part == "0" or not part.startswith("0") for part in IMPLEMENTATION_CLASS_UID.split("."))
    assert 1 <= len(IMPLEMENTATION_VERSION_NAME) <= 16
