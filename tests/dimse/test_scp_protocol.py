"""The SCP's upper layer (PS3.8) and DIMSE codec (PS3.7) against pynetdicom's encoders, and on raw sockets."""

from __future__ import annotations

import struct
import time
from io import BytesIO
from pathlib import Path

import pytest
from dimse_helpers import PACS_AE, DirectorySink, pydicom_file
from pydicom import Dataset, dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dsutils import encode_file_meta as pydicom_file_meta
from pynetdicom.pdu import A_ASSOCIATE_AC, P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, Verification
from raw_peer import RawPeer, associate_rq, p_data

from core import status
from dimse import AssociationEvent
from dimse.commands import decode_command, encode_c_store_rq, encode_file_meta, encode_response
from dimse.scp import SUPPORTED_CONTEXTS
from dimse.upper_layer import (
    CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED,
    CONTEXT_ACCEPTED,
    CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED,
    ProtocolError,
    encode_associate_ac,
    encode_p_data,
    iter_pdvs,
    negotiate,
    parse_associate_rq,
)

CT = str(CTImageStorage)
ECHO = str(Verification)


def command_bytes(message: C_STORE_RQ | C_ECHO_RQ) -> bytes:
    """The command set pynetdicom encodes for a DIMSE request."""
    pdvs = list(message.encode_msg(1, 2**20))
    return b"".join(
        pdv.presentation_data_value_list[0][1][1:] for pdv in pdvs if pdv.presentation_data_value_list[0][1][0] & 1
    )


def store_rq(message_id: int = 7) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = "1.2.3.4.5"
    primitive.Priority = 0
    primitive.DataSet = BytesIO(b"\x08\x00\x18\x00\x0a\x00\x00\x001.2.3.4.5\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return command_bytes(message)


def echo_rq(message_id: int = 3) -> bytes:
    primitive = C_ECHO()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = ECHO
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    return command_bytes(message)


def decode_implicit(encoded: bytes) -> Dataset:
    return read_dataset(DicomBytesIO(encoded), is_implicit_VR=True, is_little_endian=True)


# -- codecs against pynetdicom and pydicom --------------------------------------------------


def test_associate_rq_is_parsed_like_pynetdicom_encodes_it() -> None:
    raw = associate_rq(
        [(1, CT, [JPEG2000, ExplicitVRLittleEndian]), (3, ECHO, [ImplicitVRLittleEndian])],
        max_pdu=32768,
        async_ops=(5, 5),
        roles=[(CT, True, False)],
    )

    request = parse_associate_rq(bytearray(raw[6:]))

    assert (request.calling_ae, request.called_ae) == (PACS_AE, "AINODE")
    assert request.protocol_version == 1
    assert request.application_context == "1.2.840.10008.3.1.1.1"
    assert [(c.context_id, c.abstract_syntax, c.transfer_syntaxes) for c in request.contexts] == [
        (1, CT, (JPEG2000, ExplicitVRLittleEndian)),
        (3, ECHO, (ImplicitVRLittleEndian,)),
    ]
    assert request.max_pdu == 32768
    assert request.implementation_class_uid == "1.2.826.0.1.3680043.9.3811.99"
    assert 0x53 in request.extra_items and 0x54 in request.extra_items


def test_truncated_associate_rq_is_a_protocol_error() -> None:
    raw = associate_rq([(1, CT, [ExplicitVRLittleEndian])])
    with pytest.raises(ProtocolError):
        parse_associate_rq(bytearray(raw[6:-3]))


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(value)) + value


def _context(context_id: int) -> bytes:
    return _item(0x20, bytes((context_id, 0, 0, 0)) + _item(0x30, CT.encode()) + _item(0x40, b"1.2.840.10008.1.2"))


_APPLICATION = _item(0x10, b"1.2.840.10008.3.1.1.1")
_USER = _item(0x50, _item(0x51, struct.pack(">L", 16384)))


@pytest.mark.parametrize(
    ("items", "words"),
    [
        (_APPLICATION + _context(2) + _USER, "not odd"),
        (_APPLICATION + _context(0) + _USER, "not odd"),
        (_APPLICATION + _context(1) + _context(1) + _USER, "proposed twice"),
        (_APPLICATION + _context(1), "without a User Information item"),
        (_APPLICATION + _context(1) + _item(0x50, _item(0x52, b"1.2.3")), "without a Maximum Length"),
        (_APPLICATION + _context(1) + _item(0x50, _item(0x51, b"\x40\x00")), "of 2 bytes, not 4"),
    ],
    ids=["even-id", "zero-id", "duplicate-id", "no-user-information", "no-max-length", "max-length-2-bytes"],
)
def test_associate_rq_breaking_ps3_8_9_3_2_is_a_protocol_error(items: bytes, words: str) -> None:
    """PS3.8 9.3.2.2 (odd, unique context IDs), 9.3.2.3 and D.1 (User Information with a 4-byte Maximum Length)."""
    body = struct.pack(">HH", 1, 0) + b"AINODE".ljust(16) + b"PACS".ljust(16) + bytes(32) + items
    assert parse_associate_rq(bytearray(struct.pack(">HH", 1, 0) + bytes(64) + _APPLICATION + _context(1) + _USER))
    with pytest.raises(ProtocolError, match=words):
        parse_associate_rq(bytearray(body))


def test_negotiation_follows_the_requestors_order_and_rejects_what_we_do_not_know() -> None:
    proposed = parse_associate_rq(
        bytearray(
            associate_rq(
                [
                    (1, CT, [JPEG2000, ImplicitVRLittleEndian, ExplicitVRLittleEndian]),
                    (3, CT, [RLELossless]),
                    (9, CT, ["1.2.840.10008.1.2.4.100", ImplicitVRLittleEndian, ExplicitVRLittleEndian]),
                    (5, "1.2.3.4", [ExplicitVRLittleEndian]),
                    (7, ECHO, [JPEG2000]),
                ]
            )[6:]
        )
    ).contexts

    results = negotiate(proposed, SUPPORTED_CONTEXTS)

    assert [(r.context_id, r.result, r.transfer_syntax) for r in results] == [
        (1, CONTEXT_ACCEPTED, JPEG2000),  # the requestor's first choice: its file's own syntax
        (3, CONTEXT_ACCEPTED, RLELossless),
        (9, CONTEXT_ACCEPTED, ImplicitVRLittleEndian),  # MPEG2 is not ours: its next choice
        (5, CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED, ExplicitVRLittleEndian),
        (7, CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED, JPEG2000),
    ]


def test_associate_ac_decodes_with_pynetdicom() -> None:
    request = parse_associate_rq(
        bytearray(associate_rq([(1, CT, [ExplicitVRLittleEndian]), (3, "1.2.3", ["1.2"])])[6:])
    )
    encoded = encode_associate_ac(
        request,
        negotiate(request.contexts, SUPPORTED_CONTEXTS),
        max_pdu=4096,
        implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
        implementation_version_name=PYNETDICOM_IMPLEMENTATION_VERSION,
    )
    ac = A_ASSOCIATE_AC()
    ac.decode(encoded)

    assert ac.application_context_name == "1.2.840.10008.3.1.1.1"
    assert [(c.context_id, c.result, c.transfer_syntax) for c in ac.presentation_context] == [
        (1, 0, ExplicitVRLittleEndian),
        (3, 3, "1.2"),
    ]
    assert ac.user_information.maximum_length == 4096
    assert ac.user_information.implementation_class_uid == PYNETDICOM_IMPLEMENTATION_UID
    assert ac.user_information.implementation_version_name == PYNETDICOM_IMPLEMENTATION_VERSION
    # the two reserved AE title fields echo the request's (PS3.8 Table 9-17)
    assert (ac.reserved_aet.strip(), ac.reserved_aec.strip()) == ("AINODE", PACS_AE)


def test_p_data_respects_the_peers_max_pdu_and_decodes_with_pynetdicom() -> None:
    message = bytes(range(256)) * 3
    encoded = encode_p_data(5, message, command=True, peer_max_pdu=100)
    pdus, offset = [], 0
    while offset < len(encoded):
        length = struct.unpack_from(">L", encoded, offset + 2)[0]
        pdu = P_DATA_TF()
        pdu.decode(encoded[offset : offset + 6 + length])
        assert length <= 100
        pdus.append(pdu)
        offset += 6 + length

    values = [pdu.to_primitive().presentation_data_value_list[0] for pdu in pdus]
    assert all(context_id == 5 for context_id, _ in values)
    assert [value[0] for _, value in values] == [0x01] * (len(values) - 1) + [0x03]
    assert b"".join(value[1:] for _, value in values) == message
    assert len(encode_p_data(5, message, command=True, peer_max_pdu=0)) == len(message) + 12


def test_pdv_longer_than_its_pdu_is_a_protocol_error() -> None:
    body = bytearray(p_data(1, b"abcd", command=True, last=True)[6:])
    body[3] = 0xFF
    with pytest.raises(ProtocolError):
        list(iter_pdvs(body))


def test_command_sets_decode_and_encode_like_pydicom() -> None:
    request = decode_command(store_rq(message_id=7))
    assert (request.command_field, request.message_id, request.has_data_set) == (0x0001, 7, True)
    assert (request.affected_sop_class_uid, request.affected_sop_instance_uid) == (CT, "1.2.3.4.5")

    response = decode_implicit(encode_response(request, 0xA700, include_instance=True))
    assert response.CommandField == 0x8001
    assert response.MessageIDBeingRespondedTo == 7
    assert response.CommandDataSetType == 0x0101
    assert response.Status == 0xA700
    assert response.AffectedSOPClassUID == CT
    assert response.AffectedSOPInstanceUID == "1.2.3.4.5"
    assert response.CommandGroupLength == len(encode_response(request, 0xA700, include_instance=True)) - 12

    echo = decode_command(echo_rq(message_id=3))
    assert (echo.command_field, echo.has_data_set) == (0x0030, False)
    echo_response = decode_implicit(encode_response(echo, 0, include_instance=False))
    assert (echo_response.CommandField, echo_response.MessageIDBeingRespondedTo) == (0x8030, 3)
    assert "AffectedSOPInstanceUID" not in echo_response


def test_file_meta_is_byte_identical_to_pydicom() -> None:
    meta = create_file_meta(sop_class_uid=CT, sop_instance_uid="1.2.3.45", transfer_syntax=JPEG2000)
    meta.SourceApplicationEntityTitle = "ORTHANC"
    expected = b"\x00" * 128 + b"DICM" + pydicom_file_meta(meta)

    assert (
        encode_file_meta(
            sop_class_uid=CT,
            sop_instance_uid="1.2.3.45",
            transfer_syntax_uid=JPEG2000,
            implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
            implementation_version_name=PYNETDICOM_IMPLEMENTATION_VERSION,
            source_ae_title="ORTHANC",
        )
        == expected
    )


# -- the SCP on raw sockets -----------------------------------------------------------------


def established(port: int, **kwargs: object) -> RawPeer:
    peer = RawPeer(port)
    peer.send(associate_rq([(1, CT, [ExplicitVRLittleEndian]), (3, ECHO, [ImplicitVRLittleEndian])], **kwargs))
    assert isinstance(peer.read_decoded(), A_ASSOCIATE_AC)
    return peer


def wait_for(events: list[AssociationEvent], count: int) -> None:
    deadline = time.monotonic() + 5
    while len(events) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_async_operations_and_role_selection_are_accepted_and_not_answered(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path))
    peer = RawPeer(scp.port)
    peer.send(associate_rq([(1, CT, [ExplicitVRLittleEndian])], async_ops=(4, 4), roles=[(CT, True, True)]))

    ac = peer.read_decoded()

    assert isinstance(ac, A_ASSOCIATE_AC)
    assert ac.presentation_context[0].result == 0
    assert ac.user_information.async_ops_window is None  # omitted: one operation at a time
    assert ac.user_information.role_selection == {}  # default roles kept (PS3.7 D.3.3.4)
    peer.close()


def test_responses_are_fragmented_to_the_peers_max_pdu(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path))
    peer = established(scp.port, max_pdu=32)
    peer.send(p_data(3, echo_rq(message_id=9), command=True, last=True))

    fragments = []
    while True:
        pdu_type, raw = peer.read_pdu()
        assert pdu_type == 0x04 and len(raw) - 6 <= 32
        fragments.append(raw[12:])
        if raw[11] & 0x02:
            break

    assert len(fragments) > 1
    response = decode_implicit(b"".join(fragments))
    assert (response.CommandField, response.MessageIDBeingRespondedTo, response.Status) == (0x8030, 9, 0)
    peer.close()


def test_command_in_fragments_and_data_set_in_the_same_pdu(start_scp, tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path)
    scp = start_scp(sink)
    peer = established(scp.port)
    command = store_rq(message_id=2)
    dataset = tmp_path / "dataset.bin"
    original = pydicom_file("CT_small.dcm")
    encoded = dcmread(original)
    encoded.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    encoded.save_as(dataset, enforce_file_format=True)
    body = dataset.read_bytes()
    body = body[132 + 12 + struct.unpack_from("<L", body, 140)[0] :]  # the data set after the file meta
    # command in two fragments, then the data set's first and last fragments in one PDU
    peer.send(p_data(1, command[:20], command=True, last=False) + p_data(1, command[20:], command=True, last=True))
    first, last = p_data(1, body[:1000], command=False, last=False), p_data(1, body[1000:], command=False, last=True)
    peer.send(struct.pack(">BxL", 0x04, len(first) + len(last) - 12) + first[6:] + last[6:])

    pdu_type, raw = peer.read_pdu()

    assert decode_implicit(raw[12:]).Status == status.SUCCESS
    assert sink.requests[0].data.endswith(body)
    assert sink.requests[0].sop_instance_uid == "1.2.3.4.5"
    peer.close()


@pytest.mark.parametrize(
    ("pdu", "reason"),
    [
        (struct.pack(">BxL", 0x09, 4) + bytes(4), 0x01),  # unrecognised PDU type
        (struct.pack(">BxL", 0x02, 4) + bytes(4), 0x02),  # an A-ASSOCIATE-AC sent to the acceptor
        (p_data(9, b"\x00" * 8, command=True, last=True), 0x06),  # presentation context never proposed
        (p_data(1, b"\x00" * 8, command=False, last=True), 0x06),  # data set before any command
    ],
)
def test_protocol_errors_abort_the_association(start_scp, tmp_path: Path, pdu: bytes, reason: int) -> None:
    events: list[AssociationEvent] = []
    scp = start_scp(DirectorySink(tmp_path), events=events)
    peer = established(scp.port)

    peer.send(pdu)
    abort = peer.read_decoded()

    assert (abort.source, abort.reason_diagnostic) == (0x02, reason)
    peer.close()  # the requestor closes the connection after an A-ABORT (PS3.8 9.2, Sta13)
    wait_for(events, 2)
    assert [e.kind for e in events] == ["accepted", "aborted"]
    assert events[-1].reason is not None and events[-1].reason.startswith("protocol error")


def test_pdu_other_than_associate_rq_first_is_aborted(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path))
    peer = RawPeer(scp.port)
    peer.send(p_data(1, b"\x00" * 8, command=True, last=True))

    abort = peer.read_decoded()

    assert (abort.source, abort.reason_diagnostic) == (0x02, 0x02)  # unexpected PDU
    peer.close()


def test_artim_closes_a_connection_that_never_requests(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path), association_request_timeout=0.3)
    peer = RawPeer(scp.port)
    started = time.monotonic()

    assert peer.is_closed()
    assert 0.25 < time.monotonic() - started < 3


def test_idle_association_is_aborted_after_the_network_timeout(start_scp, tmp_path: Path) -> None:
    events: list[AssociationEvent] = []
    scp = start_scp(DirectorySink(tmp_path), events=events, network_timeout=0.3)
    peer = established(scp.port)
    started = time.monotonic()

    abort = peer.read_decoded()

    assert 0.25 < time.monotonic() - started < 3
    assert abort.source == 0x02
    wait_for(events, 2)
    assert [(e.kind, e.reason) for e in events] == [("accepted", None), ("aborted", "network timeout")]


def test_connection_dropped_without_release_is_reported_aborted_and_frees_its_slot(start_scp, tmp_path: Path) -> None:
    events: list[AssociationEvent] = []
    scp = start_scp(DirectorySink(tmp_path), events=events, max_associations=1)
    established(scp.port).close()

    wait_for(events, 2)

    assert [e.kind for e in events] == ["accepted", "aborted"]
    established(scp.port).close()  # the one association allowed is free again


def test_unsupported_command_is_answered_unrecognised_operation(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path))
    peer = established(scp.port)
    find = bytearray(echo_rq(message_id=4))
    find[find.index(struct.pack("<HHL", 0, 0x0100, 2)) + 8] = 0x20  # C-FIND-RQ command field (PS3.7 E.1)
    peer.send(p_data(3, bytes(find), command=True, last=True))

    _, raw = peer.read_pdu()
    response = decode_implicit(raw[12:])

    assert (response.CommandField, response.Status) == (0x8020, 0x0211)
    peer.close()


def test_oversized_pdus_are_refused_before_anything_is_allocated(start_scp, tmp_path: Path) -> None:
    scp = start_scp(DirectorySink(tmp_path), max_pdu=4096)
    # an A-ASSOCIATE-RQ claiming 2 GB, from a peer nobody has checked yet
    peer = RawPeer(scp.port)
    peer.send(struct.pack(">BxL", 0x01, 2**31))
    assert peer.read_decoded().source == 0x02
    peer.close()
    # a P-DATA-TF far beyond the advertised maximum
    peer = established(scp.port)
    peer.send(struct.pack(">BxL", 0x04, 2**30))
    abort = peer.read_decoded()
    assert (abort.source, abort.reason_diagnostic) == (0x02, 0x06)


# -- C-STORE refusals and data sets that are not kept ------------------------------------------


def without_affected_sop_class(command: bytes) -> bytes:
    """A command set with its (0000,0002) Affected SOP Class UID element removed (group length fixed)."""
    group_length, rest = command[:12], command[12:]
    assert struct.unpack_from("<HHL", rest)[:2] == (0x0000, 0x0002)
    rest = rest[8 + struct.unpack_from("<L", rest, 4)[0] :]
    return group_length[:8] + struct.pack("<L", len(rest)) + rest


def store_response_status(peer: RawPeer) -> int:
    pdu_type, raw = peer.read_pdu()
    assert pdu_type == 0x04
    return int(decode_implicit(raw[12:]).Status)


MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.mark.parametrize(
    ("context_id", "command"),
    [
        (1, encode_c_store_rq(5, MR, "1.2.3.9")),  # MR Image Storage on the CT context
        (1, without_affected_sop_class(encode_c_store_rq(5, CT, "1.2.3.9"))),
        (1, encode_c_store_rq(5, "", "1.2.3.9")),  # present but empty
        (3, encode_c_store_rq(5, ECHO, "1.2.3.9")),  # a C-STORE on the Verification context
        (3, encode_c_store_rq(5, CT, "1.2.3.9")),
    ],
    ids=["mr-on-ct-context", "no-affected-sop-class", "empty-affected-sop-class", "on-verification", "ct-on-echo"],
)
def test_c_store_not_of_its_contexts_sop_class_is_refused_and_nothing_kept(
    start_scp, tmp_path: Path, context_id: int, command: bytes
) -> None:
    """PS3.7 9.1.1.1 / PS3.8 9.3.2.2: the SOP class is the context's; else 0x0122 and the association goes on."""
    sink = DirectorySink(tmp_path)
    (incoming := tmp_path / "incoming").mkdir()
    scp = start_scp(sink, incoming_dir=incoming)
    peer = established(scp.port)

    peer.send(p_data(context_id, command, command=True, last=True))
    peer.send(p_data(context_id, b"\x08\x00\x18\x00\x08\x00\x00\x001.2.3.9\x00"[:16], command=False, last=True))

    assert store_response_status(peer) == status.SOP_CLASS_NOT_SUPPORTED
    assert sink.requests == [] and list(incoming.iterdir()) == []
    peer.send(p_data(3, echo_rq(message_id=6), command=True, last=True))  # the association continues
    assert store_response_status(peer) == status.SUCCESS
    peer.close()


def test_data_set_over_max_dataset_size_is_discarded_and_the_next_one_kept(start_scp, tmp_path: Path) -> None:
    """Issue 16: a data set has a size cap; past it the rest is read and dropped, never buffered, and 0xA700."""
    sink = DirectorySink(tmp_path)
    (incoming := tmp_path / "incoming").mkdir()
    scp = start_scp(sink, incoming_dir=incoming, max_dataset_size=4000)
    peer = established(scp.port)

    peer.send(p_data(1, encode_c_store_rq(1, CT, "1.2.3.1"), command=True, last=True))
    for _ in range(4):  # up to the cap: the file is being written
        peer.send(p_data(1, bytes(1000), command=False, last=False))
    deadline = time.monotonic() + 5
    while not list(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(list(incoming.iterdir())) == 1
    for _ in range(5):  # past the cap
        peer.send(p_data(1, bytes(1000), command=False, last=False))
    deadline = time.monotonic() + 5
    while list(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(incoming.iterdir()) == []  # the partial file went as soon as the cap was passed
    peer.send(p_data(1, bytes(1000), command=False, last=True))
    assert store_response_status(peer) == status.OUT_OF_RESOURCES
    assert sink.requests == []

    peer.send(p_data(1, encode_c_store_rq(2, CT, "1.2.3.2"), command=True, last=True))
    peer.send(p_data(1, bytes(4000), command=False, last=True))  # exactly the cap: kept
    assert store_response_status(peer) == status.SUCCESS
    assert [r.sop_instance_uid for r in sink.requests] == ["1.2.3.2"]
    assert sink.requests[0].data.endswith(bytes(4000))
    assert list(incoming.iterdir()) == []  # the sink returned: the SCP removed its file
    peer.close()


def test_incoming_folder_that_cannot_be_written_answers_out_of_resources(start_scp, tmp_path: Path) -> None:
    """An OSError creating or writing the file is 0xA700 without the sink; the SCP keeps serving."""
    sink = DirectorySink(tmp_path)
    (incoming := tmp_path / "incoming").mkdir()
    scp = start_scp(sink, incoming_dir=incoming)
    peer = established(scp.port)
    incoming.rmdir()

    peer.send(p_data(1, encode_c_store_rq(1, CT, "1.2.3.1"), command=True, last=True))
    peer.send(p_data(1, bytes(100), command=False, last=True))
    assert store_response_status(peer) == status.OUT_OF_RESOURCES

    incoming.mkdir()
    peer.send(p_data(1, encode_c_store_rq(2, CT, "1.2.3.2"), command=True, last=True))
    peer.send(p_data(1, bytes(100), command=False, last=True))
    assert store_response_status(peer) == status.SUCCESS
    assert [r.sop_instance_uid for r in sink.requests] == ["1.2.3.2"]
    peer.close()


def test_association_lost_inside_a_data_set_leaves_no_partial_file(start_scp, tmp_path: Path) -> None:
    events: list[AssociationEvent] = []
    (incoming := tmp_path / "incoming").mkdir()
    scp = start_scp(DirectorySink(tmp_path), events=events, incoming_dir=incoming)
    peer = established(scp.port)
    peer.send(p_data(1, encode_c_store_rq(1, CT, "1.2.3.1"), command=True, last=True))
    peer.send(p_data(1, bytes(5000), command=False, last=False))
    wait_for(events, 1)
    deadline = time.monotonic() + 5
    while not list(incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(list(incoming.iterdir())) == 1  # being written

    peer.send(bytes.fromhex("07000000000400000000"))  # A-ABORT
    wait_for(events, 2)

    assert [e.kind for e in events] == ["accepted", "aborted"]
    assert list(incoming.iterdir()) == []
    peer.close()
