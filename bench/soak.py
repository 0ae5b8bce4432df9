"""Soak: the load and crash scenarios of issue 5 at full size, as a markdown table.

- load: 10 DCMTK ``storescu`` processes at once, 200 instances each (two
  studies per sender, series of 10: chest DX analysed by ``cxr``, CT stored
  only), ``echoscu`` probing the node in a loop, the node's RSS sampled.
- crash: 1,000 chest DX instances streamed one C-STORE at a time (what was
  not answered with success is sent again, as a PACS does) while the node is
  killed with SIGKILL at 20 random moments and restarted; results delivered to
  a real Orthanc.

``lost`` must be 0: acknowledged instances missing from the spool or the
database, plus results not in Orthanc. ``duplicates`` counts instances
received more than once (re-sent after an answer was lost in a crash).

    .venv/bin/python bench/soak.py [--senders 10 --per-sender 200 --instances 1000 --kills 20]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table  # noqa: E402

from tests.helpers import OrthancServer  # noqa: E402
from tests.integration.soakkit import Tally, crash_scenario, load_scenario, tally_row  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--per-sender", type=int, default=200)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    tallies: list[tuple[str, Tally]] = []
    with tempfile.TemporaryDirectory(prefix="ainode-soak-") as tmp:
        work = Path(tmp)
        load = load_scenario(work / "load", args.senders, args.per_sender)
        tallies.append((f"load: {args.senders} storescu × {args.per_sender}", load))
        orthanc = OrthancServer(work / "orthanc").start()
        try:
            crash = crash_scenario(work / "crash", orthanc, args.instances, args.kills, seed=args.seed)
        finally:
            orthanc.stop()
        tallies.append((f"crash: {args.kills} × SIGKILL", crash))
    headers = [
        "scenario",
        "sent",
        "acknowledged",
        "stored",
        "series analysed",
        "results delivered",
        "lost",
        "duplicates",
        "peak RSS (MB)",
        "wall (s)",
    ]
    print(table(headers, [tally_row(name, t) for name, t in tallies]))
    print()
    print(
        f"load: {load.series} series ({load.routed_series} routed to cxr, {load.jobs} jobs), "
        f"{load.echoes} C-ECHO probes, slowest {load.echo_max_seconds:.2f} s, {load.echo_failures} failed"
    )
    phases = ", ".join(f"{k} {v}" for k, v in sorted(crash.kill_phases.items()))
    print(
        f"crash: {crash.kills} kills (node busy with: {phases}); {crash.series} series, {crash.jobs} jobs, "
        f"{crash.results} results ({crash.results - crash.analysed} superseded by re-analysis after late "
        f"instances)"
    )
    problems = [f"{name}: {s}" for name, t in tallies for s in t.stuck]
    problems += [f"{name}: {t.lost} lost" for name, t in tallies if t.lost]
    for problem in problems:
        print("PROBLEM:", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
