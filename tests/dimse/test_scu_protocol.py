"""The SCU's upper layer (PS3.8) and DIMSE codec (PS3.7) against pynetdicom's, on raw sockets."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from dimse_helpers import LOCALHOST, NODE_AE, PACS_AE, pydicom_file
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.uid import JPEG2000, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.sop_class import CTImageStorage, Verification
from raw_acceptor import ABORT, RELEASE_RQ, Peer, RawAcceptor, data_set_bytes

from core import status
from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dimse import AssociationFailed, StoreOutcome, echo, store_files
from dimse.commands import decode_command, decode_response, encode_c_echo_rq, encode_c_store_rq, encode_response
from dimse.scu import _data_set_offset
from dimse.upper_layer import PresentationContext, encode_associate_rq, parse_associate_rj

CT = str(CTImageStorage)


def store(paths: list[Path], port: int, **kwargs: Any) -> list[StoreOutcome]:
    return store_files(paths, host=LOCALHOST, port=port, called_ae=NODE_AE, calling_ae=PACS_AE, **kwargs)


# -- codecs against pynetdicom and pydicom ------------------------------------------------------


def test_associate_rq_decodes_with_pynetdicom() -> None:
    contexts = [
        PresentationContext(1, CT, (ExplicitVRLittleEndian,)),
        PresentationContext(3, CT, (ExplicitVRLittleEndian, ImplicitVRLittleEndian)),
    ]
    encoded = encode_associate_rq(
        called_ae=NODE_AE,
        calling_ae=PACS_AE,
        contexts=contexts,
        max_pdu=32768,
        implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
        implementation_version_name=PYNETDICOM_IMPLEMENTATION_VERSION,
    )
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(encoded)
    request = pdu.to_primitive()

    assert (request.called_ae_title, request.calling_ae_title) == (NODE_AE, PACS_AE)
    assert request.application_context_name == "1.2.840.10008.3.1.1.1"
    assert [
        (c.context_id, c.abstract_syntax, c.transfer_syntax) for c in request.presentation_context_definition_list
    ] == [(1, CT, [ExplicitVRLittleEndian]), (3, CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    assert request.maximum_length_received == 32768
    assert request.implementation_class_uid == PYNETDICOM_IMPLEMENTATION_UID
    assert pdu.user_information.implementation_version_name == PYNETDICOM_IMPLEMENTATION_VERSION


def test_ae_titles_are_checked_before_anything_is_sent() -> None:
    with pytest.raises(ValueError):
        encode_associate_rq(
            called_ae="A" * 17,
            calling_ae=PACS_AE,
            contexts=[],
            max_pdu=0,
            implementation_class_uid="1.2",
            implementation_version_name="X",
        )


def test_request_command_sets_decode_with_pydicom_and_our_scp() -> None:
    encoded = encode_c_store_rq(7, CT, "1.2.3.4.5")
    command = read_dataset(DicomBytesIO(encoded), is_implicit_VR=True, is_little_endian=True)
    assert command.CommandGroupLength == len(encoded) - 12
    assert (command.CommandField, command.MessageID, command.Priority) == (0x0001, 7, 0)
    assert command.CommandDataSetType != 0x0101
    assert (command.AffectedSOPClassUID, command.AffectedSOPInstanceUID) == (CT, "1.2.3.4.5")

    request = decode_command(encoded)  # what our own SCP reads of it
    response = decode_response(encode_response(request, 0xB007, include_instance=True))
    assert (response.command_field, response.message_id_being_responded_to, response.status) == (0x8001, 7, 0xB007)
    assert response.affected_sop_instance_uid == "1.2.3.4.5"

    echo_command = read_dataset(DicomBytesIO(encode_c_echo_rq(3)), is_implicit_VR=True, is_little_endian=True)
    assert (echo_command.CommandField, echo_command.MessageID) == (0x0030, 3)
    assert echo_command.CommandDataSetType == 0x0101
    assert echo_command.AffectedSOPClassUID == str(Verification)


def test_rejection_reasons_read_like_pynetdicom_words_them() -> None:
    reject = parse_associate_rj(bytes((0, 2, 3, 2)))
    assert not reject.permanent
    assert str(reject) == "Rejected Transient, Service Provider (Presentation): Local limit exceeded"
    assert parse_associate_rj(bytes((0, 1, 1, 7))).permanent


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm"]
)
def test_data_set_offset_agrees_with_pydicom(name: str) -> None:
    raw = pydicom_file(name).read_bytes()
    assert raw[_data_set_offset(raw) :] == data_set_bytes(str(pydicom_file(name)))


# -- against a scripted acceptor ----------------------------------------------------------------


@pytest.mark.parametrize("pixel_bytes", [0, 600_000])
def test_fragments_fit_the_peers_max_pdu_and_the_data_set_is_sent_as_stored(tmp_path: Path, pixel_bytes: int) -> None:
    """CT_small has ~39 kB of data set (40 fragments at 1 kB); enlarged, 600+ fragments
    are more than one scatter-gather write takes."""
    path = pydicom_file("CT_small.dcm")
    if pixel_bytes:
        dataset = dcmread(path)
        dataset.PixelData = bytes(range(200)) * (pixel_bytes // 200)
        path = tmp_path / "big.dcm"
        dataset.save_as(path)
    seen = {}

    def script(peer: Peer) -> None:
        request = peer.read_request()
        assert request.to_primitive().maximum_length_received == 0  # store_files' default: unlimited
        peer.accept_all(max_pdu=1024)
        context_id, command, data = peer.read_message()
        seen.update(command=command, data=data)
        peer.respond(context_id, command, 0xB000)
        peer.release()
        assert peer.read_until_closed() == []

    with RawAcceptor(script) as acceptor:
        outcomes = store([path], acceptor.port)

    assert outcomes == [StoreOutcome(dcmread(path).SOPInstanceUID, 0xB000)]
    assert seen["data"] == data_set_bytes(str(path))
    assert seen["command"].AffectedSOPInstanceUID == dcmread(path).SOPInstanceUID
    p_data = [pdu for pdu_type, pdu in acceptor.peer.received if pdu_type == 0x04]
    # one PDV per PDU, each carrying 1024 - 6 bytes of fragment: the command, then the data set
    assert len(p_data) == 1 + -(-len(seen["data"]) // 1018)
    assert max(len(pdu) - 6 for pdu in p_data) == 1024


def test_refused_exact_syntax_is_re_encoded_to_the_accepted_fallback() -> None:
    """The peer refuses the exact Explicit VR context and takes Implicit VR on the fallback."""
    path = pydicom_file("CT_small.dcm")
    seen = {}

    def script(peer: Peer) -> None:
        contexts = peer.read_request().to_primitive().presentation_context_definition_list
        assert [(c.abstract_syntax, c.transfer_syntax) for c in contexts] == [
            (CT, [ExplicitVRLittleEndian]),
            (CT, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
        ]
        peer.accept([(1, 4, ExplicitVRLittleEndian), (3, 0, ImplicitVRLittleEndian)], max_pdu=16384)
        context_id, command, data = peer.read_message()
        seen.update(context_id=context_id, data=data)
        peer.respond(context_id, command, status.SUCCESS)
        peer.release()

    with RawAcceptor(script) as acceptor:
        (outcome,) = store([path], acceptor.port)

    assert outcome.status == status.SUCCESS
    assert seen["context_id"] == 3
    received = read_dataset(DicomBytesIO(seen["data"]), is_implicit_VR=True, is_little_endian=True)
    original = dcmread(path)
    assert received.PixelData == original.PixelData
    assert received.PatientName == original.PatientName


def test_a_syntax_the_peer_was_not_offered_counts_as_not_accepted() -> None:
    """An acceptor must pick one of the proposed syntaxes (PS3.8 9.3.3.2); JPEG 2000 was not."""
    path = pydicom_file("MR_small.dcm")

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.accept([(1, 0, JPEG2000), (3, 0, JPEG2000)], max_pdu=16384)
        peer.release()

    with RawAcceptor(script) as acceptor:
        outcomes = store([path], acceptor.port)

    (outcome,) = outcomes
    assert (outcome.sop_instance_uid, outcome.status) == (dcmread(path).SOPInstanceUID, status.SOP_CLASS_NOT_SUPPORTED)
    assert outcome.reason == (
        "no acceptable transfer syntax: the peer accepts MR Image Storage in none of "
        "Explicit VR Little Endian, Implicit VR Little Endian"
    )
    assert [t for t, _ in acceptor.peer.received] == [0x01, 0x05]  # nothing was sent


@pytest.mark.parametrize(
    ("results", "reason"),
    [
        ((3, 3), "SOP class not supported: the peer rejected CT Image Storage (abstract syntax not supported)"),
        (
            (4, 4),
            "no acceptable transfer syntax: the peer accepts CT Image Storage in none of "
            "Explicit VR Little Endian, Implicit VR Little Endian",
        ),
        ((1, 1), "presentation context for CT Image Storage rejected by the peer (user rejection)"),
        (
            (2, 3),
            "presentation context for CT Image Storage rejected by the peer (no reason (provider rejection), result 3)",
        ),
    ],
)
def test_each_context_refusal_has_its_own_label(results: tuple[int, int], reason: str) -> None:
    """PS3.8 Table 9-18: the presentation context result decides what the outcome says, not always 0x0122's words."""
    path = pydicom_file("CT_small.dcm")

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.accept([(1, results[0], ExplicitVRLittleEndian), (3, results[1], ExplicitVRLittleEndian)], max_pdu=16384)
        peer.release()

    with RawAcceptor(script) as acceptor:
        (outcome,) = store([path], acceptor.port)
    assert (outcome.status, outcome.reason) == (status.SOP_CLASS_NOT_SUPPORTED, reason)


def test_a_compressed_file_whose_syntax_is_refused_names_what_the_peer_accepts() -> None:
    """A JPEG 2000 CT beside an uncompressed one: the SOP class is accepted, only not in JPEG 2000."""
    ct, j2k = pydicom_file("CT_small.dcm"), pydicom_file("JPEG2000.dcm")
    j2k_class = dcmread(j2k, stop_before_pixels=True).SOPClassUID

    def script(peer: Peer) -> None:
        proposed = peer.read_request().to_primitive().presentation_context_definition_list
        peer.accept(
            [(c.context_id, 4 if c.transfer_syntax == [JPEG2000] else 0, c.transfer_syntax[0]) for c in proposed],
            max_pdu=16384,
        )
        context_id, command, _ = peer.read_message()
        peer.respond(context_id, command, status.SUCCESS)
        peer.release()

    with RawAcceptor(script) as acceptor:
        sent, refused = store([ct, j2k], acceptor.port)
    assert (sent.status, sent.reason) == (status.SUCCESS, "")
    name = j2k_class.name
    assert refused.reason.startswith(f"no acceptable transfer syntax: the peer accepts {name} in none of JPEG 2000")
    assert "(the node never re-compresses)" in refused.reason


def test_instant_answers_are_never_missed() -> None:
    """The acceptor answers each C-STORE-RQ the moment its last fragment arrives."""
    paths = [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")] * 50

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.accept_all()
        for _ in paths:
            context_id, command, _ = peer.read_message()
            peer.respond(context_id, command, status.SUCCESS)
        peer.release()

    started = time.monotonic()
    with RawAcceptor(script) as acceptor:
        outcomes = store(paths, acceptor.port, timeout=5)
    assert [o.status for o in outcomes] == [status.SUCCESS] * len(paths)
    assert time.monotonic() - started < 5
    message_ids = []
    for pdu_type, pdu in acceptor.peer.received:
        if pdu_type == 0x04 and pdu[11] & 0x01:  # a command PDV: its Message ID
            command = read_dataset(DicomBytesIO(pdu[12:]), is_implicit_VR=True, is_little_endian=True)
            message_ids.append(command.MessageID)
    assert message_ids == list(range(1, len(paths) + 1))


def test_peer_abort_mid_transfer_keeps_earlier_outcomes() -> None:
    paths = [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm"), pydicom_file("JPEG2000.dcm")]

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.accept_all()
        context_id, command, _ = peer.read_message()
        peer.respond(context_id, command, status.SUCCESS)
        peer.read_message()
        peer.sock.sendall(ABORT)
        assert peer.read_until_closed() == []  # closed, nothing more sent

    with RawAcceptor(script) as acceptor, pytest.raises(AssociationFailed) as raised:
        store(paths, acceptor.port)

    assert not raised.value.permanent
    assert "aborted by the peer" in raised.value.reason
    assert raised.value.outcomes == [StoreOutcome(dcmread(paths[0]).SOPInstanceUID, status.SUCCESS)]


def test_response_to_another_message_aborts() -> None:
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.accept_all()
        context_id, command, _ = peer.read_message()
        peer.respond(context_id, command, status.SUCCESS, message_id=command.MessageID + 1)
        assert peer.read_until_closed() == [0x07]  # A-ABORT

    with RawAcceptor(script) as acceptor, pytest.raises(AssociationFailed) as raised:
        store([pydicom_file("CT_small.dcm")], acceptor.port)
    assert "protocol error" in raised.value.reason
    assert raised.value.outcomes == []


def test_transient_rejection_is_not_permanent() -> None:
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.sock.sendall(bytes((0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2)))
        assert peer.read_until_closed() == []

    with RawAcceptor(script) as acceptor, pytest.raises(AssociationFailed) as raised:
        echo(host=LOCALHOST, port=acceptor.port, called_ae=NODE_AE, calling_ae=PACS_AE)
    assert not raised.value.permanent
    assert raised.value.reason == (
        f"{NODE_AE}@{LOCALHOST}:{acceptor.port} rejected the association: "
        "Rejected Transient, Service Provider (Presentation): Local limit exceeded"
    )


def test_unanswered_release_is_aborted_and_the_outcomes_kept() -> None:
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.accept_all()
        context_id, command, _ = peer.read_message()
        peer.respond(context_id, command, status.SUCCESS)
        assert peer.read_until_closed() == [0x05, 0x07]  # A-RELEASE-RQ, then A-ABORT

    started = time.monotonic()
    with RawAcceptor(script) as acceptor:
        (outcome,) = store([pydicom_file("CT_small.dcm")], acceptor.port, timeout=0.5)
    assert outcome.status == status.SUCCESS
    assert time.monotonic() - started < 5


def test_echo_without_an_accepted_verification_context_sends_nothing() -> None:
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.accept([(1, 3, ExplicitVRLittleEndian)], max_pdu=16384)
        peer.release()

    with RawAcceptor(script) as acceptor:
        result = echo(host=LOCALHOST, port=acceptor.port, called_ae=NODE_AE, calling_ae=PACS_AE)
    assert result == status.SOP_CLASS_NOT_SUPPORTED
    assert [t for t, _ in acceptor.peer.received] == [0x01, 0x05]


def test_more_contexts_than_one_association_holds_are_split_in_order(tmp_path: Path) -> None:
    """Files of 65 SOP classes need 130 contexts: the 65th file goes on a second association."""
    from pydicom.uid import generate_uid
    from pynetdicom import AllStoragePresentationContexts

    template = dcmread(pydicom_file("CT_small.dcm"))
    paths = []
    for context in AllStoragePresentationContexts[:65]:
        template.SOPClassUID = template.file_meta.MediaStorageSOPClassUID = context.abstract_syntax
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(tmp_path / f"{len(paths)}.dcm")
        template.save_as(paths[-1])
    proposed: list[int] = []

    def script(peer: Peer) -> None:
        proposed.append(len(peer.read_request().to_primitive().presentation_context_definition_list))
        peer.accept_all()
        for _ in range(64):
            context_id, command, _ = peer.read_message()
            peer.respond(context_id, command, status.SUCCESS)
        peer.release()

    with RawAcceptor(script) as first, pytest.raises(AssociationFailed) as raised:
        # the acceptor serves one connection: the second request waits in the listen
        # queue unanswered, so the 65th file is not sent and the first 64 are reported
        store(paths, first.port, timeout=1)
    assert proposed == [128]
    assert "aborted during negotiation" in raised.value.reason
    assert [o.status for o in raised.value.outcomes] == [status.SUCCESS] * 64


# -- identity and release -------------------------------------------------------------------------


def test_associate_rq_names_ainode_not_a_library() -> None:
    """Implementation Class UID and Version Name (PS3.7 D.3.3.2) are the project's own, for C-STORE and C-ECHO."""

    def script(peer: Peer) -> None:
        request = peer.read_request()
        user_information = request.user_information
        assert user_information is not None
        seen.append((user_information.implementation_class_uid, user_information.implementation_version_name))
        peer.accept_all()
        context_id, command, _ = peer.read_message()
        peer.respond(context_id, command, status.SUCCESS)
        peer.release()

    seen: list[tuple[str, str | None]] = []
    with RawAcceptor(script) as acceptor:
        store([pydicom_file("CT_small.dcm")], acceptor.port)
    with RawAcceptor(script) as acceptor:
        echo(host=LOCALHOST, port=acceptor.port, called_ae=NODE_AE, calling_ae=PACS_AE)
    assert seen == [(IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)] * 2
    assert not IMPLEMENTATION_CLASS_UID.startswith(str(PYNETDICOM_IMPLEMENTATION_UID))


def test_release_collision_is_answered_with_a_release_rp() -> None:
    """Both sides send A-RELEASE-RQ: the requestor answers A-RELEASE-RP, then waits for the acceptor's
    (PS3.8 9.2.4; Table 9-10 AR-8, AR-9, AR-3), and the outcomes stand."""
    closed: list[list[int]] = []

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.accept_all()
        context_id, command, _ = peer.read_message()
        peer.respond(context_id, command, status.SUCCESS)
        peer.release_collision()
        closed.append(peer.read_until_closed())

    with RawAcceptor(script) as acceptor:
        (outcome,) = store([pydicom_file("CT_small.dcm")], acceptor.port, timeout=5)
    assert outcome.status == status.SUCCESS
    types = [t for t, _ in acceptor.peer.received]
    assert types[0] == 0x01 and set(types[1:-2]) == {0x04} and types[-2:] == [0x05, 0x06]  # C-STORE, RQ, RP
    assert closed == [[]]  # then the requestor closed the connection, no A-ABORT


def test_a_second_release_rq_in_a_collision_is_aborted() -> None:
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.accept_all()
        context_id, command, _ = peer.read_message()
        peer.respond(context_id, command, status.SUCCESS)
        peer.read_pdu()  # A-RELEASE-RQ
        peer.sock.sendall(RELEASE_RQ)
        assert peer.read_pdu()[0] == 0x06
        peer.sock.sendall(RELEASE_RQ)  # not A-RELEASE-RP: a protocol error in Sta11
        assert peer.read_until_closed() == [0x07]

    with RawAcceptor(script) as acceptor:
        (outcome,) = store([pydicom_file("CT_small.dcm")], acceptor.port, timeout=5)
    assert outcome.status == status.SUCCESS


def test_a_file_gone_between_its_header_and_its_turn_is_not_sent_and_says_why(tmp_path: Path) -> None:
    """Headers are read before the association; a file removed meanwhile (by hand, or a full disk's cleanup)
    is reported as not sent with the reason, and the next file still goes."""
    good = pydicom_file("CT_small.dcm")
    gone = tmp_path / "gone.dcm"
    gone.write_bytes(pydicom_file("MR_small.dcm").read_bytes())

    def script(peer: Peer) -> None:
        peer.read_request()
        gone.unlink()
        peer.accept_all()
        context_id, command, _ = peer.read_message()
        peer.respond(context_id, command, status.SUCCESS)
        peer.release()

    with RawAcceptor(script) as acceptor:
        not_sent, sent = store([gone, good], acceptor.port)
    assert not_sent.status == status.CANNOT_UNDERSTAND
    assert not_sent.reason.startswith("not sent: file unreadable")
    assert (sent.status, sent.reason) == (status.SUCCESS, "")
