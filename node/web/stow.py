"""STOW-RS intake (PS3.18 10.5): instances POSTed to the node enter the same receiver as C-STORE.

``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` with
``Content-Type: multipart/related; type="application/dicom"; boundary=...``,
each part one DICOM Part 10 file (PS3.10). The body is parsed as it arrives
(``python-multipart``'s streaming parser) and each part is written to a file in
the spool's temporary folder, so a request is never held in memory; a request
larger than ``stow_max_request_size`` is answered ``413`` and nothing of it is
stored.

Once the whole body is in, each part becomes a :class:`dimse.scp.StoreRequest`
(calling AE title: the name of the caller's token or user; peer: the client's
address) and goes to the node's receiver, the sink the Storage SCP calls: it is
made durable and recorded, and routed like a pushed instance, before the
answer. The answer is the Store Instances Response Module (PS3.18 10.5.3) as
``application/dicom+json``:

* ``200`` every instance stored; ``202`` some failed; ``409`` all failed;
* ``ReferencedSOPSequence`` (0008,1199): Referenced SOP Class and Instance UIDs of
  each stored instance;
* ``FailedSOPSequence`` (0008,1198): those UIDs, where the part told them, and a
  ``FailureReason`` (0008,1197): the receiver's DIMSE status -- ``0xA700`` out of
  resources, ``0xC210`` cannot understand (not a Part 10 file, a part that is not
  ``application/dicom``), ``0x0110`` processing failure, ``0xA900`` the instance's
  study differs from the study of the URL.

A malformed request is ``400`` (no boundary, a body that is not multipart, no
part), another media type ``415``; both as JSON ``{"error": ...}``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from core import status
from dimse.scp import AssociationEvent, StoreRequest

__all__ = ["DICOM_JSON", "StowError", "StowIntake", "StowResult"]

log = logging.getLogger("ainode.stow")

DICOM_JSON = "application/dicom+json"
#: What an early refusal (401, 415, 413) reads of a body before answering, so that the client, still
#: sending, gets the answer instead of a connection reset; the rest of a larger body is not read.
DRAIN_LIMIT = 1 << 20
_WRITE_BUFFER = 1 << 20


class StowError(Exception):
    """A request refused as a whole: HTTP ``status`` and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class _Part:
    """One body part as it arrives: its headers, its file, or why it failed."""

    headers: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    file: IO[bytes] | None = None
    size: int = 0
    failure: int | None = None  # a DIMSE status when writing it failed
    why: str = ""

    @property
    def media_type(self) -> str:
        value = self.headers.get("content-type", "")
        return parse_options_header(value)[0].decode("latin-1").lower() if value else ""


@dataclass
class _Outcome:
    sop_class_uid: str | None
    sop_instance_uid: str | None
    code: int
    why: str = ""


@dataclass
class StowResult:
    """What a STOW-RS request did: HTTP status, the response data set, counts for the audit."""

    status: int
    body: dict[str, Any]
    stored: int
    failed: int
    reasons: list[str]


def media_type_problem(content_type: str | None) -> tuple[int, str] | bytes:
    """The boundary of a STOW-RS request's ``Content-Type``, or (HTTP status, why) when it is not one."""
    if not content_type:
        return 415, 'no Content-Type: expected multipart/related; type="application/dicom"'
    main, params = parse_options_header(content_type)
    if main.lower() != b"multipart/related":
        expected = 'expected multipart/related; type="application/dicom"'
        return 415, f"media type {main.decode('latin-1')[:60]!r} not supported: {expected}"
    kind = params.get(b"type", b"application/dicom").decode("latin-1").lower()
    if kind != "application/dicom":
        return (
            415,
            f"multipart/related of type {kind[:60]!r} not supported: only application/dicom parts (Part 10 files)",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        return 400, "multipart/related without a boundary parameter"
    return boundary


async def drain(chunks: AsyncIterator[bytes], limit: int = DRAIN_LIMIT) -> None:
    """Read and discard up to ``limit`` bytes of a body that will not be used."""
    read = 0
    async for chunk in chunks:
        read += len(chunk)
        if read > limit:
            return


class StowIntake:
    """Receives STOW-RS requests into the node's receiver.

    Parameters
    ----------
    sink : callable
        The receiver (:class:`node.receiver.Receiver`): makes one :class:`StoreRequest`
        durable and recorded, returns a DIMSE status.
    tmp_dir : Path
        Where parts are written as they arrive (the spool's temporary folder: a crash leaves
        ``.incoming-*`` files that the node removes at its next start).
    max_request_size : int
        Bytes of body beyond which the request is answered ``413``.
    on_refused : callable, optional
        Called with the status of a part refused before it reached the receiver (metrics).
    association : callable, optional
        Told of each request as an association accepted and released (the receive audit counts
        the instances of an association and writes one ``received`` row per study at its end).
    """

    def __init__(
        self,
        sink: Callable[[StoreRequest], int],
        tmp_dir: Path,
        max_request_size: int,
        on_refused: Callable[[int], None] | None = None,
        association: Callable[[AssociationEvent], None] | None = None,
    ) -> None:
        self.sink = sink
        self.tmp_dir = tmp_dir
        self.max_request_size = max_request_size
        self.on_refused = on_refused
        self.association = association

    # -- the body -----------------------------------------------------------------------------

    async def receive(
        self, content_type: str | None, content_length: str | None, chunks: AsyncIterator[bytes]
    ) -> list[_Part]:
        """Parse a body into part files. Raises :class:`StowError` (parts already written are removed)."""
        boundary = media_type_problem(content_type)
        if isinstance(boundary, tuple):
            await drain(chunks)
            raise StowError(*boundary)
        if content_length is not None and content_length.isdigit() and int(content_length) > self.max_request_size:
            await drain(chunks, self.max_request_size)
            raise StowError(413, self._too_large(int(content_length)))
        parts: list[_Part] = []
        try:
            ended = await self._parse(boundary, chunks, parts)
        except BaseException:
            self.discard(parts)
            raise
        if not ended:
            self.discard(parts)
            raise StowError(400, "malformed multipart body: it ends before the closing boundary")
        if not parts:
            raise StowError(400, "multipart body without a part")
        return parts

    def _too_large(self, size: int) -> str:
        return f"request of {size} bytes or more exceeds stow_max_request_size ({self.max_request_size} bytes)"

    async def _parse(self, boundary: bytes, chunks: AsyncIterator[bytes], parts: list[_Part]) -> bool:
        header: list[bytes] = [b"", b""]
        ended = [False]

        def part_begin() -> None:
            parts.append(_Part())
            header[:] = [b"", b""]

        def header_field(data: bytes, start: int, end: int) -> None:
            header[0] += data[start:end]

        def header_value(data: bytes, start: int, end: int) -> None:
            header[1] += data[start:end]

        def header_end() -> None:
            parts[-1].headers[header[0].decode("latin-1").strip().lower()] = header[1].decode("latin-1").strip()
            header[:] = [b"", b""]

        def headers_finished() -> None:
            part = parts[-1]
            try:
                fd, name = tempfile.mkstemp(prefix=".incoming-stow-", suffix=".dcm", dir=self.tmp_dir)
                part.path = Path(name)
                part.file = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
            except OSError as exc:
                self._write_failed(part, exc)

        def part_data(data: bytes, start: int, end: int) -> None:
            part = parts[-1]
            part.size += end - start
            if part.file is None:
                return
            try:
                part.file.write(data[start:end])
            except OSError as exc:
                self._write_failed(part, exc)

        def part_end() -> None:
            part = parts[-1]
            if part.file is not None:
                try:
                    part.file.close()
                except OSError as exc:
                    self._write_failed(part, exc)
                part.file = None

        def end() -> None:
            ended[0] = True

        parser = MultipartParser(
            boundary,
            {
                "on_part_begin": part_begin,
                "on_header_field": header_field,
                "on_header_value": header_value,
                "on_header_end": header_end,
                "on_headers_finished": headers_finished,
                "on_part_data": part_data,
                "on_part_end": part_end,
                "on_end": end,
            },
        )
        total = 0
        try:
            async for chunk in chunks:
                total += len(chunk)
                if total > self.max_request_size:
                    await drain(chunks, self.max_request_size)
                    raise StowError(413, self._too_large(total))
                if not ended[0]:  # an epilogue after the closing boundary is ignored (RFC 2046 5.1.1)
                    parser.write(chunk)
            parser.finalize()
        except MultipartParseError as exc:
            raise StowError(400, f"malformed multipart body: {exc}") from None
        finally:
            for part in parts:
                if part.file is not None:
                    part.file.close()
                    part.file = None
        return ended[0]

    @staticmethod
    def _write_failed(part: _Part, exc: OSError) -> None:
        log.error("STOW-RS part could not be written: %s", exc)
        part.failure, part.why = status.OUT_OF_RESOURCES, f"could not write the part: {exc.strerror or exc}"
        if part.file is not None:
            with contextlib.suppress(OSError):
                part.file.close()
            part.file = None
        if part.path is not None:
            part.path.unlink(missing_ok=True)
            part.path = None

    @staticmethod
    def discard(parts: list[_Part]) -> None:
        """Remove the files of parts not (or no longer) needed."""
        for part in parts:
            if part.file is not None:
                part.file.close()
                part.file = None
            if part.path is not None:
                part.path.unlink(missing_ok=True)
                part.path = None

    # -- storing --------------------------------------------------------------------------------

    def store(self, parts: list[_Part], study_uid: str | None, caller: str, peer: tuple[str, int]) -> StowResult:
        """Hand each part to the receiver (blocking: run it off the event loop, all on one thread)."""
        if self.association is not None:
            self.association(AssociationEvent("accepted", caller, peer[0]))
        outcomes: list[_Outcome] = []
        try:
            for part in parts:
                outcome = self._store_one(part, study_uid, caller, peer)
                if outcome.why and self.on_refused is not None:  # refused here, before the receiver
                    self.on_refused(outcome.code)
                outcomes.append(outcome)
        finally:
            self.discard(parts)
            if self.association is not None:
                self.association(AssociationEvent("released", caller, peer[0], reason="STOW-RS request answered"))
        return self._answer(outcomes)

    def _store_one(self, part: _Part, study_uid: str | None, caller: str, peer: tuple[str, int]) -> _Outcome:
        if part.failure is not None or part.path is None:
            return _Outcome(None, None, part.failure or status.OUT_OF_RESOURCES, part.why or "not written")
        if part.media_type not in ("", "application/dicom"):
            return _Outcome(None, None, status.CANNOT_UNDERSTAND, f"part of type {part.media_type[:60]!r}")
        try:
            meta = read_file_meta_info(part.path)
            sop_class, sop_instance = str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID)
            transfer_syntax = str(meta.TransferSyntaxUID)
            ds = pydicom.dcmread(part.path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        except (InvalidDicomError, EOFError, ValueError, TypeError, AttributeError, KeyError, OSError) as exc:
            why = f"not a DICOM Part 10 file: {str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__}"
            log.warning("STOW-RS from %s (%s): part refused: %s", caller, peer[0], why)
            return _Outcome(None, None, status.CANNOT_UNDERSTAND, why)
        if study_uid is not None and str(ds.get("StudyInstanceUID", "")) != study_uid:
            why = f"instance of study {str(ds.get('StudyInstanceUID', ''))[:64]!r} POSTed to study {study_uid[:64]!r}"
            log.warning("STOW-RS from %s (%s): %s refused: %s", caller, peer[0], sop_instance, why)
            return _Outcome(sop_class, sop_instance, status.DATASET_DOES_NOT_MATCH_SOP_CLASS, why)
        request = StoreRequest(
            calling_ae=caller,
            peer_address=peer[0],
            peer_port=peer[1],
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=transfer_syntax,
            path=part.path,
            size=part.size,
        )
        try:
            code = self.sink(request)
        except Exception:  # the receiver answers with a status; this is a bug, not a reason to lose the request
            log.exception("STOW-RS: the receiver failed on %s", sop_instance)
            code = status.PROCESSING_FAILURE
        return _Outcome(sop_class, sop_instance, code)

    @staticmethod
    def _answer(outcomes: list[_Outcome]) -> StowResult:
        response = pydicom.Dataset()
        stored, failed = pydicom.Sequence(), pydicom.Sequence()
        reasons = []
        for outcome in outcomes:
            item = pydicom.Dataset()
            if outcome.sop_class_uid:
                item.ReferencedSOPClassUID = outcome.sop_class_uid
            if outcome.sop_instance_uid:
                item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
            if status.is_store_success(outcome.code):
                stored.append(item)
            else:
                item.FailureReason = outcome.code
                failed.append(item)
                reasons.append(f"0x{outcome.code:04X} {outcome.why or status.describe(outcome.code)}")
        if stored:
            response.ReferencedSOPSequence = stored
        if failed:
            response.FailedSOPSequence = failed
        code = 200 if not failed else 202 if stored else 409
        return StowResult(code, response.to_json_dict(), len(stored), len(failed), reasons)
