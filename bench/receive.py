"""C-STORE receive rate: DCMTK's storescp, a durable Orthanc and the node, over 1 and 4 associations, in one run.

All three receive the same CT-sized instances (512×512, 16-bit, ~0.5 MB, one
series) from the same sender (DCMTK storescu; with 4 associations, 4 storescu
processes at once, each sending a quarter of the files) on the same loopback,
with TCP_NODELAY=1, in the same run, interleaved round by round.

* storescp writes each file and answers: no fsync, so a power cut may lose what it
  acknowledged. It is the reference of the ratios (same association count).
* Orthanc 1.10.1 with its default storage: ``SyncStorageArea`` true (each DICOM file
  fsynced as it is written, the default since 1.7.4) and its SQLite index updated
  before the C-STORE response.
* The node, durable as it ships: each file fsynced, renamed into the spool and its
  folder fsynced before the response; database rows committed after the response,
  in batches (the spool file is the durable record; see ``node.receiver``).

* The disk's durable floor: no network and no DICOM, the same files copied with what
  durability costs (write, fsync, rename into a folder, fsync the folder), one thread
  per association. No durable receiver can beat it on this disk; the ratio of the node
  to it ("vs disk") says how much of the gap to storescp is the disk's and how much the
  node's own. The fsync latency of a shared machine moves between runs: compare rows
  of one run only.

Each server is started for its measurement and waited for until idle (the node loads
its models on worker threads after it listens), then stopped; its count of stored
instances is checked. The node's quiet period is an hour, so no analysis runs meanwhile.
Targets (issue 16): node ≥ 0.5 × storescp on one association and ≥ 0.8 × with 4. On one
association the last line gives the most a durable receiver can reach on this disk in this run.

    .venv/bin/python bench/receive.py [--count 400] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    ct_instances,
    free_port,
    start_node,
    stop,
    table,
    tool_env,
    wait_idle,
    wait_port,
)

sys.path.insert(0, str(REPO))
from tests.helpers import OrthancServer  # noqa: E402

ASSOCIATIONS = (1, 4)


def send(folders: list[Path], port: int, called: str) -> float:
    """Send each folder with its own storescu (one association each), all at once; seconds until all are done."""
    start = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["storescu", "-aet", "STORESCU", "-aec", called, "--scan-directories", "127.0.0.1", str(port), str(f)],
            env=tool_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for f in folders
    ]
    for sender in senders:
        _, err = sender.communicate()
        if sender.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - start


def split(files: list[Path], parts: int, into: Path) -> list[Path]:
    """Hard links of ``files`` in ``parts`` folders (round robin): one folder per association."""
    folders = [into / f"part{i}" for i in range(parts)]
    for folder in folders:
        folder.mkdir(parents=True)
    for i, path in enumerate(files):
        (folders[i % parts] / path.name).hardlink_to(path)
    return folders


def storescp(work: Path, folders: list[Path], count: int) -> float:
    port = free_port()
    out = work / "out"
    out.mkdir(parents=True)
    scp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(out), "+B", str(port)],
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        seconds = send(folders, port, "STORESCP")
    finally:
        stop(scp)
    stored = len(list(out.iterdir()))
    assert stored == count, f"storescp stored {stored} of {count}"
    return seconds


def orthanc(work: Path, folders: list[Path], count: int) -> float:
    server = OrthancServer(work).start()  # idle once its REST API answers
    try:
        seconds = send(folders, server.dicom_port, server.aet)
        stored = server.instance_count()
    finally:
        server.stop()
    assert stored == count, f"Orthanc stored {stored} of {count}"
    return seconds


def ainode(work: Path, folders: list[Path], count: int) -> float:
    port = free_port()
    node = start_node(work, port, {"quiet_period": {"default": 3600}, "max_associations": 8})
    try:
        wait_idle(node.pid)
        seconds = send(folders, port, "AINODE")
    finally:
        stop(node)
    stored = len(list((work / "data" / "spool").rglob("*.dcm")))
    assert stored == count, f"node stored {stored} of {count}"
    return seconds


def disk_floor(work: Path, folders: list[Path], count: int) -> float:
    """Write, fsync, rename, fsync the folder: each folder's files by one thread, all threads at once."""
    out = work / "out"
    out.mkdir(parents=True)

    def copy(folder: Path, index: int) -> None:
        target = out / str(index)
        target.mkdir()
        directory = os.open(target, os.O_RDONLY)
        try:
            for path in sorted(folder.iterdir()):
                data = path.read_bytes()
                part = target / f".{path.name}.part"
                with open(part, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(part, target / path.name)
                os.fsync(directory)
        finally:
            os.close(directory)

    threads = [threading.Thread(target=copy, args=(folder, i)) for i, folder in enumerate(folders)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    stored = len(list(out.rglob("*.dcm")))
    assert stored == count, f"disk floor wrote {stored} of {count}"
    return seconds


RECEIVERS: dict[str, Callable[[Path, list[Path], int], float]] = {
    "disk floor (durable copy, no network)": disk_floor,
    "storescp (no fsync)": storescp,
    "Orthanc (durable)": orthanc,
    "ainode (durable)": ainode,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400, help="instances per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per receiver and association count")
    parser.add_argument("--quick", action="store_true", help="200 instances, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds = 200, 1
    work = Path(tempfile.mkdtemp(prefix="ainode-bench-"))
    try:
        files = ct_instances(work / "in", args.count)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        folders = {n: split(files, n, work / f"split{n}") for n in ASSOCIATIONS}
        times: dict[tuple[str, int], list[float]] = {}
        for r in range(args.rounds):
            for n in ASSOCIATIONS:
                for name, run in RECEIVERS.items():
                    where = work / f"{name.split()[0]}-{n}-{r}"
                    times.setdefault((name, n), []).append(run(where, folders[n], args.count))
                    shutil.rmtree(where, ignore_errors=True)
        rows = []
        for n in ASSOCIATIONS:
            reference = statistics.median(times[("storescp (no fsync)", n)])
            floor = statistics.median(times[("disk floor (durable copy, no network)", n)])
            for name in RECEIVERS:
                med = statistics.median(times[(name, n)])
                durable = name.startswith(("ainode", "Orthanc"))
                rows.append(
                    [
                        name,
                        n,
                        f"{med:.2f}",
                        f"{args.count / med:.0f}",
                        f"{megabytes / med:.0f}",
                        f"{reference / med:.2f}",
                        f"{floor / med:.2f}" if durable else "",
                    ]
                )
        print(
            f"C-STORE receive, {args.count} instances of {megabytes / args.count:.2f} MB from storescu, "
            f"median of {args.rounds} round(s)"
        )
        print(table(["receiver", "associations", "seconds", "images/s", "MB/s", "vs storescp", "vs disk"], rows))
        # One association is strictly sequential (the sender waits for each C-STORE-RSP): a durable
        # receiver spends at least storescp's time per instance plus the disk floor's, one after the other.
        per_store = statistics.median(times[("storescp (no fsync)", 1)]) / args.count
        per_sync = statistics.median(times[("disk floor (durable copy, no network)", 1)]) / args.count
        bound = 1 / (per_store + per_sync)
        node = args.count / statistics.median(times[("ainode (durable)", 1)])
        print(
            f"one association, durable: at most 1 / ({per_store * 1e3:.2f} ms storescp + {per_sync * 1e3:.2f} ms "
            f"disk floor) = {bound:.0f}/s ({bound * per_store:.2f} × storescp); the node {node:.0f}/s, "
            f"{node / bound:.2f} of that bound"
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
