"""C-STORE receive rate of the SCP transport alone: ``dimse.StorageSCP`` against DCMTK's storescp.

The same 500 CT-sized instances (512×512, 16-bit, ~0.5 MB) go from the same
sender (DCMTK storescu, one association, TCP_NODELAY=1) over loopback to:

1. DCMTK ``storescp -od DIR +B`` (writes each file, no fsync);
2. ``StorageSCP`` with a sink that returns Success at once (transport only);
3. ``StorageSCP`` with a sink that writes the bytes durably
   (``node.spool.write_durable``: write, fsync, rename, fsync directory).

Median of ``--rounds`` runs; instances/s and the ratio to storescp.

    .venv/bin/python bench/scp_transport.py [--count 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import ct_instances, free_port, stop, table, tool_env, wait_port  # noqa: E402

from core import status  # noqa: E402
from dimse import AllowedPeer, StorageSCP, StoreRequest
from node.spool import write_durable  # noqa: E402


def send(folder: Path, port: int, called: str) -> float:
    """Send every file of ``folder`` over one association; seconds taken."""
    start = time.perf_counter()
    subprocess.run(
        [
            "storescu",
            "-aet",
            "STORESCU",
            "-aec",
            called,
            "--scan-directories",
            "-xs",
            "127.0.0.1",
            str(port),
            str(folder),
        ],
        check=True,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return time.perf_counter() - start


def run_storescp(folder: Path, out: Path, count: int) -> float:
    port = free_port()
    out.mkdir()
    scp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(out), "+B", str(port)],
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        seconds = send(folder, port, "STORESCP")
    finally:
        stop(scp)
    stored = len(list(out.iterdir()))
    assert stored == count, f"storescp stored {stored} of {count}"
    return seconds


class NullSink:
    """Answers Success at once: the SCP transport alone."""

    def __init__(self) -> None:
        self.received = 0

    def __call__(self, request: StoreRequest) -> int:
        self.received += 1
        return status.SUCCESS


class DurableSink(NullSink):
    """Writes each instance durably into ``spool`` first (``node.spool.write_durable``, through ``tmp``)."""

    def __init__(self, spool: Path, tmp: Path) -> None:
        super().__init__()
        self.spool = spool
        self.tmp = tmp

    def __call__(self, request: StoreRequest) -> int:
        write_durable(self.spool / f"{request.sop_instance_uid}.dcm", request.data, self.tmp)
        return super().__call__(request)


def run_scp(folder: Path, sink: NullSink, count: int) -> float:
    scp = StorageSCP(ae_title="AINODE", port=0, host="127.0.0.1", sink=sink, allowed_peers=[AllowedPeer("STORESCU")])
    scp.start()
    try:
        seconds = send(folder, scp.port, "AINODE")
    finally:
        scp.stop()
    assert sink.received == count, f"StorageSCP received {sink.received} of {count}"
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ainode-bench-"))
    try:
        files = ct_instances(work / "in", args.count)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        times: dict[str, list[float]] = {"storescp": [], "StorageSCP, null sink": [], "StorageSCP, durable sink": []}
        for r in range(args.rounds):
            times["storescp"].append(run_storescp(work / "in", work / f"storescp{r}", args.count))
            times["StorageSCP, null sink"].append(run_scp(work / "in", NullSink(), args.count))
            tmp = work / f"tmp{r}"
            tmp.mkdir()
            times["StorageSCP, durable sink"].append(
                run_scp(work / "in", DurableSink(work / f"spool{r}", tmp), args.count)
            )
        rows = []
        ref = statistics.median(times["storescp"])
        for name, values in times.items():
            med = statistics.median(values)
            rows.append(
                [
                    name,
                    args.count,
                    f"{med:.2f}",
                    f"{args.count / med:.0f}",
                    f"{megabytes / med:.0f}",
                    f"{ref / med:.2f}",
                ]
            )
        print(
            f"C-STORE receive, {args.count} instances of {megabytes / args.count:.2f} MB "
            f"from storescu (one association), median of {args.rounds}"
        )
        print(table(["receiver", "instances", "seconds", "inst/s", "MB/s", "rate vs storescp"], rows))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
