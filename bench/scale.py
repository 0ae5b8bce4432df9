"""Scale-out throughput: studies per minute with 1, 2 and 4 ``ainode worker`` processes, the local pool for reference.

One run, real services on loopback (the scale tests' kit, ``tests/integration/scale/cluster.py``): PostgreSQL,
RabbitMQ, and Orthanc as the PACS the results are delivered to. Each phase is a fresh node (a database and a
broker virtual host of its own) receiving the same mix, new UIDs each time, sent by DCMTK's ``storescu``:

- 40 chest radiographs (copies of ``RG1_UNCR.dcm``, 7 MB CR each: the ``cxr`` pipeline),
- 1 routine CTPA (``ct_pe``) and 2 abdomen CTs (``ct_lumbar``), synthetic phantoms (``training.phantoms.ct``),
- then, once the routine studies' jobs are queued, 1 **STAT** CTPA (Requested Procedure Priority STAT: urgent),

analysed with the shipped demo weights. Phases: ``executor: local`` (``ainode serve`` alone, its pool of
``workers: 2`` threads, SQLite: the default installation) and ``executor: celery`` (``ainode serve`` receiving,
publishing and delivering; N ``ainode worker --queues cpu --concurrency 1`` processes; PostgreSQL; RabbitMQ).

Measured per phase, from the node's own database (its clock):

- **studies/min**: all studies from the first C-STORE to the last result delivered to Orthanc (the delivery
  row's ``delivered_at``: Orthanc answered the C-STORE; Orthanc is the sink because the scale kit runs it anyway,
  and its SR count per study is checked at the end of the phase);
- **routine C-STOREs s**: how long ``storescu`` took to send the routine studies (one association; the node
  answers each C-STORE once the instance is durable): part of the wall time, and a floor no worker count moves;
- **urgent s**: the STAT CTPA's last C-STORE answered -> its SR delivered, with the routine backlog in front;
  split into the wait until its job started (quiet period, then the jobs ahead of it), the analysis and the
  delivery of its SR; **routine jobs before urgent**: of the jobs that had not started when it arrived, how many
  started before it;
- **broker bytes per job**: the AMQP octets the broker received and sent on every connection of the phase's
  virtual host (``rabbitmqctl list_connections recv_oct send_oct``: the publisher's messages and confirms, the
  workers' deliveries and acks, connection set-up, queue declarations and heartbeats), divided by the jobs.
  No pixel or result ever travels on the broker: the figure is bytes of job ids and protocol. **message body B**:
  one job message's body (Celery's task message: the job id and Celery's own fields), from the bytes and count of
  the messages waiting in the queues once the routine jobs are published (``rabbitmqctl list_queues``);
- **CPU s**: processor time of each role's processes over the phase (``/proc``, sampled every 0.1 s), and per
  job for each pipeline (a worker's pool process's CPU between the job's start and finish; 1-worker phase).

On this 2-core machine several workers share the same two cores: the curve flattens once the analysis uses both.
The last lines turn the per-study CPU time into what N machines of this size would do. No timed assertion.

    .venv/bin/python bench/scale.py [--quick] [--workers 1,2,4] [--radiographs 40] [--ct-slices 120] [--ct-size 256]

``--quick``: 10 radiographs, 1 abdomen CT, the STAT CTPA; the local pool and 1 worker (a smoke run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pydicom

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, wait_idle  # noqa: E402

from node.db import Database, Delivery, DeliveryState, Job, JobState, Result  # noqa: E402
from tests.helpers import radiograph_copies, rg1_uncr_path, storescu  # noqa: E402
from tests.integration.nodeproc import NodeProcess  # noqa: E402
from tests.integration.scale.cluster import Cluster, Services, WorkerProcess  # noqa: E402
from training.phantoms.ct import abdomen_phantom, ctpa_phantom  # noqa: E402

QUIET = {"default": 1.0, "CR": 0.5, "DX": 0.5}
"""Quiet periods of every phase (as the scale tests): a CT series is complete 1 s after its last instance."""
OPEN = (DeliveryState.PENDING, DeliveryState.SENDING, DeliveryState.COMMITTING)
FINISHED = (JobState.DONE, JobState.FAILED)


@dataclass
class Mix:
    radiographs: int
    ctpa: int
    abdomen: int
    slices: int
    size: int

    @property
    def studies(self) -> int:
        return self.radiographs + self.ctpa + self.abdomen + 1  # + the STAT CTPA

    def describe(self) -> str:
        return (
            f"{self.radiographs} radiographs (7 MB CR), {self.ctpa} CTPA + {self.abdomen} abdomen CT "
            f"({self.slices} slices of {self.size}²), then 1 STAT CTPA: {self.studies} studies"
        )


@dataclass
class Studies:
    routine: list[Path]
    urgent: list[Path]
    routine_uids: set[str]
    urgent_uid: str


def make_studies(folder: Path, mix: Mix, seed: int) -> Studies:
    """The mix with new UIDs (each phase its own, so Orthanc holds every phase's results apart)."""
    files = radiograph_copies(rg1_uncr_path(), folder / "cr", mix.radiographs)
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    spacing = max(1.0, 280.0 / mix.slices)
    for i in range(mix.ctpa):
        phantom = ctpa_phantom(seed + i, slices=mix.slices, size=mix.size, embolus="right")
        files += phantom.write_series(folder / f"ctpa{i}")
        uids.add(str(phantom.truth["study_uid"]))
    for i in range(mix.abdomen):
        phantom = abdomen_phantom(seed + 10 + i, slices=mix.slices, size=mix.size, spacing_z=spacing)
        files += phantom.write_series(folder / f"abdomen{i}")
        uids.add(str(phantom.truth["study_uid"]))
    stat = ctpa_phantom(seed + 20, slices=mix.slices, size=mix.size, embolus="central")
    urgent = stat.write_series(folder / "stat")
    for path in urgent:  # Requested Procedure Priority (PS3.3 C.4.11): what makes the job urgent
        ds = pydicom.dcmread(path)
        ds.RequestedProcedurePriority = "STAT"
        ds.save_as(path, enforce_file_format=True)
    return Studies(files, urgent, uids, str(stat.truth["study_uid"]))


class CpuSampler:
    """CPU seconds (user + system) of process trees, read from ``/proc`` every ``every`` seconds.

    ``roots`` maps a role name to the pids whose whole trees belong to it. Each sample also keeps every
    process's own total, so a job's CPU is its pool process's total at its finish minus at its start.
    """

    def __init__(self, roots: dict[str, list[int]], every: float = 0.1) -> None:
        self.roots, self.every = roots, every
        self.samples: dict[int, list[tuple[float, float]]] = {}
        self.role_cpu: dict[str, float] = {}
        self._last: dict[int, float] = {}
        self._role_of: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def _sample(self) -> None:
        now = time.time()
        for role, pids in self.roots.items():
            for root in pids:
                try:
                    tree = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
                for proc in tree:
                    try:
                        times = proc.cpu_times()
                    except psutil.NoSuchProcess:
                        continue
                    total = times.user + times.system
                    if proc.pid not in self._last:  # counted from its first sample in the phase
                        self._last[proc.pid] = total
                        self._role_of[proc.pid] = role
                    self.role_cpu[role] = self.role_cpu.get(role, 0.0) + total - self._last[proc.pid]
                    self._last[proc.pid] = total
                    self.samples.setdefault(proc.pid, []).append((now, total))

    def between(self, pid: int, start: float, end: float) -> float | None:
        """CPU seconds of process ``pid`` from ``start`` to ``end`` (epoch), interpolated between samples."""
        points = self.samples.get(pid)
        if not points or start < points[0][0] or end > points[-1][0]:
            return None
        return _at(points, end) - _at(points, start)


def _at(points: list[tuple[float, float]], when: float) -> float:
    for (t0, c0), (t1, c1) in zip(points, points[1:], strict=False):
        if t0 <= when <= t1:
            return c0 + (c1 - c0) * (when - t0) / (t1 - t0) if t1 > t0 else c1
    return points[-1][1]


def epoch(moment: datetime) -> float:
    """A database timestamp as epoch seconds (SQLite gives naive UTC, PostgreSQL aware)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@dataclass
class Phase:
    name: str
    workers: int
    studies: int
    jobs: int = 0
    failed: int = 0
    seconds: float = 0.0
    urgent_s: float = 0.0
    send_s: float = 0.0
    urgent_rank: str = ""
    urgent_parts: str = ""
    broker_bytes: int | None = None
    message_bytes: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    job_cpu: dict[str, list[float]] = field(default_factory=dict)
    job_wall: dict[str, list[float]] = field(default_factory=dict)
    load: float = 0.0

    @property
    def per_minute(self) -> float:
        return self.studies * 60.0 / self.seconds


def send(port: int, files: list[Path]) -> None:
    sent = storescu(files, "127.0.0.1", port, "AINODE", timeout=900)
    if sent.returncode != 0 or "E: " in sent.stderr:
        raise RuntimeError(f"storescu failed ({sent.returncode}):\n{sent.stderr[-3000:]}")


def wait_for(what: str, condition: Any, timeout: float, diagnostics: Any) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f} s\n{diagnostics()}")
        time.sleep(0.25)


def jobs_of(db: Database) -> list[Job]:
    from sqlalchemy import select

    with db.session() as s:
        return list(s.scalars(select(Job).order_by(Job.id)).all())


def settled(db: Database, studies: set[str]) -> bool:
    """Every study has its jobs, none is unfinished and no delivery is open."""
    from sqlalchemy import func, select

    jobs = jobs_of(db)
    if {j.study_uid for j in jobs} < studies or any(j.state not in FINISHED for j in jobs):
        return False
    with db.session() as s:
        return not s.scalar(select(func.count(Delivery.id)).where(Delivery.state.in_(OPEN)))


def run_phase(
    phase: Phase,
    studies: Studies,
    port: int,
    db: Database,
    roots: dict[str, list[int]],
    diagnostics: Any,
    workers: list[WorkerProcess] | None = None,
    backlog: Any = None,
) -> Phase:
    """Send the mix to the receiver on ``port``, wait for every delivery, and read the figures from ``db``."""
    from sqlalchemy import func, select

    for role in ("serve", "workers"):  # models loaded, pool processes built: nothing else shares the cores
        for root in roots.get(role, []):
            for proc in [psutil.Process(root), *psutil.Process(root).children(recursive=True)]:
                wait_idle(proc.pid, busy=0.1, timeout=300)
    everything = studies.routine_uids | {studies.urgent_uid}
    sampler = CpuSampler(roots).start()
    started = time.time()
    send(port, studies.routine)
    phase.send_s = time.time() - started
    wait_for(
        "the routine studies' jobs",
        lambda: {j.study_uid for j in jobs_of(db)} >= studies.routine_uids,
        300,
        diagnostics,
    )
    if backlog is not None:
        backlog(phase)
    send(port, studies.urgent)
    urgent_sent = time.time()
    wait_for("every study analysed and delivered", lambda: settled(db, everything), 3600, diagnostics)
    sampler.stop()
    phase.load = os.getloadavg()[0]
    phase.cpu = dict(sampler.role_cpu)

    jobs = jobs_of(db)
    phase.jobs = len(jobs)
    phase.failed = sum(j.state == JobState.FAILED for j in jobs)
    with db.session() as s:
        last = s.scalar(select(func.max(Delivery.delivered_at)))
        (urgent_job,) = [j for j in jobs if j.study_uid == studies.urgent_uid]
        sr_delivered = s.scalar(
            select(func.max(Delivery.delivered_at))
            .join(Result, Result.id == Delivery.result_id)
            .where(Result.job_id == urgent_job.id, Result.kind == "SR")
        )
    if last is None or sr_delivered is None:
        raise RuntimeError(f"no delivery recorded (urgent SR: {sr_delivered})\n{diagnostics()}")
    phase.seconds = epoch(last) - started
    phase.urgent_s = epoch(sr_delivered) - urgent_sent
    # How many routine jobs that had not started when the STAT study was sent started before it.
    assert urgent_job.started_at is not None and urgent_job.finished_at is not None
    urgent_start = epoch(urgent_job.started_at)
    urgent_end = epoch(urgent_job.finished_at)
    phase.urgent_parts = (
        f"{urgent_start - urgent_sent:.1f} + {urgent_end - urgent_start:.1f} + {epoch(sr_delivered) - urgent_end:.1f}"
    )
    overtaken = [
        j
        for j in jobs
        if j.id != urgent_job.id and j.started_at is not None and urgent_sent < epoch(j.started_at) < urgent_start
    ]
    waiting = [j for j in jobs if j.id != urgent_job.id and (j.started_at is None or epoch(j.started_at) > urgent_sent)]
    phase.urgent_rank = f"{len(overtaken)} of {len(waiting)}"
    for job in jobs:
        if job.started_at is None or job.finished_at is None or job.state != JobState.DONE:
            continue
        begin, end = epoch(job.started_at), epoch(job.finished_at)
        phase.job_wall.setdefault(job.pipeline, []).append(end - begin)
        if workers is not None and job.worker:
            used = sampler.between(int(job.worker.rsplit(":", 1)[1]), begin, end)
            if used is not None:
                phase.job_cpu.setdefault(job.pipeline, []).append(used)
    return phase


def broker_octets(services: Services, vhost: str) -> int:
    """AMQP bytes received plus sent by the broker on the connections of ``vhost`` (open ones)."""
    out = services.rabbitmq.ctl("list_connections", "vhost", "recv_oct", "send_oct", "--no-table-headers", "-q")
    total = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == vhost:
            total += int(parts[1]) + int(parts[2])
    return total


def queued_message_bytes(services: Services, vhost: str) -> float | None:
    """Body bytes per message waiting in ``vhost``'s queues (``rabbitmqctl list_queues``), None if none waits."""
    out = services.rabbitmq.ctl("list_queues", "-p", vhost, "messages", "message_bytes", "--no-table-headers", "-q")
    messages = size = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            messages, size = messages + int(parts[0]), size + int(parts[1])
    return size / messages if messages else None


def infra_roots(services: Services) -> dict[str, list[int]]:
    """PostgreSQL's postmaster and RabbitMQ's process group leader (their trees hold every backend)."""
    postmaster = int((services.postgres.datadir / "postmaster.pid").read_text().splitlines()[0])
    roots = {"PostgreSQL": [postmaster]}
    if services.rabbitmq.proc is not None:
        roots["RabbitMQ"] = [services.rabbitmq.proc.pid]
    return roots


def check_orthanc(services: Services, studies: Studies) -> None:
    """Orthanc holds one SR for each study of the phase."""
    wanted = studies.routine_uids | {studies.urgent_uid}
    held = [i.study_instance_uid for i in services.orthanc.instances() if i.modality == "SR"]
    counts = {uid: held.count(uid) for uid in wanted}
    wrong = {uid: n for uid, n in counts.items() if n != 1}
    if wrong:
        raise RuntimeError(f"Orthanc's SRs per study are not one each: {wrong}")


def local_phase(services: Services, root: Path, studies: Studies) -> Phase:
    orthanc = services.orthanc
    destinations = {
        "orthanc": {"type": "dicom", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
    }
    node = NodeProcess(root, destinations, full_models=True, quiet_period=QUIET)
    node.start(timeout=180)
    db = node.database()
    try:
        assert node.proc is not None
        phase = Phase("local pool (2 threads, SQLite)", 0, len(studies.routine_uids) + 1)
        return run_phase(phase, studies, node.port, db, {"serve": [node.proc.pid]}, node.log)
    finally:
        db.dispose()
        node.stop()


def celery_phase(services: Services, root: Path, studies: Studies, count: int) -> Phase:
    kit = Cluster(
        services,
        root,
        full_models=True,
        celery={"lease_seconds": 60.0, "heartbeat_seconds": 15.0},  # the shipped values, not the tests' short ones
    )
    try:
        receiver = kit.add_receiver()
        workers = kit.add_workers(count)
        assert receiver.proc is not None
        roots = {"serve": [receiver.proc.pid], "workers": [w.proc.pid for w in workers if w.proc is not None]}
        roots.update(infra_roots(services))
        phase = Phase(f"celery, {count} worker{'s' if count > 1 else ''}", count, len(studies.routine_uids) + 1)
        vhost = kit.broker_url.rsplit("/", 1)[1]

        def backlog(phase: Phase) -> None:
            phase.message_bytes = queued_message_bytes(services, vhost)

        run_phase(phase, studies, receiver.port, kit.db, roots, kit.diagnostics, workers, backlog)
        phase.broker_bytes = broker_octets(services, vhost)
        return phase
    finally:
        kit.stop()


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "–"


def report(mix: Mix, phases: list[Phase]) -> None:
    reference = phases[0]
    cores = os.cpu_count() or 1
    print()
    print(f"Mix: {mix.describe()}; demo weights; {cores} CPU cores shared by every process (node, PostgreSQL,")
    print("RabbitMQ, Orthanc, DCMTK); the load average is the 1-minute figure at the end of each phase.")
    rows: list[list[object]] = []
    for p in phases:
        node_cpu = p.cpu.get("serve", 0.0) + p.cpu.get("workers", 0.0)
        infra = p.cpu.get("PostgreSQL", 0.0) + p.cpu.get("RabbitMQ", 0.0)
        rows.append(
            [
                p.name,
                f"{p.seconds:.0f}",
                f"{p.send_s:.1f}",
                f"{p.per_minute:.1f}",
                f"{p.per_minute / reference.per_minute:.2f}",
                f"{p.urgent_s:.1f}",
                p.urgent_parts,
                p.urgent_rank,
                f"{p.broker_bytes / p.jobs:.0f}" if p.broker_bytes is not None else "–",
                f"{p.message_bytes:.0f}" if p.message_bytes is not None else "–",
                f"{p.cpu.get('serve', 0.0) / p.studies:.2f}",
                f"{p.cpu.get('workers', 0.0) / p.studies:.2f}" if p.workers else "–",
                f"{infra / p.studies:.2f}" if p.workers else "–",
                f"{node_cpu / p.seconds:.2f}",
                f"{p.jobs}/{p.failed}",
                f"{p.load:.1f}",
            ]
        )
    print(
        table(
            [
                "executor",
                "wall s",
                "routine C-STOREs s",
                "studies/min",
                "× first row",
                "urgent s",
                "= wait + analysis + delivery s",
                "routine jobs before urgent",
                "broker B/job",
                "message body B",
                "serve CPU s/study",
                "workers CPU s/study",
                "PG+MQ CPU s/study",
                "node cores busy",
                "jobs/failed",
                "load",
            ],
            rows,
        )
    )
    one = next((p for p in phases if p.workers == 1), None)
    if one is None:
        return
    print()
    print("Per job, 1-worker phase (CPU s: the worker's pool process between the job's start and finish):")
    pipelines = sorted(one.job_wall)
    print(
        table(
            ["pipeline", "jobs", "median wall s", "median CPU s", "total CPU s"],
            [
                [
                    name,
                    str(len(one.job_wall[name])),
                    _median(one.job_wall[name]),
                    _median(one.job_cpu.get(name, [])),
                    f"{sum(one.job_cpu.get(name, [])):.0f}",
                ]
                for name in pipelines
            ],
        )
    )
    analysis = sum(sum(v) for v in one.job_cpu.values()) / one.studies
    receive = (one.cpu.get("serve", 0.0) + one.cpu.get("PostgreSQL", 0.0) + one.cpu.get("RabbitMQ", 0.0)) / one.studies
    per_machine = cores * 60.0 / analysis
    receiver_cap = cores * 60.0 / receive if receive else float("inf")
    print()
    print(
        f"Extrapolation: this mix needs {analysis:.1f} CPU s of analysis per study, so one worker machine of "
        f"{cores} cores does at most {per_machine:.1f} studies/min; N such machines ~ {per_machine:.1f} × N "
        f"studies/min. The receiver with PostgreSQL and RabbitMQ spends {receive:.2f} CPU s per study: one "
        f"machine of this size for them caps the cluster near {receiver_cap:.0f} studies/min "
        f"(~{receiver_cap / per_machine:.0f} worker machines), before the network and the database's disk."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 radiographs, 1 abdomen CT, 1 worker")
    parser.add_argument("--workers", help="worker counts, comma-separated (default 1,2,4; --quick: 1)")
    parser.add_argument("--radiographs", type=int)
    parser.add_argument("--ct-slices", type=int, default=120)
    parser.add_argument("--ct-size", type=int, default=256, help="rows and columns of the CT phantoms")
    parser.add_argument("--no-local", action="store_true", help="skip the local pool's phase")
    args = parser.parse_args()
    if args.quick:
        mix = Mix(args.radiographs or 10, 0, 1, args.ct_slices, args.ct_size)
    else:
        mix = Mix(args.radiographs or 40, 1, 2, args.ct_slices, args.ct_size)
    counts = [int(n) for n in (args.workers or ("1" if args.quick else "1,2,4")).split(",")]
    work = Path(tempfile.mkdtemp(prefix="ainode-bench-scale-"))
    services = Services(work / "services")
    phases: list[Phase] = []
    try:
        services.start()
        names = ([] if args.no_local else ["local"]) + [f"celery{n}" for n in counts]
        for number, name in enumerate(names):
            studies = make_studies(work / name / "in", mix, seed=100 * (number + 1))
            print(f"{name}: {mix.describe()} ...", flush=True)
            if name == "local":
                phase = local_phase(services, work / name / "node", studies)
            else:
                phase = celery_phase(services, work / name / "cluster", studies, int(name[len("celery") :]))
            check_orthanc(services, studies)
            print(
                f"{phase.name}: {phase.studies} studies in {phase.seconds:.0f} s ({phase.per_minute:.1f}/min); "
                f"urgent SR {phase.urgent_s:.1f} s after its last C-STORE",
                flush=True,
            )
            phases.append(phase)
            shutil.rmtree(work / name / "in", ignore_errors=True)
        report(mix, phases)
        return 0
    finally:
        services.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
