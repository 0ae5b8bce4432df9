"""The conformance statement (``ainode conformance``, docs/conformance.md) says what the code does.

- the committed docs/conformance.md is the command's output (a change of the SCP's tables, the
  defaults, the writers or the codes without regenerating the document fails here);
- a real :class:`dimse.StorageSCP` on loopback accepts every abstract syntax of the statement's SCP
  table, and every transfer syntax of its transfer-syntax table, when a pynetdicom requestor proposes
  them, and rejects one of each outside the tables;
- the created SOP classes the statement names are those the writers really make, in the transfer
  syntax it names.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from core import status
from core.dicomfile import encode_part10
from core.sop import WRITTEN_SOP_CLASSES
from dimse import AllowedPeer, StorageSCP, StoreRequest
from dimse.commands import VERIFICATION_SOP_CLASS
from node.conformance import SCP_STORAGE_TABLE_TITLE, SCP_TRANSFER_TABLE_TITLE, lines_of_table
from tests.helpers.cli import REPO, ainode

STATEMENT = REPO / "docs" / "conformance.md"
HINT = "docs/conformance.md is not what the code says: run `ainode conformance --output docs/conformance.md`"
NODE_AE, PEER_AE = "AINODE", "CONFORMANCE"
#: Abstract and transfer syntaxes the SCP must refuse: Modality Worklist FIND (not a storage class) and
#: High-Throughput JPEG 2000 (a syntax the SCP does not take).
OUTSIDE_ABSTRACT = "1.2.840.10008.5.1.4.31"
OUTSIDE_TRANSFER = "1.2.840.10008.1.2.4.201"
#: pynetdicom's A-ASSOCIATE-AC results (PS3.8 Table 9-18).
ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x03, 0x04


def test_committed_statement_is_the_commands_output(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\n")
    run = ainode("conformance", config=config)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("# ainode DICOM Conformance Statement\n")
    _same_as_committed(run.stdout)


def test_output_option_writes_the_statement_of_the_defaults_not_the_sites_values(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    # A site's own values do not enter the statement: it documents the defaults of the version.
    config.write_text(f"data_dir: {tmp_path / 'var'}\nae_title: SITE_AE\nport: 104\n")
    out = tmp_path / "statement.md"
    run = ainode("conformance", "--output", str(out), config=config)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    text = out.read_text(encoding="utf-8")
    _same_as_committed(text)
    assert "SITE_AE" not in text and "| Storage AE | `ae_title` | AINODE | `port` | 11112 |" in text


def _same_as_committed(text: str) -> None:
    """Fail with the hint and the first line that differs, not a diff of two 1000-line strings."""
    committed = STATEMENT.read_text(encoding="utf-8")
    if text != committed:
        new, old = text.splitlines(), committed.splitlines()
        line = next((i for i, (a, b) in enumerate(zip(new, old, strict=False)) if a != b), min(len(new), len(old)))
        pytest.fail(f"{HINT} (first difference at line {line + 1})", pytrace=False)


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StorageSCP]:
    def sink(request: StoreRequest) -> int:
        return status.SUCCESS

    server = StorageSCP(
        ae_title=NODE_AE,
        port=0,
        host="127.0.0.1",
        sink=sink,
        allowed_peers=[AllowedPeer(PEER_AE)],
        incoming_dir=tmp_path,
    )
    server.start()
    yield server
    server.stop(timeout=5)


def _statement_column(title: str, column: int) -> list[str]:
    return [row[column] for row in lines_of_table(STATEMENT.read_text(encoding="utf-8"), title)]


def _negotiate(scp: StorageSCP, contexts: Sequence[tuple[str, Sequence[str]]]) -> dict[tuple[str, str], int]:
    """Propose ``contexts`` (at most 128) and return ``{(abstract, transfer): result}`` of each context."""
    ae = AE(ae_title=PEER_AE)
    ae.acse_timeout = ae.network_timeout = 10
    for abstract, transfers in contexts:
        ae.add_requested_context(abstract, transfers)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title=NODE_AE)
    assert assoc.is_established, "the SCP did not accept the association"
    try:
        results: dict[tuple[str, str], int] = {}
        for cx in assoc.accepted_contexts:
            results[(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))] = 0
        for cx in assoc.rejected_contexts:
            results[(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))] = -1 if cx.result is None else cx.result
        return results
    finally:
        assoc.release()


def test_scp_accepts_every_abstract_syntax_of_the_statement_and_nothing_else(scp: StorageSCP) -> None:
    storage = _statement_column(SCP_STORAGE_TABLE_TITLE, 1)
    assert len(storage) > 150 and len(set(storage)) == len(storage)
    assert OUTSIDE_ABSTRACT not in storage
    proposed = [VERIFICATION_SOP_CLASS, *storage]
    for start in range(0, len(proposed), 127):  # 127 and one outside per association (128 at most)
        batch = proposed[start : start + 127]
        results = _negotiate(
            scp, [(uid, [ExplicitVRLittleEndian]) for uid in batch] + [(OUTSIDE_ABSTRACT, [ExplicitVRLittleEndian])]
        )
        refused = [uid for uid in batch if results[(uid, ExplicitVRLittleEndian)] != 0]
        assert refused == [], f"the statement lists SOP classes the SCP refuses: {refused}"
        assert results[(OUTSIDE_ABSTRACT, ExplicitVRLittleEndian)] == ABSTRACT_SYNTAX_NOT_SUPPORTED


def test_scp_accepts_every_transfer_syntax_of_the_statement_and_nothing_else(scp: StorageSCP) -> None:
    syntaxes = _statement_column(SCP_TRANSFER_TABLE_TITLE, 1)
    assert ExplicitVRLittleEndian in syntaxes and ImplicitVRLittleEndian in syntaxes
    assert OUTSIDE_TRANSFER not in syntaxes
    for sop_class in (CTImageStorage, WRITTEN_SOP_CLASSES["sr"]):
        # one context per syntax, so that the SCP answers each one on its own
        results = _negotiate(scp, [(sop_class, [ts]) for ts in [*syntaxes, OUTSIDE_TRANSFER]])
        refused = [ts for ts in syntaxes if results[(sop_class, ts)] != 0]
        assert refused == [], f"the statement lists transfer syntaxes the SCP refuses: {refused}"
        assert results[(sop_class, OUTSIDE_TRANSFER)] == TRANSFER_SYNTAXES_NOT_SUPPORTED


def _written_objects() -> dict[str, pydicom.Dataset]:
    """One object of each writer of the node, built from the writer tests' scenarios."""
    from sr_writer import (
        build_key_object_selection,
        build_lumbar_report,
        build_measurement_report,
        build_pe_report,
        build_presentation_state,
        build_secondary_capture,
        build_slice_labels,
        build_tissue_segmentation,
    )
    from tests.helpers import rg1_uncr_path
    from tests.sr_writer.scenarios import cxr_result, series
    from tests.sr_writer.test_ct_objects import LEVELS, ct_series, headers, lumbar_result, pe_result

    radiograph = pydicom.dcmread(rg1_uncr_path())
    slices = ct_series(len(LEVELS))
    lumbar = lumbar_result(slices)
    labels = {str(s.SOPInstanceUID): level for s, level in zip(slices, LEVELS, strict=True)}
    disc = np.zeros((64, 64), dtype=bool)
    disc[20:40, 20:40] = True
    masks = {"muscle": disc, "subcutaneous_fat": ~disc, "visceral_fat": np.zeros_like(disc)}
    masks["visceral_fat"][30:35, 30:35] = True
    masks["muscle"] = masks["muscle"] & ~masks["visceral_fat"]
    return {
        "sr": build_measurement_report(cxr_result(radiograph), [radiograph], params=series(990)),
        "gsps": build_presentation_state(cxr_result(radiograph), [radiograph], params=series(991)),
        "sc": build_secondary_capture(cxr_result(radiograph), radiograph, params=series(992)),
        "ct_sr": build_pe_report(pe_result(slices), headers(slices), params=series(993)),
        "kos": build_key_object_selection(
            pe_result(slices),
            headers(slices),
            [str(slices[3].SOPInstanceUID)],
            title="of_interest",
            params=series(995),
            description="key slice",
        ),
        "seg": build_tissue_segmentation(slices[7], masks, lumbar.algorithms[0], params=series(996)),
        "slice_labels": build_slice_labels(lumbar, headers(slices), labels, params=series(997)),
        "lumbar_sr": build_lumbar_report(lumbar, headers(slices), params=series(994)),
    }


def test_created_sop_classes_of_the_statement_are_what_the_writers_make() -> None:
    objects = _written_objects()
    lumbar = objects.pop("lumbar_sr")
    assert set(objects) == set(WRITTEN_SOP_CLASSES), "a writer without a WRITTEN_SOP_CLASSES entry, or one too many"
    for writer, ds in [*objects.items(), ("ct_sr", lumbar)]:
        assert ds.SOPClassUID == WRITTEN_SOP_CLASSES[writer], writer
        meta = pydicom.dcmread(pydicom.filebase.DicomBytesIO(encode_part10(ds))).file_meta
        # the statement says results are written in Explicit VR Little Endian
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian, writer
    text = STATEMENT.read_text(encoding="utf-8")
    for writer, uid in WRITTEN_SOP_CLASSES.items():
        assert f"({uid}) | `sr_writer.{writer}` |" in text, HINT


def test_every_status_the_scp_and_the_receiver_answer_is_in_the_statement() -> None:
    """A new C-STORE status in the SCP or the receiver needs its cause in core.status.STORE_SCP_CAUSES."""
    import dimse._association
    import dimse._incoming
    import dimse.scp
    import node.receiver

    used: dict[int, str] = {}
    for module in (dimse.scp, dimse._association, dimse._incoming, node.receiver):
        for name in re.findall(r"\bstatus\.([A-Z][A-Z_0-9]+)\b", inspect.getsource(module)):
            used[getattr(status, name)] = f"{module.__name__}: status.{name}"
    assert len(used) >= 5, "the SCP's and receiver's statuses are no longer read as status.NAME"
    missing = sorted(where for code, where in used.items() if code not in status.STORE_SCP_CAUSES)
    assert missing == [], f"statuses answered to a C-STORE without a cause in STORE_SCP_CAUSES: {missing}"
    rows = lines_of_table(STATEMENT.read_text(encoding="utf-8"), "C-STORE response statuses (SCP)")
    assert {int(row[0], 16) for row in rows} == set(status.STORE_SCP_CAUSES), HINT
