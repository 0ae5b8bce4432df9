"""Pull studies from configured sources into the node: the same spool and routing as a pushed study.

A *source* (``sources:`` in node.yaml) is a DICOM Query/Retrieve SCP or a DICOMweb server:

* ``type: dicom`` (pynetdicom, Study Root): C-FIND at STUDY level by Accession Number or Study
  Instance UID, then at SERIES level (Series Instance UID, Modality, Number of Series Related
  Instances), then per series either C-MOVE to the node's own AE title (``retrieve: move``: the
  source sends the instances to the node's Storage SCP like any push) or C-GET (``retrieve: get``:
  the instances come back on the query's association and are handed to the node's receiver).
* ``type: dicomweb`` (dicomweb-client): QIDO-RS for the studies and their series, WADO-RS per
  series with ``transfer-syntax=*`` (the instances as the server stores them), one instance in
  memory at a time, handed to the node's receiver.

Whatever the path, an instance ends in the node's :class:`node.receiver.Receiver` (C-MOVE: through
the node's own SCP), so pulled and pushed instances are stored, grouped, routed and analysed alike.

**A pull of an analysed, unchanged series is a no-op.** Before retrieving a series the puller
compares it with the node's database. It is *unchanged* when the node holds a row for it whose
analysis is finished (state ``done`` with its latest job done, or ``ignored``/``unrouted``:
nothing to analyse), the source's instance count (Number of Series Related Instances) equals the
node's, and every SOP Instance UID the source lists for it (C-FIND at IMAGE level, QIDO-RS
instances) is already in the node. Such a series is not retrieved (``series_skipped``). Content is
compared by UID only: an instance changed in place at the source under the same SOP Instance UID
is not seen (a changed object gets a new UID in DICOM practice). A series the node never analyses
(result objects, the node's own output: :func:`node.router.is_own_or_result_object` on what the
query returned) is not retrieved at all, so pulling a study again after its SR came back does not
pull that SR.

Errors are :class:`PullError` with one line for a user: :class:`UnknownSource`,
:class:`PullArgumentError`, :class:`NothingFound` (no study matches), :class:`SourceUnavailable`
(unreachable, association refused, a query or retrieve answered with a failure). A pull that
raised recorded nothing as analysed; instances already stored before the failure stay stored
and are analysed like any others. Every pull is an audit row (``ainode audit --kind pulled``,
``--kind pull_failed``) with its one-line outcome.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
from pydicom import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from sqlalchemy import select

from core import status as dimse_status
from core.dicomfile import encode_part10
from core.identity import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dimse.commands import encode_file_meta
from dimse.scp import ACCEPTED_TRANSFER_SYNTAXES, StoreRequest, spool_part10
from dimse.scu import AssociationFailed, store_files
from node import tls
from node.audit import record
from node.db import AuditKind, Database, Instance, Job, JobState, Series, SeriesState
from node.destinations import _connection_reason, _without_userinfo
from node.errors import ConfigError, NodeError
from node.router import is_own_or_result_object
from node.settings import DicomSourceSettings, DicomWebSourceSettings, Settings
from node.webclient import dicomweb_client

__all__ = [
    "QUERY_RETRIEVE_SOP_CLASSES",
    "DicomWebSource",
    "DimseSource",
    "ForwardingIntake",
    "Intake",
    "NothingFound",
    "PullArgumentError",
    "PullError",
    "PullResult",
    "Puller",
    "ReceiverIntake",
    "RemoteSeries",
    "SourceUnavailable",
    "UnknownSource",
    "load_puller",
    "hand_over",
]

LOGGER = logging.getLogger("ainode.pull")

#: DIMSE statuses of C-FIND/C-MOVE/C-GET responses (PS3.4 C.4).
_PENDING = (0xFF00, 0xFF01)
_MOVE_DESTINATION_UNKNOWN = 0xA801
#: pynetdicom proposes at most 128 presentation contexts; one is the C-GET model's.
_MAX_STORAGE_CONTEXTS = 127
#: The Query/Retrieve information models a ``type: dicom`` source is asked with (SCU), by the operation
#: that uses each (``ainode conformance`` lists them).
QUERY_RETRIEVE_SOP_CLASSES: dict[str, str] = {
    "C-FIND": str(StudyRootQueryRetrieveInformationModelFind),
    "C-MOVE": str(StudyRootQueryRetrieveInformationModelMove),
    "C-GET": str(StudyRootQueryRetrieveInformationModelGet),
}


class PullError(NodeError):
    """A pull could not be done; the message is one line for a user (no secrets)."""


class UnknownSource(PullError):
    """No source of that name is configured."""


class PullArgumentError(PullError):
    """The request names neither an accession nor a study, or both, or an invalid UID."""


class NothingFound(PullError):
    """The source has no study matching the accession or Study Instance UID (or no such series)."""


class SourceUnavailable(PullError):
    """The source cannot be reached, refuses the association or request, or answers a query with a failure."""


@dataclass(frozen=True)
class PullResult:
    """What one pull did.

    Attributes
    ----------
    source : str
        The source's name.
    studies : int
        Studies that matched.
    series_requested : int
        Series retrieved.
    series_skipped : int
        Series already analysed and unchanged: not retrieved (no-op).
    instances_received : int
        Instances the node stored from this pull.
    failed : int
        Sub-operations (instances) that failed.
    message : str
        One line for a user.
    """

    source: str
    studies: int
    series_requested: int
    series_skipped: int
    instances_received: int
    failed: int
    message: str


class Intake(Protocol):
    """Where retrieved instances (C-GET, WADO-RS) go: the node's receiver, or a forwarder to a running node."""

    def __call__(self, request: StoreRequest) -> int:
        """Store one instance; return its DIMSE status (:mod:`core.status`)."""
        ...

    def flush(self) -> int:
        """Finish what was handed over since the last flush; return how many of those instances failed."""
        ...


class ReceiverIntake:
    """The node's own receiver as an intake: each instance is kept in the spool before the next is asked for.

    Parameters
    ----------
    sink : callable
        The receiver (the SCP's own sink).
    recorded : callable, optional
        Waits, at most the given seconds, until the rows of what the sink kept are committed
        (:meth:`node.receiver.Receiver.flush`), so that a series pulled is in the database when its pull
        returns, as a pushed series is when its association is released.
    """

    #: Seconds a series' pull waits for its rows; the instances are already durable in the spool.
    RECORD_TIMEOUT = 60.0

    def __init__(
        self, sink: Callable[[StoreRequest], int], recorded: Callable[[float | None], bool] | None = None
    ) -> None:
        self.sink = sink
        self.recorded = recorded

    def __call__(self, request: StoreRequest) -> int:
        return self.sink(request)

    def flush(self) -> int:
        if self.recorded is not None and not self.recorded(self.RECORD_TIMEOUT):
            LOGGER.warning("pulled instances are kept in the spool; their database rows are not committed yet")
        return 0


class ForwardingIntake:
    """``ainode pull``'s intake: instances go to the running node by C-STORE, one association per series.

    Each instance is written to a file in ``folder`` as it arrives (one in memory at a time); at the
    end of each series the files are sent with :func:`dimse.scu.store_files` to the node's own SCP,
    which stores and routes them as it does every pushed instance, and removed.
    """

    def __init__(
        self,
        folder: Path,
        *,
        host: str,
        port: int,
        called_ae: str,
        calling_ae: str,
        timeout: float = 30,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.folder = folder
        self.host, self.port, self.called_ae, self.calling_ae = host, port, called_ae, calling_ae
        self.timeout = timeout
        self.ssl_context = ssl_context
        self._paths: list[Path] = []

    def __call__(self, request: StoreRequest) -> int:
        path = self.folder / f"{len(self._paths):06d}.dcm"
        os.replace(request.path, path)  # the intake owns the file while it runs: kept until the series is sent
        self._paths.append(path)
        return dimse_status.SUCCESS

    def flush(self) -> int:
        paths, self._paths = self._paths, []
        if not paths:
            return 0
        where = f"the node ({self.called_ae}@{self.host}:{self.port})"
        try:
            outcomes = store_files(
                paths,
                host=self.host,
                port=self.port,
                called_ae=self.called_ae,
                calling_ae=self.calling_ae,
                timeout=self.timeout,
                ssl_context=self.ssl_context,
            )
        except AssociationFailed as exc:
            raise PullError(
                f"cannot hand the retrieved instances to {where}: {exc.reason} (is 'ainode serve' running?)"
            ) from exc
        finally:
            for path in paths:
                path.unlink(missing_ok=True)
        return sum(1 for outcome in outcomes if not outcome.succeeded)


@dataclass(frozen=True)
class RemoteSeries:
    """A series as the source described it."""

    study_uid: str
    series_uid: str
    modality: str
    instances: int | None  # Number of Series Related Instances, when the source gave it
    not_analysed: str | None  # why the node would never analyse it (result object, own output), or None


@dataclass
class _Retrieved:
    received: int = 0
    failed: int = 0


class _Source(Protocol):
    name: str

    def studies(self, accession: str | None, study_uid: str | None) -> list[str]: ...

    def series(self, study_uid: str, series_uid: str | None) -> list[RemoteSeries]: ...

    def instance_uids(self, series: RemoteSeries) -> set[str] | None: ...

    def retrieve(self, series: RemoteSeries, intake: Intake, directory: Path) -> _Retrieved: ...

    def close(self) -> None: ...


def hand_over(
    intake: Intake,
    directory: Path,
    part10: bytes,
    *,
    calling_ae: str,
    peer_address: str,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
) -> int:
    """Write one retrieved Part 10 file (C-GET, WADO-RS) into ``directory`` and hand it to ``intake``.

    The same path as an instance the node's SCP receives (:func:`dimse.scp.spool_part10`): the intake owns
    the file while it runs; whatever it leaves is removed. Returns the intake's status; a file that cannot
    be written is 0xA700 (out of resources).
    """
    try:
        request = spool_part10(
            directory,
            part10,
            calling_ae=calling_ae,
            peer_address=peer_address,
            peer_port=0,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
        )
    except OSError as exc:
        LOGGER.error("cannot write retrieved instance %s: %s", sop_instance_uid, exc)
        return dimse_status.OUT_OF_RESOURCES
    try:
        return intake(request)
    finally:
        request.path.unlink(missing_ok=True)


# -- DIMSE ------------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return str(value if value is not None else "").strip()


def _count(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _remote_series(study_uid: str, found: Iterable[Dataset]) -> list[RemoteSeries]:
    """The series a SERIES-level C-FIND or a QIDO-RS series search answered, by Series Instance UID."""
    series: dict[str, RemoteSeries] = {}
    for ds in found:
        uid = _text(ds.get("SeriesInstanceUID"))
        if uid:
            series[uid] = RemoteSeries(
                study_uid=study_uid,
                series_uid=uid,
                modality=_text(ds.get("Modality")),
                instances=_count(ds.get("NumberOfSeriesRelatedInstances")),
                not_analysed=is_own_or_result_object(ds),
            )
    return [series[uid] for uid in sorted(series)]


class DimseSource:
    """A Query/Retrieve SCP reached with pynetdicom (Study Root information model)."""

    def __init__(self, name: str, settings: DicomSourceSettings, calling_ae: str, move_destination: str) -> None:
        self.name = name
        self.settings = settings
        self.calling_ae = calling_ae
        self.move_destination = move_destination
        self.ssl_context = (
            tls.client_context(
                f"sources.{name}",
                ca_certificates=settings.ca_certificates,
                certificate=settings.certificate,
                private_key=settings.private_key,
                verify_hostname=settings.verify_hostname,
            )
            if settings.tls
            else None
        )
        over = " over TLS" if self.ssl_context is not None else ""
        self.where = f"source {name} ({settings.ae_title}@{settings.host}:{settings.port}{over})"
        self._find: Association | None = None

    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_ae)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        timeout = self.settings.timeout
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
        return ae

    def _associate(self, ae: AE, handlers: list[tuple[Any, Any]] | None = None, **kwargs: Any) -> Association:
        tls_args = (self.ssl_context, self.settings.host) if self.ssl_context is not None else None
        connected: list[bool] = []  # pynetdicom reports a refused connection as an aborted association
        assoc = ae.associate(
            self.settings.host,
            self.settings.port,
            ae_title=self.settings.ae_title,
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.append(True)), *(handlers or [])],
            **kwargs,
        )
        if assoc.is_established:
            return assoc
        if not connected:
            raise SourceUnavailable(f"{self.where}: cannot connect (connection refused, timed out or host unreachable)")
        if assoc.is_rejected:
            raise SourceUnavailable(
                f"{self.where}: association rejected (check that the source knows AE title {self.calling_ae})"
            )
        tls_hint = " (TLS handshake failed?)" if self.ssl_context is not None else ""
        raise SourceUnavailable(f"{self.where}: association aborted by the source{tls_hint}")

    def _find_association(self) -> Association:
        if self._find is None or not self._find.is_established:
            ae = self._ae()
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
            self._find = self._associate(ae)
        return self._find

    def _c_find(self, query: Dataset) -> list[Dataset]:
        assoc = self._find_association()
        found: list[Dataset] = []
        for answer, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            if not answer:  # no response: timeout, abort or a lost connection
                self.close()
                raise SourceUnavailable(f"{self.where}: no answer to C-FIND (timed out or connection lost)")
            code = int(answer.Status)
            if code in _PENDING and identifier is not None:
                found.append(identifier)
            elif code == dimse_status.SUCCESS:
                break
            elif code not in _PENDING:
                self.close()
                raise SourceUnavailable(f"{self.where}: C-FIND failed with status 0x{code:04X}")
        return found

    def studies(self, accession: str | None, study_uid: str | None) -> list[str]:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study_uid or ""
        query.AccessionNumber = accession or ""
        uids = [_text(ds.get("StudyInstanceUID")) for ds in self._c_find(query)]
        return sorted({uid for uid in uids if uid})

    def series(self, study_uid: str, series_uid: str | None) -> list[RemoteSeries]:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid or ""
        query.Modality = ""
        query.Manufacturer = ""
        query.NumberOfSeriesRelatedInstances = ""
        return _remote_series(study_uid, self._c_find(query))

    def instance_uids(self, series: RemoteSeries) -> set[str] | None:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = series.study_uid
        query.SeriesInstanceUID = series.series_uid
        query.SOPInstanceUID = ""
        return {uid for uid in (_text(ds.get("SOPInstanceUID")) for ds in self._c_find(query)) if uid}

    def _series_identifier(self, series: RemoteSeries) -> Dataset:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = series.study_uid
        identifier.SeriesInstanceUID = series.series_uid
        return identifier

    def retrieve(self, series: RemoteSeries, intake: Intake, directory: Path) -> _Retrieved:
        if self.settings.retrieve == "move":
            return self._move(series)
        return self._get(series, intake, directory)

    def _final(self, responses: Iterator[tuple[Dataset, Dataset | None]], what: str) -> Dataset:
        """The last response of a C-MOVE or C-GET (pending ones only report progress)."""
        last: Dataset | None = None
        for answer, _identifier in responses:
            if not answer:
                raise SourceUnavailable(f"{self.where}: no answer to {what} (timed out or connection lost)")
            last = answer
            if int(answer.Status) not in _PENDING:
                break
        if last is None:
            raise SourceUnavailable(f"{self.where}: no answer to {what}")
        return last

    def _outcome(self, final: Dataset, what: str, series: RemoteSeries) -> _Retrieved:
        code = int(final.Status)
        completed = _count(final.get("NumberOfCompletedSuboperations")) or 0
        warnings = _count(final.get("NumberOfWarningSuboperations")) or 0
        failed = _count(final.get("NumberOfFailedSuboperations")) or 0
        if code == _MOVE_DESTINATION_UNKNOWN:
            raise SourceUnavailable(
                f"{self.where}: C-MOVE destination {self.move_destination} unknown to the source "
                "(declare the node there as a modality: its AE title, host and port)"
            )
        counted = completed + warnings + failed
        if code != dimse_status.SUCCESS and not 0xB000 <= code <= 0xBFFF and not counted:
            # Refused as a whole (e.g. 0xC000 unable to process, 0xA7xx out of resources): nothing was sent.
            raise SourceUnavailable(f"{self.where}: {what} of series {series.series_uid} failed: status 0x{code:04X}")
        if code == dimse_status.SUCCESS and not counted:
            # The counts are optional in a final success response (PS3.4 C.4.2.1.6): all sub-operations succeeded.
            return _Retrieved(received=series.instances or 0)
        return _Retrieved(received=completed + warnings, failed=failed)

    def _move(self, series: RemoteSeries) -> _Retrieved:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = self._associate(ae)
        try:
            responses = assoc.send_c_move(
                self._series_identifier(series), self.move_destination, StudyRootQueryRetrieveInformationModelMove
            )
            final = self._final(responses, "C-MOVE")
        finally:
            assoc.release()
        return self._outcome(final, "C-MOVE", series)

    def _get(self, series: RemoteSeries, intake: Intake, directory: Path) -> _Retrieved:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        sop_classes = self._sop_classes(series)
        for uid in sop_classes:
            ae.add_requested_context(uid, list(ACCEPTED_TRANSFER_SYNTAXES))
        roles = [build_role(uid, scp_role=True) for uid in sop_classes]
        refused = 0

        def on_store(event: Any) -> int:
            nonlocal refused
            request = event.request
            part10 = (
                encode_file_meta(
                    sop_class_uid=str(request.AffectedSOPClassUID),
                    sop_instance_uid=str(request.AffectedSOPInstanceUID),
                    transfer_syntax_uid=str(event.context.transfer_syntax),
                    implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                    implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                    source_ae_title=self.settings.ae_title,
                )
                + request.DataSet.getvalue()
            )
            code = hand_over(
                intake,
                directory,
                part10,
                calling_ae=self.settings.ae_title,
                peer_address=self.settings.host[:64],
                sop_class_uid=str(request.AffectedSOPClassUID),
                sop_instance_uid=str(request.AffectedSOPInstanceUID),
                transfer_syntax_uid=str(event.context.transfer_syntax),
            )
            if not dimse_status.is_store_success(code):
                refused += 1
            return code

        assoc = self._associate(ae, [(evt.EVT_C_STORE, on_store)], ext_neg=roles)
        try:
            responses = assoc.send_c_get(self._series_identifier(series), StudyRootQueryRetrieveInformationModelGet)
            final = self._final(responses, "C-GET")
        finally:
            assoc.release()
        outcome = self._outcome(final, "C-GET", series)
        return _Retrieved(received=outcome.received, failed=max(outcome.failed, refused))

    def _sop_classes(self, series: RemoteSeries) -> list[str]:
        """The storage SOP classes to accept on a C-GET association: the series' own, when the source says."""
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = series.study_uid
        query.SeriesInstanceUID = series.series_uid
        query.SOPInstanceUID = ""
        query.SOPClassUID = ""
        named = sorted({_text(ds.get("SOPClassUID")) for ds in self._c_find(query)} - {""})
        if named and len(named) <= _MAX_STORAGE_CONTEXTS:
            return named
        # The source did not say: the common storage classes, as many as one association can propose.
        return [str(cx.abstract_syntax) for cx in StoragePresentationContexts[:_MAX_STORAGE_CONTEXTS]]

    def close(self) -> None:
        assoc, self._find = self._find, None
        if assoc is not None and assoc.is_established:
            assoc.release()


# -- DICOMweb ---------------------------------------------------------------------------------------


def _json_value(item: dict[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else ""


class DicomWebSource:
    """A DICOMweb server: QIDO-RS to find, WADO-RS to retrieve (dicomweb-client)."""

    def __init__(self, name: str, settings: DicomWebSourceSettings) -> None:
        self.name = name
        self.settings = settings
        self.where = f"source {name} ({_without_userinfo(settings.url)})"
        secret = settings.secret()
        try:
            self.client = dicomweb_client(
                f"source {name}",
                url=settings.url,
                auth=settings.auth,
                username=settings.username,
                password=secret if settings.auth == "basic" else None,
                token=secret if settings.auth == "bearer" else None,
                timeout=settings.timeout,
                verify_tls=tls.https_verify(name, settings, key=f"sources.{name}"),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except requests.HTTPError as exc:
            response = exc.response
            code = response.status_code if response is not None else 0
            hint = " (authentication failed: check the username/password or token)" if code == 401 else ""
            raise SourceUnavailable(f"{self.where}: {what} answered HTTP {code}{hint}") from exc
        except requests.RequestException as exc:
            raise SourceUnavailable(f"{self.where}: {what}: {_connection_reason(exc)}") from exc
        except ValueError as exc:  # dicomweb-client: a body that is not the DICOM JSON or multipart asked for
            raise SourceUnavailable(f"{self.where}: {what}: unexpected answer ({exc})") from exc

    def studies(self, accession: str | None, study_uid: str | None) -> list[str]:
        filters = {"AccessionNumber": accession} if accession else {"StudyInstanceUID": study_uid or ""}
        found = self._call("QIDO-RS studies", lambda: self.client.search_for_studies(search_filters=filters))
        return sorted({uid for uid in (_json_value(item, "0020000D") for item in found) if uid})

    def series(self, study_uid: str, series_uid: str | None) -> list[RemoteSeries]:
        filters = {"SeriesInstanceUID": series_uid} if series_uid else None
        found = self._call(
            "QIDO-RS series",
            lambda: self.client.search_for_series(
                study_instance_uid=study_uid,
                search_filters=filters,
                fields=["NumberOfSeriesRelatedInstances", "Manufacturer"],
            ),
        )
        return _remote_series(study_uid, [Dataset.from_json(item) for item in found])

    def instance_uids(self, series: RemoteSeries) -> set[str] | None:
        found = self._call(
            "QIDO-RS instances",
            lambda: self.client.search_for_instances(
                study_instance_uid=series.study_uid, series_instance_uid=series.series_uid
            ),
        )
        return {uid for uid in (_json_value(item, "00080018") for item in found) if uid}

    def retrieve(self, series: RemoteSeries, intake: Intake, directory: Path) -> _Retrieved:
        outcome = _Retrieved()
        # transfer-syntax=*: each instance as the server stores it, not transcoded; one part in memory at a time.
        instances = self.client.iter_series(
            series.study_uid, series.series_uid, media_types=(("application/dicom", "*"),)
        )
        while True:
            ds = self._call("WADO-RS series", lambda: next(instances, None))
            if ds is None:
                return outcome
            try:
                part10 = encode_part10(ds)  # names ainode as the implementation that wrote the file
                meta = ds.file_meta
            except Exception as exc:  # an unusable part: counted, the rest of the series still comes
                LOGGER.warning("%s: an instance of series %s is unusable: %s", self.where, series.series_uid, exc)
                outcome.failed += 1
                continue
            code = hand_over(
                intake,
                directory,
                part10,
                calling_ae=self.name[:16],
                peer_address=(urlsplit(self.settings.url).hostname or "")[:64],
                sop_class_uid=str(meta.MediaStorageSOPClassUID),
                sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
                transfer_syntax_uid=str(meta.TransferSyntaxUID),
            )
            if dimse_status.is_store_success(code):
                outcome.received += 1
            else:
                outcome.failed += 1

    def close(self) -> None:
        """Nothing to release: the HTTP session's pooled connections close with it."""


# -- the puller -------------------------------------------------------------------------------------


def _asked(accession: str | None, study_uid: str | None) -> str:
    return f"accession {accession}" if accession else f"study {study_uid}"


def _check_uid(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 64 or not all(part.isdigit() for part in value.split(".")):
        raise PullArgumentError(f"{what} {value!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return value


class Puller:
    """Pulls studies from the configured sources into the node.

    Parameters
    ----------
    settings : Settings
        The node's settings (``sources``, ``ae_title``).
    db : Database
        The node's database: what was already analysed.
    intake : Intake
        Where C-GET and WADO-RS instances go (the node's receiver; ``ainode pull``: the running node).
    """

    def __init__(self, settings: Settings, db: Database, intake: Intake) -> None:
        self.settings = settings
        self.db = db
        self.intake = intake
        self._lock = threading.Lock()  # one pull at a time: two pulls of one series would both retrieve it

    def source(self, name: str) -> _Source:
        config = self.settings.sources.get(name)
        if config is None:
            have = ", ".join(sorted(self.settings.sources)) or "none configured"
            raise UnknownSource(f"no source named {name!r} (sources: {have})")
        if isinstance(config, DicomSourceSettings):
            return DimseSource(name, config, self.settings.ae_title, self.settings.ae_title)
        return DicomWebSource(name, config)

    def pull(
        self,
        source: str,
        *,
        accession: str | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
    ) -> PullResult:
        """Find the study (by accession or Study Instance UID), then retrieve each series not yet analysed.

        Raises
        ------
        PullError
            :class:`UnknownSource`, :class:`PullArgumentError`, :class:`NothingFound`,
            :class:`SourceUnavailable`, or :class:`node.errors.ConfigError` for a source's unreadable secret.
        """
        try:
            result, studies = self._checked_pull(source, accession, study_uid, series_uid)
        except PullError as exc:
            record(
                self.db,
                AuditKind.PULL_FAILED,
                study_uid=study_uid,
                series_uid=series_uid,
                message=f"source {source}, {_asked(accession, study_uid)}: {exc}",
            )
            raise
        record(
            self.db,
            AuditKind.PULLED,
            study_uid=studies[0] if len(studies) == 1 else None,
            series_uid=series_uid,
            instance_count=result.instances_received,
            message=result.message,
        )
        return result

    def _checked_pull(
        self, source: str, accession: str | None, study_uid: str | None, series_uid: str | None
    ) -> tuple[PullResult, list[str]]:
        accession = accession.strip() if accession else None
        if bool(accession) == bool(study_uid):
            raise PullArgumentError("give either an accession number or a Study Instance UID (one of them)")
        if accession is not None and (any(c in accession for c in "*?\\") or len(accession) > 16):
            raise PullArgumentError(f"accession number {accession!r}: at most 16 characters, no wildcards or backslash")
        study_uid = _check_uid(study_uid, "Study Instance UID")
        series_uid = _check_uid(series_uid, "Series Instance UID")
        remote = self.source(source)
        with self._lock:
            try:
                return self._pull(remote, accession, study_uid, series_uid)
            finally:
                remote.close()

    def _pull(
        self, remote: _Source, accession: str | None, study_uid: str | None, series_uid: str | None
    ) -> tuple[PullResult, list[str]]:
        asked = _asked(accession, study_uid)
        studies = remote.studies(accession, study_uid)
        if not studies:
            raise NothingFound(f"source {remote.name}: no study with {asked}")
        wanted = [s for study in studies for s in remote.series(study, series_uid)]
        if series_uid and not wanted:
            raise NothingFound(f"source {remote.name}: no series {series_uid} in {asked}")
        requested = skipped = not_analysed = 0
        total = _Retrieved()
        for series in wanted:
            if series.not_analysed:
                LOGGER.info(
                    "pull from %s: series %s not retrieved: %s", remote.name, series.series_uid, series.not_analysed
                )
                not_analysed += 1
                continue
            if self._unchanged(remote, series):
                LOGGER.info(
                    "pull from %s: series %s already analysed and unchanged: not retrieved",
                    remote.name,
                    series.series_uid,
                )
                skipped += 1
                continue
            outcome = remote.retrieve(series, self.intake, self.settings.tmp_dir)
            outcome.failed += self.intake.flush()
            requested += 1
            total.received += outcome.received
            total.failed += outcome.failed
            LOGGER.info(
                "pull from %s: series %s: %d instances received, %d failed",
                remote.name,
                series.series_uid,
                outcome.received,
                outcome.failed,
            )
        parts = [
            f"{len(studies)} {'study' if len(studies) == 1 else 'studies'}",
            f"{requested} series retrieved ({total.received} instances received"
            + (f", {total.failed} failed)" if total.failed else ")"),
            f"{skipped} already analysed and unchanged",
        ]
        if not_analysed:
            parts.append(f"{not_analysed} not analysable (results or the node's own objects)")
        message = f"pull of {asked} from {remote.name}: " + ", ".join(parts)
        (LOGGER.warning if total.failed else LOGGER.info)("%s", message)
        result = PullResult(
            source=remote.name,
            studies=len(studies),
            series_requested=requested,
            series_skipped=skipped,
            instances_received=total.received,
            failed=total.failed,
            message=message,
        )
        return result, studies

    def _unchanged(self, remote: _Source, series: RemoteSeries) -> bool:
        """True when the node analysed this series and the source has no instance the node lacks."""
        with self.db.session() as session:
            row = session.scalar(select(Series).where(Series.series_uid == series.series_uid))
            if row is None or row.state in (SeriesState.RECEIVING, SeriesState.QUEUED):
                return False
            if row.state == SeriesState.DONE:
                latest = session.scalar(
                    select(Job.state).where(Job.series_uid == series.series_uid).order_by(Job.id.desc()).limit(1)
                )
                if latest != JobState.DONE:
                    return False  # failed (or never ran): pulling it again analyses it again
            known = set(session.scalars(select(Instance.sop_uid).where(Instance.series_uid == series.series_uid)))
        if series.instances is not None and series.instances > len(known):
            return False
        listed = remote.instance_uids(series)
        return listed is None or listed <= known


def load_puller(settings: Settings, db: Database, intake: Intake) -> Puller:
    """A :class:`Puller`; checks each source's secret and TLS files now, so a bad one stops start-up."""
    puller = Puller(settings, db, intake)
    for name in settings.sources:
        puller.source(name).close()
    return puller
