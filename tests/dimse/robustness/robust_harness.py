"""The harness of the DICOM protocol robustness suite (issue 16): the node as a process, bad peers on raw sockets.

* :class:`RobustNode` runs ``ainode serve`` (:class:`tests.integration.nodeproc.NodeProcess`) with the short
  timers and small limits the suite needs, so that a slowloris or an idle flood ends in seconds.
* :class:`Conn` is a raw TCP connection to it from any loopback address (127.0.0.2, 127.0.0.3...: Linux
  routes all of 127/8 to lo), so a case can be "another host" for the per-address caps while the good peer
  connects from 127.0.0.1. :meth:`Conn.answer` reads the node's next reaction and names it
  (:class:`Answer`: an A-ASSOCIATE-AC/RJ, an A-ABORT, P-DATA, an A-RELEASE-RP, a close, a reset, or silence).
* :class:`Case` is what each test gets: it opens the bad connections, runs the good-peer C-ECHO (pynetdicom,
  an implementation independent of ours) *during* the case, samples the node's RSS all along, and at the end
  checks that C-ECHO still works, nothing was stored when nothing should be, the node logged no traceback
  and its RSS stayed within the case's bound. Every case leaves one row (case, answer, RSS growth) for the
  table the suite prints at its end.

The PDUs a case sends are built by hand (that is the point: they are wrong) or, when they must be right, with
pynetdicom's encoders (:mod:`raw_peer`); command sets are encoded with pydicom in Implicit VR Little Endian
(PS3.7 6.3.1).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_AC
from raw_peer import associate_rq, p_data

from tests.integration.nodeproc import NodeProcess

NODE_AE = "AINODE"
BAD_AE = "PACS"  # allowed, from any address: the bad peer gets past access control
GOOD_AE = "GOODPEER"
FAR_AE = "FARAWAY"  # allowed only from FAR_HOST
FAR_HOST = "127.0.0.9"
GOOD_HOST = "127.0.0.1"
VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
MiB = 1 << 20

#: The suite's limits: short timers so the slow cases run in seconds, small caps so they are cheap to exceed.
LIMITS: dict[str, Any] = {
    "association_request_timeout": 2,
    "acse_timeout": 2,
    "network_timeout": 4,
    "dimse_timeout": 3,
    "max_negotiating": 12,
    "max_negotiating_per_address": 4,
    "max_dataset_size": 32 * MiB,
}
MAX_ASSOCIATIONS = 6
MAX_PDU = 65536
#: A reaction within this many seconds past a timer counts as "on time" on a 2-core machine running other tests.
MARGIN = 2.0
#: Default bound on the node's RSS growth during one case.
RSS_BOUND = 64 * MiB

# PDU types (PS3.8 Table 9-11)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)
RELEASE_RQ_PDU = bytes((0x05, 0, 0, 0, 0, 4, 0, 0, 0, 0))
ABORT_PDU = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0))


def pdu(pdu_type: int, body: bytes) -> bytes:
    """A PDU: type, reserved byte, 32-bit big-endian length, body (PS3.8 9.3.1)."""
    return struct.pack(">BxL", pdu_type, len(body)) + body


def pdu_header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BxL", pdu_type, length)


def item(item_type: int, value: bytes) -> bytes:
    """A variable item or sub-item: type, reserved byte, 16-bit length, value (PS3.8 9.3.2)."""
    return struct.pack(">BxH", item_type, len(value)) + value


def ae_field(title: str | bytes) -> bytes:
    raw = title.encode() if isinstance(title, str) else title
    return raw.ljust(16, b" ")[:16] if isinstance(title, str) else raw


def rq_body(items: bytes, *, called: str | bytes = NODE_AE, calling: str | bytes = BAD_AE, version: int = 1) -> bytes:
    """An A-ASSOCIATE-RQ body with hand-made variable items (PS3.8 Table 9-11)."""
    return struct.pack(">H2x", version) + ae_field(called) + ae_field(calling) + bytes(32) + items


def app_context(uid: str = "1.2.840.10008.3.1.1.1") -> bytes:
    return item(0x10, uid.encode())


def pres_context(context_id: int, abstract: str, transfers: Sequence[str] = (IMPLICIT,)) -> bytes:
    subs = item(0x30, abstract.encode()) + b"".join(item(0x40, ts.encode()) for ts in transfers)
    return item(0x20, bytes((context_id, 0, 0, 0)) + subs)


def user_info(max_pdu: int = 16384, *extra: bytes, class_uid: str = "1.2.826.0.1.3680043.9.3811.99") -> bytes:
    subs = item(0x51, struct.pack(">L", max_pdu)) + item(0x52, class_uid.encode()) + b"".join(extra)
    return item(0x50, subs)


def standard_items(*contexts: bytes, max_pdu: int = 16384, extra: bytes = b"") -> bytes:
    """Application context, the given presentation context items (Verification by default), user information."""
    contexts = contexts or (pres_context(1, VERIFICATION),)
    return app_context() + b"".join(contexts) + user_info(max_pdu, extra)


def good_rq(
    contexts: Sequence[tuple[int, str, Sequence[str]]] = ((1, VERIFICATION, (IMPLICIT,)),), **kwargs: Any
) -> bytes:
    """A valid A-ASSOCIATE-RQ encoded by pynetdicom (``raw_peer.associate_rq``)."""
    kwargs.setdefault("calling", BAD_AE)
    kwargs.setdefault("called", NODE_AE)
    return associate_rq(contexts, **kwargs)


# -- DIMSE command sets (PS3.7 9.3, E.1) ------------------------------------------------------------


def encode_implicit(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return fp.getvalue()


def command_set(**elements: Any) -> bytes:
    """A command set (Implicit VR Little Endian) with its Command Group Length first."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = encode_implicit(ds)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def echo_rq(message_id: int = 1) -> bytes:
    return command_set(
        AffectedSOPClassUID=VERIFICATION, CommandField=0x0030, MessageID=message_id, CommandDataSetType=0x0101
    )


def store_rq(
    sop_class: str | None = CT, sop_instance: str | None = "1.2.826.0.1.3680043.8.498.99.1", message_id: int = 1
) -> bytes:
    elements: dict[str, Any] = {
        "CommandField": 0x0001,
        "MessageID": message_id,
        "Priority": 0,
        "CommandDataSetType": 0x0000,
    }
    if sop_class is not None:
        elements = {"AffectedSOPClassUID": sop_class, **elements}
    if sop_instance is not None:
        elements["AffectedSOPInstanceUID"] = sop_instance
    return command_set(**elements)


def decode_command(raw: bytes) -> Dataset:
    return read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)


def data_set(
    sop_class: str = CT, sop_instance: str = "1.2.826.0.1.3680043.8.498.99.1", *, implicit: bool = True, pixels: int = 0
) -> bytes:
    """A small image data set encoded in the given VR; about ``pixels`` bytes of OW Pixel Data (rows of 512 bytes)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.StudyInstanceUID = sop_instance + ".1"
    ds.SeriesInstanceUID = sop_instance + ".2"
    ds.Modality = "CT" if sop_class == CT else "MR"
    ds.PatientID = "ROBUST"
    ds.PatientName = "Robustness^Case"
    if pixels:
        ds.Rows, ds.Columns = max(1, pixels // 512), 256
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = bytes(ds.Rows * 512)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def pdvs(*parts: tuple[int, int, bytes]) -> bytes:
    """PDV items ``(context id, control header, fragment)`` (PS3.8 9.3.5.1, E.2) for one P-DATA-TF body."""
    return b"".join(struct.pack(">LBB", len(frag) + 2, cid, ctl) + frag for cid, ctl, frag in parts)


def message(context_id: int, command: bytes, data: bytes | None = None, *, fragment: int = 16000) -> bytes:
    """A whole DIMSE message as P-DATA-TF PDUs of at most ``fragment`` bytes of fragment each."""
    out = [p_data(context_id, command, command=True, last=True)]
    if data is not None:
        chunks = [data[i : i + fragment] for i in range(0, len(data), fragment)] or [b""]
        out += [p_data(context_id, c, command=False, last=i == len(chunks) - 1) for i, c in enumerate(chunks)]
    return b"".join(out)


# -- the node's answers ---------------------------------------------------------------------------------


@dataclass
class Answer:
    """What the node did next on a connection."""

    kind: str  # AC, RJ, ABORT, PDATA, RP, closed, reset, silent, other
    raw: bytes = b""
    after: float = 0.0  # seconds from the start of the read

    @property
    def rj(self) -> tuple[int, int, int]:
        return (self.raw[7], self.raw[8], self.raw[9])

    def is_rj(self, result: int | None = None, source: int | None = None, reason: int | None = None) -> bool:
        if self.kind != "RJ":
            return False
        want = (result, source, reason)
        return all(w is None or w == got for w, got in zip(want, self.rj, strict=True))

    def is_abort(self, source: int | None = None, reason: int | None = None) -> bool:
        if self.kind != "ABORT":
            return False
        return (source is None or self.raw[8] == source) and (reason is None or self.raw[9] == reason)

    @property
    def transient_rj(self) -> bool:
        """Rejected-transient, service-provider (presentation), local-limit-exceeded (PS3.8 Table 9-21)."""
        return self.is_rj(2, 3, 2)

    @property
    def ended(self) -> bool:
        """The node ended the connection: an A-ABORT, an A-ASSOCIATE-RJ, a close or a reset."""
        return self.kind in ("ABORT", "RJ", "closed", "reset")

    def accepted(self) -> A_ASSOCIATE_AC:
        assert self.kind == "AC", f"expected an A-ASSOCIATE-AC, got {self}"
        decoded = A_ASSOCIATE_AC()
        decoded.decode(self.raw)
        return decoded

    def context_results(self) -> dict[int, int]:
        """Presentation context ID -> result of an A-ASSOCIATE-AC (PS3.8 9.3.3.2)."""
        results = {}
        for cx in self.accepted().presentation_context:
            assert cx.context_id is not None and cx.result is not None, f"context item without ID or result: {cx}"
            results[cx.context_id] = cx.result
        return results

    def commands(self) -> list[Dataset]:
        """The command sets in a P-DATA-TF answer (each assumed whole in one PDV)."""
        assert self.kind == "PDATA", f"expected P-DATA-TF, got {self}"
        found = []
        body, offset = self.raw[6:], 0
        while offset + 6 <= len(body):
            length, _cid, control = struct.unpack_from(">LBB", body, offset)
            if control & 0x01:
                found.append(decode_command(body[offset + 6 : offset + 4 + length]))
            offset += 4 + length
        return found

    @property
    def status(self) -> int:
        return int(self.commands()[0].Status)

    def __str__(self) -> str:
        if self.kind == "RJ":
            result, source, reason = self.rj
            return f"A-ASSOCIATE-RJ result {result} source {source} reason {reason}"
        if self.kind == "ABORT":
            return f"A-ABORT source {self.raw[8]} reason {self.raw[9]}"
        if self.kind == "PDATA":
            try:
                statuses = [f"0x{int(c.Status):04X}" for c in self.commands() if "Status" in c]
            except Exception:  # a case may receive something we cannot decode; say so in the table
                statuses = ["undecodable"]
            return f"P-DATA status {','.join(statuses) or '-'}"
        if self.kind in ("closed", "reset", "silent"):
            return f"{self.kind} after {self.after:.1f} s"
        return self.kind


_KINDS = {ASSOCIATE_AC: "AC", ASSOCIATE_RJ: "RJ", P_DATA: "PDATA", RELEASE_RP: "RP", ABORT: "ABORT"}


class Conn:
    """A raw connection to the node from ``source`` (any 127/8 address)."""

    def __init__(self, port: int, source: str = GOOD_HOST, timeout: float = 10) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((GOOD_HOST, port))
        self.closed = False

    def send(self, data: bytes) -> bool:
        """Send; False when the node has already closed or reset the connection."""
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _exactly(self, count: int, deadline: float) -> bytes | None:
        chunks, got = [], 0
        while got < count:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(min(count - got, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def answer(self, within: float = 5.0) -> Answer:
        """The node's next PDU, or what it did instead, waiting up to ``within`` seconds."""
        start = time.monotonic()
        deadline = start + within
        try:
            header = self._exactly(6, deadline)
            if header is None:
                return Answer("closed", after=time.monotonic() - start)
            pdu_type, length = struct.unpack(">BxL", header)
            if length > 64 * MiB:
                return Answer("other", header, time.monotonic() - start)
            body = self._exactly(length, deadline + 5)
            if body is None:
                return Answer("closed", header, time.monotonic() - start)
        except TimeoutError:
            return Answer("silent", after=time.monotonic() - start)
        except ConnectionResetError:
            return Answer("reset", after=time.monotonic() - start)
        return Answer(_KINDS.get(pdu_type, f"PDU 0x{pdu_type:02X}"), header + body, time.monotonic() - start)

    def end(self, within: float) -> Answer:
        """How the node ends the connection within ``within`` s: its A-ABORT, A-ASSOCIATE-RJ or A-RELEASE-RP (after
        which PS3.8 9.2 Sta13 leaves the close to us), or the close itself; other PDUs before it are skipped."""
        start = time.monotonic()
        while True:
            left = within - (time.monotonic() - start)
            got = self.answer(max(0.05, left))
            got.after = time.monotonic() - start
            if got.kind in ("closed", "reset", "silent", "ABORT", "RJ", "RP"):
                return got
            if got.after > within:
                return Answer("silent", after=got.after)

    def associate(self, rq: bytes | None = None) -> Answer:
        """Send an A-ASSOCIATE-RQ (a valid one by default) and return the A-ASSOCIATE-AC."""
        self.send(rq if rq is not None else good_rq())
        got = self.answer()
        assert got.kind == "AC", f"association not accepted: {got}"
        return got

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.close()


# -- the node ---------------------------------------------------------------------------------------------


def rss(pid: int) -> int:
    """Resident set size of a process in bytes (/proc/PID/status VmRSS)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RobustNode:
    """``ainode serve`` with the suite's limits; the good peer's C-ECHO; the spool and the log."""

    def __init__(self, workdir: Path, **settings: Any) -> None:
        config: dict[str, Any] = {
            "allowed_peers": [{"ae_title": BAD_AE}, {"ae_title": GOOD_AE}, {"ae_title": FAR_AE, "host": FAR_HOST}],
            "max_associations": MAX_ASSOCIATIONS,
            "max_pdu": MAX_PDU,
            "log_level": "INFO",
            "dicom_limits": dict(LIMITS),
        }
        config.update(settings)
        #: The TLS port, when ``tls`` settings name one.
        self.tls_port: int | None = settings.get("tls", {}).get("port")
        self.process = NodeProcess(workdir, **config)

    def start(self) -> RobustNode:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None

    def rss(self) -> int:
        return rss(self.pid)

    def settle(self, timeout: float = 15) -> None:
        """Wait until the RSS holds within 1 MiB over one second (start-up done), ``timeout`` seconds at most."""
        deadline = time.monotonic() + timeout
        previous = self.rss()
        while time.monotonic() < deadline:
            time.sleep(1)
            current = self.rss()
            if abs(current - previous) < MiB:
                return
            previous = current

    def log_size(self) -> int:
        return self.process.log_path.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.process.log_path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def stored(self) -> list[Path]:
        """Files in the spool and files being received (data_dir/tmp), sorted."""
        data = self.process.data_dir
        return sorted([*data.glob("spool/**/*.dcm"), *(p for p in data.glob("tmp/**/*") if p.is_file())])

    def echo(self, *, source: str = GOOD_HOST, timeout: float = 5) -> int:
        """One C-ECHO from the good peer in a fresh association; its status, or -1 when no association."""
        ae = _good_ae(timeout)
        assoc = ae.associate(GOOD_HOST, self.port, ae_title=NODE_AE, bind_address=(source, 0))
        if not assoc.is_established:
            return -1
        try:
            answer = assoc.send_c_echo()
            return int(answer.Status) if "Status" in answer else -2
        finally:
            assoc.release()


@contextlib.contextmanager
def running_node(workdir: Path, **settings: Any) -> Iterator[RobustNode]:
    """A started :class:`RobustNode`, warmed up, stopped at the end of the block.

    The node goes on loading for a moment after its port opens, and its first association loads more: the cases'
    RSS baselines are taken once an echo has run and the RSS has settled.
    """
    node = RobustNode(workdir, **settings).start()
    try:
        assert node.echo() == 0, node.process.log()
        node.settle()
        yield node
    finally:
        node.stop()


def _good_ae(timeout: float) -> AE:
    ae = AE(ae_title=GOOD_AE)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    ae.connection_timeout = timeout
    return ae


class HeldAssociation:
    """A good peer's association opened before a case, echoing on demand: an established peer is never blocked."""

    def __init__(self, port: int, timeout: float = 5) -> None:
        self.assoc = _good_ae(timeout).associate(GOOD_HOST, port, ae_title=NODE_AE)
        assert self.assoc.is_established, "the good peer could not associate before the case"

    def echo(self) -> int:
        if not self.assoc.is_established:
            return -1
        answer = self.assoc.send_c_echo()
        return int(answer.Status) if "Status" in answer else -2

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


_Recorded = TypeVar("_Recorded", Answer, str)


# -- one case ----------------------------------------------------------------------------------------------


@dataclass
class Row:
    case: str
    answer: str
    rss_growth: int
    seconds: float


@dataclass
class Case:
    """One robustness case against ``node``: its connections, probes, RSS samples and end checks."""

    node: RobustNode
    name: str
    rss_bound: int = RSS_BOUND
    stores: bool = False  # the case stores something on purpose
    answer: str = ""
    conns: list[Conn] = field(default_factory=list)
    held: list[HeldAssociation] = field(default_factory=list)
    probes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _peak: int = 0
    row: Row | None = None  # the table's row, once finish() has run

    def __post_init__(self) -> None:
        self.start_time = time.monotonic()
        self.baseline = self.node.rss()
        self._peak = self.baseline
        self.log_offset = self.node.log_size()
        self.stored_before = self.node.stored()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError, RuntimeError):
                self._peak = max(self._peak, self.node.rss())

    @property
    def rss_growth(self) -> int:
        """The largest RSS seen during the case, over the RSS at its start."""
        with contextlib.suppress(OSError, RuntimeError):
            self._peak = max(self._peak, self.node.rss())
        return self._peak - self.baseline

    def connect(self, source: str = GOOD_HOST) -> Conn:
        conn = Conn(self.node.port, source)
        self.conns.append(conn)
        return conn

    def associated(self, rq: bytes | None = None, source: str = GOOD_HOST) -> Conn:
        conn = self.connect(source)
        conn.associate(rq)
        return conn

    def hold(self) -> HeldAssociation:
        """Open the good peer's association now, to echo on it while the case runs."""
        held = HeldAssociation(self.node.port)
        self.held.append(held)
        return held

    def probe(self, *, fresh: bool = True) -> None:
        """The good peer's C-ECHO during the case: on every held association, and in a new one if ``fresh``."""
        for held in self.held:
            status = held.echo()
            assert status == 0, (
                f"C-ECHO on the good peer's established association failed ({status}) during {self.name}"
            )
        if fresh:
            status = self.node.echo()
            assert status == 0, f"the good peer's C-ECHO failed ({status}) during {self.name}"
        self.probes += 1

    def record(self, answer: _Recorded) -> _Recorded:
        self.answer = str(answer)
        return answer

    def finish(self) -> Row:
        """Close everything, then check the node: alive, C-ECHO, nothing stored, no traceback, bounded RSS."""
        for conn in self.conns:
            conn.close()
        for held in self.held:
            with contextlib.suppress(Exception):
                held.close()
        row = self.row = Row(self.name, self.answer or "-", 0, time.monotonic() - self.start_time)
        try:
            assert self.node.alive(), f"the node died during {self.name}:\n{self.node.process.log()}"
            assert self.probes, f"{self.name} never ran the good peer's C-ECHO while its connections were open"
            status = self._echo_after()
            assert status == 0, f"the good peer's C-ECHO failed ({status}) after {self.name}"
            log = self.node.log_since(self.log_offset)
            assert "Traceback" not in log, f"the node logged a traceback during {self.name}:\n{log[-4000:]}"
            if not self.stores:
                stored = self._new_files()
                assert not stored, f"{self.name} stored or left behind {stored}"
            growth = self.rss_growth
            row.rss_growth = growth
            assert growth < self.rss_bound, (
                f"the node's RSS grew by {growth / MiB:.0f} MiB during {self.name}, over {self.rss_bound / MiB:.0f} MiB"
            )
        finally:
            self._stop.set()
            self._sampler.join(1)
            row.rss_growth = max(row.rss_growth, self._peak - self.baseline)
        return row

    def _new_files(self) -> list[Path]:
        """Files the case left in the spool or in data_dir/tmp (a partial file may take a moment to go)."""
        deadline = time.monotonic() + 2
        while True:
            new = sorted(set(self.node.stored()) - set(self.stored_before))
            if not new or time.monotonic() > deadline:
                return new
            time.sleep(0.1)

    def _echo_after(self) -> int:
        """C-ECHO after the case; the node may still be closing the case's connections for a moment."""
        deadline = time.monotonic() + 3
        while True:
            status = self.node.echo()
            if status == 0 or time.monotonic() > deadline:
                return status
            time.sleep(0.2)


# -- many connections at once -------------------------------------------------------------------------


def trickle(conns: Sequence[Conn], payload: bytes, *, interval: float, duration: float) -> list[Answer]:
    """Send ``payload`` one byte per ``interval`` on every connection, for up to ``duration`` seconds.

    Returns each connection's answer: the PDU the node sent or how it ended the connection, with the time
    from the start; ``silent`` for a connection still open and unanswered at the end.
    """
    start = time.monotonic()
    answers: dict[int, Answer] = {}
    sent = [0] * len(conns)
    while len(answers) < len(conns) and time.monotonic() - start < duration:
        waiting = [i for i in range(len(conns)) if i not in answers]
        readable, _, _ = select.select([conns[i].sock for i in waiting], [], [], interval)
        for i in waiting:
            if conns[i].sock in readable:
                got = conns[i].answer(2)
                got.after = time.monotonic() - start
                answers[i] = got
        for i in waiting:
            if i in answers or sent[i] >= len(payload):
                continue
            if conns[i].send(payload[sent[i] : sent[i] + 1]):
                sent[i] += 1
            else:
                answers[i] = Answer("reset", after=time.monotonic() - start)
    return [answers.get(i, Answer("silent", after=duration)) for i in range(len(conns))]


def answers_of(conns: Iterable[Conn], within: float) -> list[Answer]:
    """Each connection's next answer, read in turn, all within ``within`` seconds from now."""
    deadline = time.monotonic() + within
    return [c.answer(max(0.05, deadline - time.monotonic())) for c in conns]


def summary(answers: Sequence[Answer]) -> str:
    """'3 x A-ABORT source 2 reason 2; 9 x A-ASSOCIATE-RJ ...' (timings left out)."""
    counts: dict[str, int] = {}
    for a in answers:
        key = a.kind if a.kind in ("closed", "reset", "silent") else str(a)
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{n} x {k}" for k, n in sorted(counts.items()))


@contextlib.contextmanager
def many(case: Case, count: int, sources: Sequence[str]) -> Iterator[list[Conn]]:
    """``count`` connections spread round-robin over ``sources``; closed at the end of the block."""
    conns = [case.connect(sources[i % len(sources)]) for i in range(count)]
    try:
        yield conns
    finally:
        for conn in conns:
            conn.close()
