"""C-STORE receive rate: the node (durable: fsync + rename + database commit) against DCMTK's storescp.

Both receive the same 500 CT-sized instances (512×512, 16-bit, ~0.5 MB) from
the same sender (DCMTK storescu, one association) on the same loopback, in
the same run, with TCP_NODELAY=1. storescp writes without fsync, so the ratio
prices durability in. Target: node rate ≥ 0.8 × storescp.

    .venv/bin/python bench/receive.py [--count 500] [--rounds 3]
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
from _common import ct_instances, free_port, start_node, stop, table, tool_env, wait_port  # noqa: E402


def send(folder: Path, port: int, called: str) -> float:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ainode-bench-"))
    try:
        files = ct_instances(work / "in", args.count)
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        times: dict[str, list[float]] = {"storescp": [], "ainode": []}
        for r in range(args.rounds):
            port = free_port()
            out = work / f"storescp{r}"
            out.mkdir()
            scp = subprocess.Popen(
                ["storescp", "-aet", "STORESCP", "-od", str(out), "+B", str(port)],
                env=tool_env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_port(port)
            times["storescp"].append(send(work / "in", port, "STORESCP"))
            stop(scp)
            stored = len(list(out.iterdir()))
            assert stored == args.count, f"storescp stored {stored}"
            port = free_port()
            node = start_node(work / f"node{r}", port)
            times["ainode"].append(send(work / "in", port, "AINODE"))
            stop(node)
            stored = len(list((work / f"node{r}" / "data" / "spool").rglob("*.dcm")))
            assert stored == args.count, f"node stored {stored}"
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
        print(f"C-STORE receive, {args.count} instances of {megabytes / args.count:.2f} MB, median of {args.rounds}")
        print(table(["receiver", "instances", "seconds", "inst/s", "MB/s", "rate vs storescp"], rows))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
