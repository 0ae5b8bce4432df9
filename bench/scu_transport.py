"""C-STORE send rate of the SCU alone: ``dimse.scu.store_files`` against DCMTK's storescu.

The same 500 CT-sized instances (512×512, 16-bit, ~0.5 MB) are sent over one
association on loopback by DCMTK ``storescu`` (the reference sender,
TCP_NODELAY=1) and by ``dimse.scu.store_files`` to:

1. DCMTK ``storescp --ignore`` (receives every data set, writes nothing);
2. ``dimse.StorageSCP`` with a sink that returns Success at once.

Median and worst of ``--rounds`` runs (a DIMSE timeout hit by a sender shows
in the worst), instances/s and the ratio to storescu. Every instance must be
answered with Success.

    .venv/bin/python bench/scu_transport.py [--count 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import ct_instances, free_port, stop, table, tool_env, wait_port  # noqa: E402

from core import status  # noqa: E402
from dimse import AllowedPeer, StorageSCP, StoreRequest, store_files

#: A sender is given the files, the port and the called AE title; it returns seconds taken.
Sender = Callable[[list[Path], int, str], float]


def storescu(files: list[Path], port: int, called: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", called, "-xs", "127.0.0.1", str(port), *map(str, files)],
        check=True,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return time.perf_counter() - start


def our_scu(files: list[Path], port: int, called: str) -> float:
    start = time.perf_counter()
    outcomes = store_files(files, host="127.0.0.1", port=port, called_ae=called, calling_ae="STORESCU")
    seconds = time.perf_counter() - start
    failed = [o for o in outcomes if o.status != status.SUCCESS]
    assert not failed, f"{len(failed)} instances not stored, e.g. {failed[0]}"
    return seconds


def to_storescp(send: Sender, files: list[Path]) -> float:
    port = free_port()
    scp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "--ignore", str(port)],
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        return send(files, port, "STORESCP")
    finally:
        stop(scp)


def to_our_scp(send: Sender, files: list[Path]) -> float:
    received = [0]

    def null_sink(request: StoreRequest) -> int:
        received[0] += 1
        return status.SUCCESS

    scp = StorageSCP(
        ae_title="AINODE", port=0, host="127.0.0.1", sink=null_sink, allowed_peers=[AllowedPeer("STORESCU")]
    )
    scp.start()
    try:
        seconds = send(files, scp.port, "AINODE")
    finally:
        scp.stop()
    assert received[0] == len(files), f"StorageSCP received {received[0]} of {len(files)}"
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--label", default="dimse.scu", help="name of our SCU's rows in the table")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ainode-bench-"))
    try:
        files = ct_instances(work / "in", args.count)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        cases: dict[tuple[str, str], tuple[Sender, Callable[[Sender, list[Path]], float]]] = {
            ("storescu", "storescp --ignore"): (storescu, to_storescp),
            (args.label, "storescp --ignore"): (our_scu, to_storescp),
            ("storescu", "StorageSCP, null sink"): (storescu, to_our_scp),
            (args.label, "StorageSCP, null sink"): (our_scu, to_our_scp),
        }
        times: dict[tuple[str, str], list[float]] = {key: [] for key in cases}
        for _ in range(args.rounds):
            for key, (sender, receiver) in cases.items():
                times[key].append(receiver(sender, files))
        rows = []
        for (sender_name, receiver_name), values in times.items():
            med = statistics.median(values)
            ref = statistics.median(times[("storescu", receiver_name)])
            rows.append(
                [
                    sender_name,
                    receiver_name,
                    args.count,
                    f"{med:.2f}",
                    f"{max(values):.2f}",
                    f"{args.count / med:.0f}",
                    f"{megabytes / med:.0f}",
                    f"{ref / med:.2f}",
                ]
            )
        print(
            f"C-STORE send, {args.count} instances of {megabytes / args.count:.2f} MB over one "
            f"association on loopback, median of {args.rounds}"
        )
        print(
            table(["sender", "receiver", "instances", "seconds", "worst", "inst/s", "MB/s", "rate vs storescu"], rows)
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
