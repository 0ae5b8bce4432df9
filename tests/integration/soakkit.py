"""Load and crash scenarios against a real ``ainode serve`` process, shared by the tests and ``bench/soak.py``.

- :func:`load_scenario`: several DCMTK ``storescu`` processes at once, each
  sending its own studies (CT series that are stored only, chest DX series
  that the ``cxr`` pipeline analyses), while ``echoscu`` probes the node in a
  loop and the node's resident memory is sampled from ``/proc``.
- :func:`crash_scenario`: one PACS-like sender streams chest DX instances
  (pynetdicom, one C-STORE at a time, unacknowledged ones sent again) while
  the node is killed with SIGKILL at random moments and restarted; results go
  to a real Orthanc.

Both return a :class:`Tally` whose fields are what the soak table prints and
what the tests assert: nothing lost, every series analysed, every result
delivered, no job or delivery left in flight.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from node.db import Delivery, DeliveryState, Instance, Job, JobState, Result, Series
from tests.helpers import OrthancServer, cxr_view_dir, radiograph_from_png, require_tool, tool_env
from tests.integration.nodeproc import NodeProcess

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@dataclass
class Tally:
    """What happened to the instances of one scenario (the soak table's columns)."""

    sent: int = 0
    acknowledged: int = 0
    stored: int = 0
    db_rows: int = 0
    series: int = 0
    routed_series: int = 0
    analysed: int = 0
    jobs: int = 0
    results: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    peak_rss_mb: float = 0.0
    wall_seconds: float = 0.0
    kills: int = 0
    kill_phases: dict[str, int] = field(default_factory=dict)
    echo_max_seconds: float = 0.0
    echo_failures: int = 0
    echoes: int = 0
    stuck: list[str] = field(default_factory=list)
    has_destination: bool = False
    given_up: list[str] = field(default_factory=list)  # series whose latest job failed, with its recorded error


# --------------------------------------------------------------------------- test data


def small_radiograph_template(folder: Path, size: int = 128, view: str = "PA") -> pydicom.Dataset:
    """A chest DX For Presentation built from a real frontal PNG, down-scaled to ``size`` pixels.

    Small enough that thousands of instances cost little, real enough that the
    view filter (64×64 input) analyses it as it would a full-size radiograph.
    """
    folder.mkdir(parents=True, exist_ok=True)
    png = sorted((cxr_view_dir() / "frontal").glob("*.png"))[0]
    small = folder / "small-frontal.png"
    Image.open(png).convert("L").resize((size, size)).save(small)
    return pydicom.dcmread(radiograph_from_png(small, folder / "template-dx.dcm", view))


def ct_template(rows: int = 64) -> pydicom.Dataset:
    """A small CT image (pydicom's ``CT_small.dcm`` with new pixels): stored by the node, never routed."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = rows
    ds.PixelData = np.random.default_rng(0).integers(0, 2000, size=(rows, rows), dtype=np.int16).tobytes()
    # A head CT: the node has no pipeline for it (the abdomen and chest CT rules would route it).
    ds.StudyDescription = "CT HEAD"
    ds.BodyPartExamined = "HEAD"
    return ds


def write_series(template: pydicom.Dataset, folder: Path, study_uid: str, count: int, prefix: str) -> list[Path]:
    """``count`` instances of one new series of ``study_uid``, written as Part 10 files."""
    folder.mkdir(parents=True, exist_ok=True)
    template.StudyInstanceUID = study_uid
    template.SeriesInstanceUID = generate_uid()
    paths = []
    for i in range(count):
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        template.InstanceNumber = i + 1
        path = folder / f"{prefix}-{template.SeriesInstanceUID[-12:]}-{i:04d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def load_corpus(folder: Path, senders: int, per_sender: int, series_size: int = 10) -> list[list[Path]]:
    """Files for each sender: two studies each, series of ``series_size``, half chest DX and half CT."""
    dx = small_radiograph_template(folder / "templates")
    ct = ct_template()
    corpus = []
    for s in range(senders):
        files: list[Path] = []
        studies = [generate_uid(), generate_uid()]
        n = 0
        while len(files) < per_sender:
            count = min(series_size, per_sender - len(files))
            template = dx if n % 2 == 0 else ct
            files += write_series(template, folder / f"sender{s}", studies[n % 2], count, "dx" if n % 2 == 0 else "ct")
            n += 1
        corpus.append(files)
    return corpus


# --------------------------------------------------------------------------- probes


class RssSampler(threading.Thread):
    """Samples a process's resident set size (``VmRSS`` in ``/proc/PID/status``) every ``interval`` s."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.pid: int | None = None
        self.peak_kb = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            if self.pid is None:
                continue
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:  # between a kill and a restart
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                    self.samples += 1

    def stop(self) -> float:
        """Stop sampling; return the peak in MB."""
        self._halt.set()
        self.join(5)
        return self.peak_kb / 1024


class EchoProbe(threading.Thread):
    """Runs DCMTK ``echoscu`` against the node in a loop and records how long each took."""

    def __init__(self, port: int, pause: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.cmd = [require_tool("echoscu"), "-aet", "STORESCU", "-aec", "AINODE", "-to", "5", "127.0.0.1", str(port)]
        self.pause = pause
        self.durations: list[float] = []
        self.failures: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            done = subprocess.run(self.cmd, capture_output=True, text=True, env=tool_env(), timeout=30, check=False)
            self.durations.append(time.monotonic() - started)
            if done.returncode != 0:
                self.failures.append(done.stderr.strip()[-300:])
            self._halt.wait(self.pause)

    def stop(self) -> None:
        self._halt.set()
        self.join(35)


# --------------------------------------------------------------------------- checks


def spool_sop_uids(node: NodeProcess) -> list[str]:
    return [p.stem for p in (node.data_dir / "spool").rglob("*.dcm")]


def account(node: NodeProcess, tally: Tally, acknowledged: set[str], orthanc: OrthancServer | None) -> Tally:
    """Fill ``tally`` from the node's spool and database (and Orthanc), after the node has settled.

    ``lost`` counts acknowledged instances missing from the spool or the
    database, plus results that did not reach the destination.
    """
    spool = spool_sop_uids(node)
    tally.stored = len(set(spool))
    db = node.database()
    try:
        with db.session() as s:
            rows = dict(s.execute(select(Instance.sop_uid, Instance.path)).all())
            tally.db_rows = len(rows)
            tally.duplicates = int(s.scalar(select(func.coalesce(func.sum(Instance.times_received - 1), 0))) or 0)
            series = s.scalars(select(Series)).all()
            jobs = s.scalars(select(Job).order_by(Job.id)).all()
            results = s.scalars(select(Result)).all()
            deliveries = s.scalars(select(Delivery)).all()
    finally:
        db.dispose()
    missing_files = [uid for uid, path in rows.items() if not Path(path).is_file()]
    tally.lost = len(acknowledged - set(spool)) + len(acknowledged - set(rows)) + len(missing_files)
    tally.series = len(series)
    routed = {j.series_uid for j in jobs}
    tally.routed_series = len(routed)
    tally.jobs = len(jobs)
    latest: dict[str, Job] = {}
    for job in jobs:
        latest[job.series_uid] = job
    tally.analysed = sum(1 for j in latest.values() if j.state == JobState.DONE)
    tally.given_up = [f"{j.series_uid}: {j.error}" for j in latest.values() if j.state == JobState.FAILED]
    tally.results = len(results)
    tally.stuck = [f"job {j.id} {j.state.value}" for j in jobs if j.state in (JobState.QUEUED, JobState.RUNNING)]
    tally.stuck += [f"delivery {d.id} {d.state.value}" for d in deliveries if d.state != DeliveryState.DONE]
    tally.stuck += [
        f"series {s.series_uid} {s.state.value}" for s in series if s.series_uid in routed and s.state.value != "done"
    ]
    if orthanc is not None:
        there = {i["MainDicomTags"].get("SOPInstanceUID") for i in orthanc.api.get_json("instances?expand")}
        tally.has_destination = True
        tally.delivered = sum(1 for r in results if r.sop_uid in there)
        tally.lost += tally.results - tally.delivered
    else:
        tally.delivered = sum(1 for d in deliveries if d.state == DeliveryState.DONE)
    return tally


def wait_settled(node: NodeProcess, routed_expected: int | None, timeout: float) -> None:
    """Wait until nothing is receiving, queued, running or pending (and ``routed_expected`` series have jobs)."""
    db = node.database()
    deadline = time.monotonic() + timeout
    try:
        while True:
            with db.session() as s:
                busy = s.scalar(
                    select(func.count()).select_from(Series).where(Series.state.in_(["receiving", "queued"]))
                )
                jobs = s.scalar(select(func.count()).select_from(Job).where(Job.state.in_(["queued", "running"])))
                pending = s.scalar(
                    select(func.count()).select_from(Delivery).where(Delivery.state.in_(["pending", "sending"]))
                )
                routed = s.scalar(select(func.count(func.distinct(Job.series_uid))))
            if not busy and not jobs and not pending and (routed_expected is None or routed >= routed_expected):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"node not settled after {timeout} s: {busy} series receiving/queued, {jobs} jobs "
                    f"queued/running, {pending} deliveries pending, {routed} series with jobs\n"
                    f"{node.log()}"
                )
            time.sleep(0.2)
    finally:
        db.dispose()


# --------------------------------------------------------------------------- load


def load_scenario(workdir: Path, senders: int, per_sender: int, series_size: int = 10, timeout: float = 600) -> Tally:
    """``senders`` storescu processes at once, ``per_sender`` instances each, echo probed, RSS sampled."""
    corpus = load_corpus(workdir / "in", senders, per_sender, series_size)
    dx_series = {
        str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID)
        for files in corpus
        for p in files
        if p.name.startswith("dx-")
    }
    node = NodeProcess(
        workdir / "node",
        quiet_period={"default": 2.0, "CR": 2.0, "DX": 2.0},
        max_associations=senders + 4,
        log_level="INFO",
    ).start()
    tally = Tally(sent=sum(len(f) for f in corpus))
    rss, echo = RssSampler(), EchoProbe(node.port)
    rss.pid = node.proc.pid if node.proc else None
    started = time.monotonic()
    try:
        rss.start()
        echo.start()
        procs = [
            subprocess.Popen(
                [
                    require_tool("storescu"),
                    "-aet",
                    "STORESCU",
                    "-aec",
                    "AINODE",
                    "127.0.0.1",
                    str(node.port),
                    *map(str, files),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=tool_env(),
            )
            for files in corpus
        ]
        outputs = [p.communicate(timeout=timeout) for p in procs]
        failed = [
            f"sender {i}: exit {p.returncode}: {err[-500:]}"
            for i, (p, (_, err)) in enumerate(zip(procs, outputs, strict=False))
            if p.returncode != 0 or "Store Failed" in err or "Error" in err
        ]
        # storescu exits 0 only when every C-STORE was answered with success.
        acknowledged = {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for files, proc in zip(corpus, procs, strict=False)
            if proc.returncode == 0
            for p in files
        }
        tally.acknowledged = len(acknowledged)
        wait_settled(node, len(dx_series), timeout)
        tally.wall_seconds = time.monotonic() - started
    finally:
        echo.stop()
        tally.peak_rss_mb = rss.stop()
        node.stop()
    tally.echoes = len(echo.durations)
    tally.echo_max_seconds = max(echo.durations, default=0.0)
    tally.echo_failures = len(echo.failures)
    account(node, tally, acknowledged, None)
    tally.stuck += failed + echo.failures[:3]
    if "Traceback" in node.log_path.read_text(errors="replace"):
        tally.stuck.append("a Python traceback in the node log")
    return tally


# --------------------------------------------------------------------------- crashes


class StreamSender(threading.Thread):
    """A PACS-like sender: one C-STORE at a time; what was not answered with success is sent again later.

    Records each instance's outcome: ``acknowledged`` holds the SOP Instance UIDs
    answered 0x0000 (the promise the node must keep).
    """

    def __init__(self, port: int, files: list[Path], pause: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.queue = list(files)
        self.pause = pause
        self.acknowledged: set[str] = set()
        self.attempts = 0
        self.refusals: list[str] = []
        self.done = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation

        ae = AE(ae_title="STORESCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
        ae.add_requested_context(DigitalXRayImageStorageForPresentation)
        assoc = None
        try:
            while self.queue and not self._halt.is_set():
                if assoc is None or not assoc.is_established:
                    assoc = ae.associate("127.0.0.1", self.port, ae_title="AINODE")
                    if not assoc.is_established:
                        assoc = None
                        time.sleep(0.1)  # the node is down: a PACS waits and tries again
                        continue
                path = self.queue[0]
                self.attempts += 1
                try:
                    status = assoc.send_c_store(path)
                except (RuntimeError, ValueError, OSError) as exc:
                    status = None
                    self.refusals.append(f"{path.name}: {exc}")
                code = getattr(status, "Status", None)
                if code == 0:
                    self.acknowledged.add(str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID))
                    self.queue.pop(0)
                    time.sleep(self.pause)
                else:
                    if code is not None:
                        self.refusals.append(f"{path.name}: status 0x{code:04X}")
                    if assoc.is_established:
                        assoc.abort()
                    assoc = None
            if assoc is not None and assoc.is_established:
                assoc.release()
        finally:
            self.done.set()

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


def _phase(node: NodeProcess) -> str:
    """What the node is doing right now (from its database): the kill's moment in the table."""
    db = node.database()
    try:
        with db.session() as s:
            running = s.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.RUNNING))
            pending = s.scalar(
                select(func.count())
                .select_from(Delivery)
                .where(Delivery.state.in_([DeliveryState.PENDING, DeliveryState.SENDING]))
            )
            receiving = s.scalar(select(func.count()).select_from(Series).where(Series.state == "receiving"))
    except Exception:  # the schema may not exist yet in the first second of the first start
        return "start-up"
    finally:
        db.dispose()
    if running:
        return "analysis"
    if pending:
        return "delivery"
    if receiving:
        return "receive"
    return "idle"


def crash_scenario(
    workdir: Path,
    orthanc: OrthancServer,
    instances: int,
    kills: int,
    series_size: int = 5,
    pause: float = 0.01,
    seed: int = 5,
    timeout: float = 900,
    shipped_defaults: bool = False,
    phases: Sequence[str] = (),
) -> Tally:
    """Stream ``instances`` chest DX instances while killing the node ``kills`` times at random moments.

    ``shipped_defaults`` runs the node with its shipped restart limit of a job and delivery
    schedule (otherwise both are set above what the kills can reach). ``phases`` names the
    phase ("receive", "analysis", "delivery") each of the first kills waits for (at most
    20 s, then it kills anyway); the others land at random moments.
    """
    rng = random.Random(seed)
    template = small_radiograph_template(workdir / "in" / "templates")
    files: list[Path] = []
    study = generate_uid()
    while len(files) < instances:
        if len(files) % (series_size * 4) == 0:
            study = generate_uid()
        files += write_series(template, workdir / "in", study, min(series_size, instances - len(files)), "dx")
    series_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) for p in files}
    destination = {
        "orthanc": {
            "type": "dicom",
            "ae_title": orthanc.aet,
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "timeout": 5,
        }
    }
    # The test's own kills are not a poisonous series: with the default limit (3), three kills landing while
    # the first job waits on a cold start fail it (seen once in CI). Above the kill count, none can.
    limits: dict[str, Any] = (
        {"job_max_restarts": None, "delivery": None}
        if shipped_defaults
        else {
            "job_max_restarts": kills + 1,
            "delivery": {"max_attempts": 1000, "backoff_initial": 0.2, "backoff_max": 1.0},
        }
    )
    node = NodeProcess(workdir / "node", destinations=destination, log_level="INFO", **limits).start()
    tally = Tally(sent=len(files))
    rss = RssSampler()
    rss.pid = node.proc.pid if node.proc else None
    rss.start()
    sender = StreamSender(node.port, files, pause)
    started = time.monotonic()
    try:
        sender.start()
        for k in range(kills):
            # Random moments: while instances stream in, while series are analysed, while results go out.
            time.sleep(rng.uniform(0.3, 2.5) if k >= len(phases) else 0.05)
            phase = _phase(node)
            wanted_until = time.monotonic() + 20
            while k < len(phases) and phase != phases[k] and time.monotonic() < wanted_until:
                time.sleep(0.005)
                phase = _phase(node)
            node.kill()
            tally.kills += 1
            tally.kill_phases[phase] = tally.kill_phases.get(phase, 0) + 1
            time.sleep(rng.uniform(0.0, 0.3))
            node.start()
            rss.pid = node.proc.pid if node.proc else None
        if not sender.done.wait(timeout):
            raise TimeoutError(f"sender did not finish: {len(sender.queue)} instances left")
        wait_settled(node, len(series_uids), timeout)
        tally.wall_seconds = time.monotonic() - started
    finally:
        sender.stop()
        tally.peak_rss_mb = rss.stop()
        node.stop()
    tally.acknowledged = len(sender.acknowledged)
    account(node, tally, sender.acknowledged, orthanc)
    if "Traceback" in node.log_path.read_text(errors="replace"):
        tally.stuck.append("a Python traceback in the node log")
    if len(series_uids - {s for s in _analysed_series(node)}) > 0:
        tally.stuck.append(f"{len(series_uids - set(_analysed_series(node)))} series never analysed")
    return tally


def _analysed_series(node: NodeProcess) -> list[str]:
    db = node.database()
    try:
        with db.session() as s:
            return list(s.scalars(select(Job.series_uid).where(Job.state == JobState.DONE)))
    finally:
        db.dispose()


def tally_row(name: str, t: Tally) -> list[Any]:
    return [
        name,
        t.sent,
        t.acknowledged,
        t.stored,
        t.analysed,
        t.delivered if t.has_destination else "- (none configured)",
        t.lost,
        t.duplicates,
        f"{t.peak_rss_mb:.0f}",
        f"{t.wall_seconds:.1f}",
    ]
