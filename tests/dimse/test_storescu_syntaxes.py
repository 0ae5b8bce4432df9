"""The SCP with DCMTK ``storescu`` under every transfer-syntax proposal option it has for images.

A PACS or modality proposes what its configuration says: uncompressed only,
one JPEG flavour plus uncompressed, all syntaxes in one context (``+C``)...
For each ``storescu`` option a file already in the syntax that option proposes
first is sent; the node must accept the context and store the data set
exactly as sent, in that syntax (never transcoded). The MPEG/HEVC video
options are not here: the node accepts no video syntax, and storescu then
fails the association for want of an accepted context, as it should.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dimse_helpers import LOCALHOST, NODE_AE, PACS_AE, DirectorySink, pydicom_file, run_dcmtk
from pydicom import dcmread
from test_scp_interop import without_padding

#: storescu option(s) -> a pydicom test file in the syntax that option proposes.
PROPOSALS = [
    (("-x=",), "CT_small.dcm"),  # all uncompressed, explicit VR local byte order first (the default)
    (("-xe",), "CT_small.dcm"),  # explicit VR little endian first
    (("-xb",), "MR_small_bigendian.dcm"),  # explicit VR big endian first (retired, still sent by old devices)
    (("-xi",), "MR_small_implicit.dcm"),  # implicit VR little endian only
    (("-xd",), "image_dfl.dcm"),  # deflated explicit VR little endian
    (("-xs",), "JPEG-LL.dcm"),  # JPEG lossless SV1, the "default lossless" of PS3.5
    (("-xy",), "SC_rgb_jpeg_dcmtk.dcm"),  # JPEG baseline (8 bit)
    (("-xx",), "JPEG-lossy.dcm"),  # JPEG extended (12 bit)
    (("-xv",), "MR_small_jp2klossless.dcm"),  # JPEG 2000 lossless
    (("-xw",), "JPEG2000.dcm"),  # JPEG 2000
    (("-xt",), "MR_small_jpeg_ls_lossless.dcm"),  # JPEG-LS lossless
    (("-xu",), "JPEGLSNearLossless_16.dcm"),  # JPEG-LS near-lossless
    (("-xr",), "MR_small_RLE.dcm"),  # RLE lossless
    (("-xs", "+C"), "JPEG-LL.dcm"),  # all proposed syntaxes combined in one presentation context
    (("-xv", "+C"), "MR_small_jp2klossless.dcm"),
    (("-R",), "CT_small.dcm"),  # only the contexts the files need
]


@pytest.mark.parametrize(("options", "name"), PROPOSALS, ids=[" ".join(o) + " " + n for o, n in PROPOSALS])
def test_storescu_proposal_is_accepted_and_stored_as_sent(
    start_scp, tmp_path: Path, options: tuple[str, ...], name: str
) -> None:
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink)
    original = pydicom_file(name)

    result = run_dcmtk(
        "storescu", "-v", *options, "-aet", PACS_AE, "-aec", NODE_AE, LOCALHOST, str(scp.port), str(original)
    )

    assert result.returncode == 0, result.stderr
    assert "Received Store Response (Success)" in result.stderr
    sent = dcmread(original)
    (request,) = sink.requests
    received = dcmread(sink.directory / f"{sent.SOPInstanceUID}.dcm")
    assert request.transfer_syntax_uid == received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert received.PixelData == sent.PixelData
    # Values, not VRs: DCMTK sends encapsulated pixel data of some files as OW where the file says OB.
    sent_values = {element.tag: element.value for element in without_padding(sent)}
    assert {element.tag: element.value for element in without_padding(received)} == sent_values
