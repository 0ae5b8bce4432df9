"""Robustness, established associations: P-DATA-TF and DIMSE messages, wrong PDUs in Sta6, releases and aborts.

Expected answers: PS3.8 9.2 (state table: in Sta6 an unexpected PDU -> AA-8, A-ABORT from the service provider
with reason unexpected-PDU; an unrecognised one -> reason unrecognized-PDU; A-ABORT -> AA-3 close), 9.3.5 and
Annex E (PDVs, message control header), PS3.7 9.3.1 / 9.1.1 / 9.1.5 and Annex C (command sets and statuses),
and issue 16 for C-STORE whose SOP class does not match its context (0x0122 or 0xA9xx, nothing stored).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from pydicom import dcmread
from raw_peer import p_data
from robust_harness import (
    ABORT_PDU,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    CT,
    EXPLICIT,
    IMPLICIT,
    LIMITS,
    MARGIN,
    MAX_PDU,
    MR,
    P_DATA,
    RELEASE_RP,
    RELEASE_RQ_PDU,
    VERIFICATION,
    Answer,
    Case,
    Conn,
    MiB,
    command_set,
    data_set,
    echo_rq,
    good_rq,
    message,
    pdu,
    pdu_header,
    pdvs,
    store_rq,
)

pytestmark = pytest.mark.integration

BAD = "127.0.0.3"
# Contexts of every association here: Verification, CT implicit, CT explicit, MR implicit, and one the node refuses.
ECHO_CX, CT_IMPLICIT_CX, CT_EXPLICIT_CX, MR_CX, REFUSED_CX = 1, 3, 5, 7, 9
CONTEXTS = (
    (ECHO_CX, VERIFICATION, (IMPLICIT,)),
    (CT_IMPLICIT_CX, CT, (IMPLICIT,)),
    (CT_EXPLICIT_CX, CT, (EXPLICIT,)),
    (MR_CX, MR, (IMPLICIT,)),
    (REFUSED_CX, "1.2.3.4.5.6.7", (IMPLICIT,)),
)
END = LIMITS["acse_timeout"] + MARGIN
SOP = "1.2.826.0.1.3680043.8.498.99.7"


def _open(case: Case) -> Conn:
    """An established association from the bad peer's address with :data:`CONTEXTS` (its max PDU 64 KiB)."""
    conn = case.connect(BAD)
    got = conn.associate(good_rq(CONTEXTS, max_pdu=65536))
    results = got.context_results()
    assert [results[i] for i in (1, 3, 5, 7)] == [0, 0, 0, 0] and results[REFUSED_CX] != 0, results
    return conn


def _is_failure(status: int) -> bool:
    """A failure status of PS3.7 Annex C (not success, pending, cancel or a warning)."""
    if status in (0x0000, 0xFF00, 0xFF01, 0xFE00, 0x0001, 0x0107, 0x0116):
        return False
    return not 0xB000 <= status <= 0xBFFF


def _refused_store(status: int) -> bool:
    """Issue 16: a C-STORE whose SOP class is wrong or missing is answered 0x0122 or 0xA9xx (PS3.4 B.2.3)."""
    return status == 0x0122 or 0xA900 <= status <= 0xA9FF


def _assert_abort(got: Answer, reason: int | None = None) -> None:
    assert got.is_abort(2, reason), f"expected A-ABORT from the service provider (reason {reason}), got {got}"


def _assert_refused(got: Answer) -> None:
    """A request the node cannot carry out: a response with a failure status, or an A-ABORT from the provider."""
    if got.kind == "PDATA":
        assert _is_failure(got.status), got
    else:
        _assert_abort(got)


# -- Sta6: wrong and unknown PDUs ----------------------------------------------------------------------------------

WRONG_IN_STA6 = {
    "associate-ac": pdu(ASSOCIATE_AC, bytes(70)),
    "associate-rj": pdu(ASSOCIATE_RJ, bytes((0, 1, 1, 1))),
    "release-rp": pdu(RELEASE_RP, bytes(4)),
}


@pytest.mark.parametrize("name", WRONG_IN_STA6)
def test_sta6_unexpected_pdu(case: Case, name: str) -> None:
    """PS3.8 9.2 Sta6, Evt3/Evt4/Evt13 -> AA-8: A-ABORT, service-provider, unexpected-PDU (PS3.8 Table 9-26)."""
    conn = _open(case)
    conn.send(WRONG_IN_STA6[name])
    case.probe()
    _assert_abort(case.record(conn.end(END)), 2)


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x0A, 0xFF])
def test_sta6_unrecognised_pdu(case: Case, pdu_type: int) -> None:
    """PS3.8 9.2 Sta6, Evt19 -> AA-8: A-ABORT, service-provider, unrecognized-PDU."""
    conn = _open(case)
    conn.send(pdu(pdu_type, bytes(8)))
    case.probe()
    _assert_abort(case.record(conn.end(END)), 1)


def test_sta6_abort_closes(case: Case) -> None:
    """PS3.8 9.2 Sta6, Evt16 -> AA-3: the node closes, sends nothing."""
    conn = _open(case)
    conn.send(ABORT_PDU)
    case.probe()
    assert case.record(conn.end(END)).kind == "closed"


def test_sta6_truncated_header_then_close(case: Case) -> None:
    """PS3.8 9.2 Evt17 in Sta6: the transport closes inside a PDU header; the node frees the association."""
    conn = _open(case)
    conn.send(b"\x04\x00\x00")
    conn.sock.shutdown(1)
    case.probe()
    assert case.record(conn.end(END)).kind in ("closed", "reset")


# -- P-DATA-TF structure (PS3.8 9.3.5, Annex E) -----------------------------------------------------------------

BAD_PDATA = {
    "empty-body": pdu(P_DATA, b""),
    "pdv-length-0": pdu(P_DATA, struct.pack(">L", 0)),
    "pdv-length-1": pdu(P_DATA, struct.pack(">LB", 1, ECHO_CX)),
    "pdv-length-past-pdu": pdu(P_DATA, struct.pack(">LBB", 500, ECHO_CX, 3) + echo_rq()),
    "trailing-3-bytes": pdu(P_DATA, pdvs((ECHO_CX, 3, echo_rq())) + b"\x00\x00\x00"),
    "unaccepted-context-11": pdu(P_DATA, pdvs((11, 3, echo_rq()))),
    "refused-context": pdu(P_DATA, pdvs((REFUSED_CX, 3, echo_rq()))),
    "context-0": pdu(P_DATA, pdvs((0, 3, echo_rq()))),
    "data-before-command": pdu(P_DATA, pdvs((CT_IMPLICIT_CX, 2, data_set()))),
    "command-then-data-on-two-contexts": pdu(
        P_DATA, pdvs((CT_IMPLICIT_CX, 3, store_rq()), (CT_EXPLICIT_CX, 2, data_set(implicit=False)))
    ),
    "command-fragment-while-data-expected": pdu(
        P_DATA, pdvs((CT_IMPLICIT_CX, 3, store_rq()), (CT_IMPLICIT_CX, 1, store_rq()))
    ),
    "command-split-over-two-contexts": pdu(
        P_DATA, pdvs((ECHO_CX, 1, echo_rq()[:20]), (CT_IMPLICIT_CX, 3, echo_rq()[20:]))
    ),
}


@pytest.mark.parametrize("name", BAD_PDATA)
def test_invalid_pdata(case: Case, name: str) -> None:
    """PS3.8 9.3.5 / Annex E: a P-DATA-TF with no PDV, a PDV shorter than its header or longer than its PDU, a PDV on a
    context that was not accepted, a data fragment with no command before it, one message spread over two contexts:
    invalid, A-ABORT from the service provider (PS3.8 9.2 Evt19 / AA-8), nothing stored."""
    conn = _open(case)
    conn.send(BAD_PDATA[name])
    case.probe()
    _assert_abort(case.record(conn.end(END)))


def test_command_in_one_byte_pdus(case: Case) -> None:
    """PS3.8 E.2: a command set may be fragmented anywhere; a C-ECHO-RQ in one-byte PDVs, one per PDU, is answered."""
    conn = _open(case)
    command = echo_rq(11)
    conn.send(
        b"".join(
            p_data(ECHO_CX, command[i : i + 1], command=True, last=i == len(command) - 1) for i in range(len(command))
        )
    )
    case.probe()
    got = case.record(conn.answer())
    assert got.kind == "PDATA" and got.status == 0, got


def test_command_in_three_pdvs_of_one_pdu(case: Case) -> None:
    """PS3.8 9.3.5.1: one P-DATA-TF may carry several PDVs of one message."""
    conn = _open(case)
    command = echo_rq(12)
    conn.send(pdu(P_DATA, pdvs((ECHO_CX, 1, command[:7]), (ECHO_CX, 1, command[7:40]), (ECHO_CX, 3, command[40:]))))
    case.probe()
    got = case.record(conn.answer())
    assert got.kind == "PDATA" and got.status == 0, got


def test_pipelined_echoes(case: Case) -> None:
    """PS3.8 9.3.5, PS3.7 9.1.5: 50 C-ECHO-RQs sent back to back are each answered, in order, with their message ID."""
    conn = _open(case)
    conn.send(b"".join(message(ECHO_CX, echo_rq(i)) for i in range(1, 51)))
    case.probe()
    ids = []
    for _ in range(50):
        got = conn.answer()
        assert got.kind == "PDATA" and got.status == 0, got
        ids.append(int(got.commands()[0].MessageIDBeingRespondedTo))
    case.record(f"50 x C-ECHO-RSP 0x0000, ids {ids[0]}..{ids[-1]}")
    assert ids == list(range(1, 51))


@pytest.mark.parametrize("message_id", [0, 65535])
def test_message_id_extremes(case: Case, message_id: int) -> None:
    """PS3.7 E.1: Message ID is any US value; the response carries it back as Message ID Being Responded To."""
    conn = _open(case)
    conn.send(message(ECHO_CX, echo_rq(message_id)))
    case.probe()
    got = case.record(conn.answer())
    assert got.kind == "PDATA" and int(got.commands()[0].MessageIDBeingRespondedTo) == message_id, got


def test_response_sent_to_node_ignored(case: Case) -> None:
    """PS3.7 9.1.5: a C-ECHO-RSP the node never asked for answers nothing; the association goes on."""
    conn = _open(case)
    rsp = command_set(
        AffectedSOPClassUID=VERIFICATION,
        CommandField=0x8030,
        MessageIDBeingRespondedTo=1,
        CommandDataSetType=0x0101,
        Status=0,
    )
    conn.send(message(ECHO_CX, rsp) + message(ECHO_CX, echo_rq(21)))
    case.probe()
    got = case.record(conn.answer())
    assert got.kind == "PDATA" and int(got.commands()[0].MessageIDBeingRespondedTo) == 21, got


def test_cancel_has_no_response(case: Case) -> None:
    """PS3.7 9.3.2.3: C-CANCEL-RQ has no response; the next C-ECHO is answered."""
    conn = _open(case)
    cancel = command_set(CommandField=0x0FFF, MessageIDBeingRespondedTo=1, CommandDataSetType=0x0101)
    conn.send(message(ECHO_CX, cancel) + message(ECHO_CX, echo_rq(22)))
    case.probe()
    got = case.record(conn.answer())
    assert got.kind == "PDATA" and int(got.commands()[0].MessageIDBeingRespondedTo) == 22, got


# -- command sets (PS3.7 6.3.1, 9.3, Annex E) ------------------------------------------------------------------

BAD_COMMANDS = {
    "random-bytes": bytes(range(7, 250, 3)),
    "element-length-past-end": struct.pack("<HHL", 0, 0x0100, 200) + b"\x30\x00",
    "explicit-vr-command": struct.pack("<HH2sHL", 0, 0, b"UL", 4, 0)
    + struct.pack("<HH2sHH", 0, 0x0100, b"US", 2, 0x30),
    "no-command-field": command_set(AffectedSOPClassUID=VERIFICATION, MessageID=1, CommandDataSetType=0x0101),
    "empty-command": b"",
    "odd-length-element": struct.pack("<HHL", 0, 0x0002, 3) + b"1.2",
}


@pytest.mark.parametrize("name", BAD_COMMANDS)
def test_bad_command_set(case: Case, name: str) -> None:
    """PS3.7 6.3.1 / Annex E: a command set that cannot be decoded (not Implicit VR Little Endian, lengths past its
    end, no Command Field): the node cannot answer it, so the association is aborted (A-ABORT, service provider) or
    the request gets a failure status; the node keeps serving."""
    conn = _open(case)
    conn.send(p_data(ECHO_CX, BAD_COMMANDS[name], command=True, last=True))
    case.probe()
    got = case.record(conn.answer(END))
    _assert_refused(got)


def test_command_group_length_wrong(case: Case) -> None:
    """PS3.7 E.1: Command Group Length (0000,0000) says 9999 bytes where 70 follow. The node reads the elements that
    are there (a C-ECHO-RSP) or refuses the command (A-ABORT, or a failure status); it does not wait for the 9999."""
    conn = _open(case)
    conn.send(p_data(ECHO_CX, struct.pack("<HHLL", 0, 0, 4, 9999) + echo_rq(61)[12:], command=True, last=True))
    case.probe()
    got = case.record(conn.answer(END))
    assert got.kind in ("PDATA", "ABORT"), got
    if got.kind == "ABORT":
        _assert_abort(got)


@pytest.mark.parametrize(
    ("field", "context"),
    [(0x0FF0, ECHO_CX), (0x0110, ECHO_CX), (0x0020, CT_IMPLICIT_CX), (0x0021, CT_IMPLICIT_CX)],
    ids=["unknown-0x0FF0", "n-get", "c-find", "c-move"],
)
def test_unsupported_command(case: Case, field: int, context: int) -> None:
    """PS3.7 C.4.2 / 9.1: an operation the node does not perform is answered with a failure (0x0211 unrecognized
    operation), with no data set; the association goes on."""
    conn = _open(case)
    command = command_set(AffectedSOPClassUID=VERIFICATION, CommandField=field, MessageID=31, CommandDataSetType=0x0101)
    conn.send(message(context, command))
    case.probe()
    got = case.record(conn.answer())
    assert got.kind == "PDATA" and _is_failure(got.status), got
    conn.send(message(ECHO_CX, echo_rq(32)))
    after = conn.answer()
    assert after.kind == "PDATA" and after.status == 0, after


# -- C-STORE content (PS3.4 B.2, PS3.7 9.1.1, issue 16) ----------------------------------------------------------

STORE_REFUSALS = {
    # name: (context, command, data set)
    "ct-on-verification-context": (ECHO_CX, store_rq(CT, SOP), data_set(CT, SOP)),
    "mr-on-ct-context": (CT_IMPLICIT_CX, store_rq(MR, SOP), data_set(MR, SOP)),
    "ct-on-mr-context": (MR_CX, store_rq(CT, SOP), data_set(CT, SOP)),
    "no-affected-sop-class": (CT_IMPLICIT_CX, store_rq(None, SOP), data_set(CT, SOP)),
    "verification-class-on-ct-context": (CT_IMPLICIT_CX, store_rq(VERIFICATION, SOP), data_set(CT, SOP)),
}


@pytest.mark.parametrize("name", STORE_REFUSALS)
def test_store_sop_class_mismatch(case: Case, name: str) -> None:
    """Issue 16, PS3.7 9.1.1 / PS3.8 9.3.5: the Affected SOP Class of a C-STORE is its context's abstract syntax. On
    the Verification context, of another class, or missing: 0x0122 or 0xA9xx, nothing stored."""
    context, command, data = STORE_REFUSALS[name]
    conn = _open(case)
    conn.send(message(context, command, data))
    case.probe()
    got = case.record(conn.answer())
    assert got.kind == "PDATA" and _refused_store(got.status), got


OTHER_BAD_STORES = {
    "no-affected-sop-instance": (store_rq(CT, None), data_set(CT, SOP)),
    "empty-data-set": (store_rq(CT, SOP), b""),
    "garbage-data-set": (store_rq(CT, SOP), bytes(range(256)) * 8),
    "data-set-without-sop-uids": (store_rq(CT, SOP), data_set(CT, SOP)[data_set(CT, SOP).index(b"\x10\x00\x10\x00") :]),
}


@pytest.mark.parametrize("name", OTHER_BAD_STORES)
def test_store_bad_content(case: Case, name: str) -> None:
    """PS3.4 B.2.3, PS3.7 C.4: a C-STORE without an Affected SOP Instance UID, with an empty or undecodable data set,
    or a data set lacking its SOP Class and Instance UIDs, gets a failure status and nothing is stored."""
    command, data = OTHER_BAD_STORES[name]
    conn = _open(case)
    conn.send(message(CT_IMPLICIT_CX, command, data))
    case.probe()
    got = case.record(conn.answer())
    case.stores = got.kind == "PDATA" and got.status == 0  # a success stores; the status check below refuses it
    _assert_refused(got)


def test_store_command_without_data_set(case: Case) -> None:
    """PS3.7 9.3.1.1: a C-STORE-RQ has a data set; one whose Command Data Set Type says none gets a failure."""
    conn = _open(case)
    command = command_set(
        AffectedSOPClassUID=CT,
        CommandField=1,
        MessageID=41,
        Priority=0,
        CommandDataSetType=0x0101,
        AffectedSOPInstanceUID=SOP,
    )
    conn.send(message(CT_IMPLICIT_CX, command))
    case.probe()
    got = case.record(conn.answer())
    assert got.kind == "PDATA" and _is_failure(got.status), got


def _new_spool_files(case: Case) -> list[Path]:
    return [p for p in set(case.node.stored()) - set(case.stored_before) if "spool" in p.parts]


def _data_set_is_explicit(path: Path) -> bool:
    """Whether the data set after a file's meta is in explicit VR (its first element carries a two-letter VR)."""
    raw = path.read_bytes()
    meta_length = struct.unpack_from("<L", raw, 128 + 4 + 8)[0]  # (0002,0000) UL value
    first = 128 + 4 + 12 + meta_length
    return raw[first + 4 : first + 6].isalpha() and raw[first + 4 : first + 6].isupper()


@pytest.mark.parametrize(
    ("context", "implicit_data"),
    [(CT_IMPLICIT_CX, False), (CT_EXPLICIT_CX, True)],
    ids=["explicit-data-on-implicit-context", "implicit-data-on-explicit-context"],
)
def test_store_vr_mismatch(case: Case, context: int, implicit_data: bool) -> None:
    """Issue 16 (a stored file was unreadable: meta said implicit VR, data explicit), PS3.5 10.1: a data set not in
    its context's transfer syntax is refused with 0xC210 (cannot understand) and nothing is stored; were it stored,
    the file's meta would have to name the encoding its data set is in."""
    sop = SOP + (".1" if implicit_data else ".2")
    conn = _open(case)
    conn.send(message(context, store_rq(CT, sop), data_set(CT, sop, implicit=implicit_data)))
    case.probe()
    got = case.record(conn.answer())
    assert got.kind == "PDATA", got
    files = _new_spool_files(case)
    for path in files:
        meta = dcmread(path, stop_before_pixels=True).file_meta
        assert (meta.TransferSyntaxUID == IMPLICIT) == (not _data_set_is_explicit(path)), (
            f"stored with meta {meta.TransferSyntaxUID} over a data set in the other VR"
        )
    assert got.status == 0xC210 and not files, (got, files)


def test_store_instance_uid_mismatch(case: Case) -> None:
    """PS3.4 B.2.3 / PS3.10 7.1: command says one SOP Instance UID, the data set another. Refused, or stored in a
    file whose meta agrees with its data set (Media Storage SOP Instance UID = SOP Instance UID)."""
    conn = _open(case)
    conn.send(message(CT_IMPLICIT_CX, store_rq(CT, SOP + ".10"), data_set(CT, SOP + ".11")))
    case.probe()
    got = case.record(conn.answer())
    assert got.kind == "PDATA", got
    if _is_failure(got.status):
        return
    case.stores = True
    files = _new_spool_files(case)
    assert len(files) == 1, files
    ds = dcmread(files[0])
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID, (
        ds.file_meta.MediaStorageSOPInstanceUID,
        ds.SOPInstanceUID,
    )


def test_store_in_many_odd_fragments(case: Case) -> None:
    """PS3.8 E.2: a data set in 500 fragments of uneven sizes (1 to 97 bytes), several per PDU, is stored whole."""
    sop = SOP + ".20"
    data = data_set(CT, sop, pixels=16000)
    pieces, offset, size = [], 0, 1
    while offset < len(data):
        pieces.append(data[offset : offset + size])
        offset += size
        size = size % 97 + 13
    parts = [(CT_IMPLICIT_CX, 0, piece) for piece in pieces]
    parts[-1] = (CT_IMPLICIT_CX, 2, pieces[-1])
    pdus = [pdu(P_DATA, pdvs(*parts[i : i + 7])) for i in range(0, len(parts), 7)]
    conn = _open(case)
    conn.send(p_data(CT_IMPLICIT_CX, store_rq(CT, sop), command=True, last=True) + b"".join(pdus))
    case.probe()
    case.stores = True
    got = case.record(conn.answer())
    assert got.kind == "PDATA" and got.status == 0, got
    files = _new_spool_files(case)
    assert len(files) == 1 and files[0].read_bytes().endswith(data), files


def test_store_fragments_at_max_pdu(case: Case) -> None:
    """PS3.8 D.1: P-DATA-TF PDUs exactly as long as the node's advertised maximum are accepted and stored."""
    sop = SOP + ".21"
    data = data_set(CT, sop, pixels=3 * MAX_PDU)
    fragment = MAX_PDU - 6  # a PDV's length and header within the PDU's maximum length
    conn = _open(case)
    conn.send(message(CT_IMPLICIT_CX, store_rq(CT, sop), data, fragment=fragment))
    case.probe()
    case.stores = True
    got = case.record(conn.answer())
    assert got.kind == "PDATA" and got.status == 0, got


def test_pdata_longer_than_max_pdu_refused(case: Case) -> None:
    """Issue 16, PS3.8 D.1: a P-DATA-TF longer than the maximum the node advertised is refused (A-ABORT), nothing
    stored."""
    sop = SOP + ".22"
    data = data_set(CT, sop, pixels=3 * MAX_PDU)
    conn = _open(case)
    conn.send(message(CT_IMPLICIT_CX, store_rq(CT, sop), data, fragment=MAX_PDU + 1000))
    case.probe()
    _assert_abort(case.record(conn.end(END)))


@pytest.mark.parametrize("declared", [2**32 - 1, 16 * MiB])
def test_pdata_huge_declared_length(case: Case, declared: int) -> None:
    """Issue 16 'memory before checks': a P-DATA-TF header in an association declaring 16 MiB or 2^32-1 bytes, past
    the advertised maximum, is refused from its header (A-ABORT) without allocating its body."""
    conn = _open(case)
    conn.send(pdu_header(P_DATA, declared) + bytes(4096))
    case.probe()
    _assert_abort(case.record(conn.end(END)))
    assert case.rss_growth < 8 * MiB, f"RSS grew {case.rss_growth / MiB:.1f} MiB"


# -- endings (PS3.8 9.2, 7.2, 7.3) --------------------------------------------------------------------------------


def test_release_mid_message(case: Case) -> None:
    """PS3.8 9.2 Sta6 Evt12: A-RELEASE-RQ after a C-STORE's command and part of its data set: the node answers
    A-RELEASE-RP (the half message is dropped) or aborts; nothing is stored."""
    conn = _open(case)
    conn.send(p_data(CT_IMPLICIT_CX, store_rq(CT, SOP + ".30"), command=True, last=True))
    conn.send(p_data(CT_IMPLICIT_CX, data_set(CT, SOP + ".30")[:40], command=False, last=False))
    conn.send(RELEASE_RQ_PDU)
    case.probe()
    got = case.record(conn.end(END))
    assert got.kind in ("RP", "ABORT"), got


@pytest.mark.parametrize("how", ["abort", "close"])
def test_abort_or_close_mid_message(case: Case, how: str) -> None:
    """PS3.8 9.2 Evt16/Evt17 in Sta6: an A-ABORT, or the connection closed, after 1 MiB of a data set without its
    last fragment: nothing stored, no partial file left."""
    conn = _open(case)
    conn.send(p_data(CT_IMPLICIT_CX, store_rq(CT, SOP + ".31"), command=True, last=True))
    chunk = p_data(CT_IMPLICIT_CX, bytes(60000), command=False, last=False)
    conn.send(chunk * 18)
    case.probe()
    if how == "abort":
        conn.send(ABORT_PDU)
        got = case.record(conn.end(END))
        assert got.kind in ("closed", "reset"), got
    else:
        conn.close()
        case.record("closed by the peer")


def test_release_twice(case: Case) -> None:
    """PS3.8 9.2 Sta13: after A-RELEASE-RP the node waits for the close; a second A-RELEASE-RQ gets no second RP and
    the connection ends by the ARTIM timer at the latest."""
    conn = _open(case)
    conn.send(RELEASE_RQ_PDU)
    first = conn.answer()
    assert first.kind == "RP", first
    conn.send(RELEASE_RQ_PDU)
    case.probe()
    got = case.record(conn.end(END))
    assert got.kind in ("closed", "reset", "ABORT"), got


def test_pdata_after_release_rq(case: Case) -> None:
    """PS3.8 9.2: a C-ECHO-RQ behind an A-RELEASE-RQ is not answered; the node answers A-RELEASE-RP and ends."""
    conn = _open(case)
    conn.send(RELEASE_RQ_PDU + message(ECHO_CX, echo_rq(51)))
    case.probe()
    first = conn.answer()
    assert first.kind == "RP", first
    got = case.record(conn.end(END))
    assert got.kind in ("closed", "reset", "ABORT", "silent"), got
    assert got.kind != "PDATA"


def test_idle_association_times_out(case: Case) -> None:
    """PS3.8 9.1.5 / issue 16: an established association that sends nothing is aborted (service provider) after the
    network timeout."""
    conn = _open(case)
    case.probe()
    got = case.record(conn.end(LIMITS["network_timeout"] + MARGIN))
    _assert_abort(got)


def test_stalled_message_times_out(case: Case) -> None:
    """Issue 16: a message begun (command and part of the data set) and then left hanging is aborted after the DIMSE
    timeout, however the connection trickles; nothing stored."""
    conn = _open(case)
    conn.send(p_data(CT_IMPLICIT_CX, store_rq(CT, SOP + ".32"), command=True, last=True))
    conn.send(p_data(CT_IMPLICIT_CX, bytes(100), command=False, last=False))
    case.probe()
    got = case.record(conn.end(LIMITS["dimse_timeout"] + MARGIN))
    _assert_abort(got)


def test_real_store_stored(case: Case) -> None:
    """The control case (PS3.4 B.2): a valid C-STORE of a small CT in Explicit VR Little Endian is stored as sent."""
    sop = SOP + ".40"
    data = data_set(CT, sop, implicit=False, pixels=512)
    conn = _open(case)
    conn.send(message(CT_EXPLICIT_CX, store_rq(CT, sop), data))
    case.probe()
    case.stores = True
    got = case.record(conn.answer())
    assert got.kind == "PDATA" and got.status == 0, got
    files = _new_spool_files(case)
    assert len(files) == 1 and files[0].read_bytes().endswith(data), files


# -- Sta13: after the node's A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT (PS3.8 9.2, Table 9-10) -----------------------


def _to_sta13(case: Case, how: str) -> Conn:
    """A connection on which the node has sent its last PDU and waits for the close (Sta13)."""
    conn = case.connect(BAD)
    if how == "after-rj":
        conn.send(good_rq(calling="INTRUDER"))
        assert conn.answer().is_rj(1, 1, 3)
    elif how == "after-rp":
        conn.associate(good_rq(CONTEXTS))
        conn.send(RELEASE_RQ_PDU)
        assert conn.answer().kind == "RP"
    else:
        conn.associate(good_rq(CONTEXTS))
        conn.send(pdu(0x0A, bytes(4)))
        assert conn.answer().is_abort(2, 1)
    return conn


STA13_PDUS = {
    "p-data": (message(ECHO_CX, echo_rq(71)), "ignored"),  # Evt10 -> AA-6
    "release-rq": (RELEASE_RQ_PDU, "ignored"),  # Evt12 -> AA-6
    "associate-rq": (good_rq(), "abort"),  # Evt6 -> AA-7
    "unrecognised": (pdu(0x0B, bytes(4)), "abort"),  # Evt19 -> AA-7
}


@pytest.mark.parametrize("name", STA13_PDUS)
@pytest.mark.parametrize("how", ["after-rj", "after-rp", "after-abort"])
def test_sta13_pdus(case: Case, how: str, name: str) -> None:
    """PS3.8 9.2 Sta13 (awaiting the close): a P-DATA-TF or A-RELEASE-RQ is ignored (AA-6); an A-ASSOCIATE-RQ or an
    unrecognised PDU may be answered with A-ABORT (AA-7); nothing else is answered, and the ARTIM timer (the ACSE
    timeout) ends the connection."""
    raw, action = STA13_PDUS[name]
    conn = _to_sta13(case, how)
    conn.send(raw)
    case.probe()
    got = case.record(conn.end(END))
    allowed = ("closed", "reset") if action == "ignored" else ("closed", "reset", "ABORT")
    assert got.kind in allowed, got
