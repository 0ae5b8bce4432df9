"""Reading ``strace -f -yy`` output and checking the order of a node's durable hand-offs.

In the spirit of ALICE (Pillai et al., "All File Systems Are Not Created Equal", OSDI '14):
what survives a power cut is decided by the order of system calls, which a SIGKILL test
cannot see (the page cache survives a killed process). The checks here read the trace
of a real node:

* receive: before each C-STORE response (a P-DATA-TF ``sendto`` on the association's
  socket) every instance stored since the previous one has had its data fsynced before
  its ``rename`` into the spool, its folder fsynced after the ``rename``, and the parent
  of every folder created for it fsynced after the ``mkdir``;
* results: the same for every result file, before the worker's next database write
  (the SQLite write-ahead log) — the transaction that records the results and their
  deliveries;
* deliveries: no database write of the dispatcher between sending a C-STORE request to
  the destination and receiving its response (a delivery is marked done only on an answer).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

#: System calls the checks need; everything else is left out of the trace.
TRACED = "openat,mkdir,mkdirat,rename,renameat,renameat2,fsync,fdatasync,write,pwrite64,sendto,recvfrom"
STRACE_ARGS = ["-f", "-qq", "-yy", "-s", "6", "-x", "-e", f"trace={TRACED}"]

_LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)")
_UNFINISHED = re.compile(r"^(?P<pid>\d+)\s+(?P<name>\w+)\((?P<args>.*) <unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(?P<pid>\d+)\s+<\.\.\. (?P<name>\w+) resumed>(?P<args>.*)\)\s+=\s+(?P<ret>-?\d+)")
_FD = re.compile(r"^-?\d+<(TCP:\[[^\]]*\]|[^>]*)>")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Call:
    """One completed system call: its thread, name, the path or socket of its first argument, its strings."""

    index: int
    pid: int
    name: str
    fd: str | None
    strings: tuple[str, ...]
    ok: bool


def parse(text: str) -> list[Call]:
    """The completed calls of an ``strace -f -yy -x`` log, in order of completion."""
    pending: dict[int, tuple[str, str]] = {}
    calls: list[Call] = []
    for line in text.splitlines():
        if m := _UNFINISHED.match(line):
            pending[int(m["pid"])] = (m["name"], m["args"])
            continue
        if m := _RESUMED.match(line):
            name, head = pending.pop(int(m["pid"]), (m["name"], ""))
            args, pid, ret = head + m["args"], int(m["pid"]), int(m["ret"])
        elif m := _LINE.match(line):
            name, args, pid, ret = m["name"], m["args"], int(m["pid"]), int(m["ret"])
        else:
            continue
        fd = _FD.match(args)
        strings = tuple(s.encode().decode("unicode_escape") for s in _STRING.findall(args))
        calls.append(Call(len(calls), pid, name, fd.group(1) if fd else None, strings, ret >= 0))
    return calls


def _threads(calls: list[Call]) -> dict[int, list[Call]]:
    by_pid: dict[int, list[Call]] = defaultdict(list)
    for call in calls:
        by_pid[call.pid].append(call)
    return by_pid


class _Durability:
    """Per thread: files renamed and folders created whose fsyncs are still owed."""

    def __init__(self, under: str) -> None:
        self.under = under  # only files renamed into this folder count
        self.synced: dict[str, bool] = {}  # temporary file -> fsynced since its last write
        self.owed: dict[str, str] = {}  # folder that must be fsynced -> why
        self.files: list[str] = []  # files made durable (renamed into place)
        self.problems: list[str] = []

    def see(self, call: Call) -> None:
        if call.name in ("write", "pwrite64") and call.fd and "/.incoming-" in call.fd:
            self.synced[call.fd] = False
        elif call.name in ("fsync", "fdatasync") and call.fd:
            if call.fd in self.synced:
                self.synced[call.fd] = True
            self.owed.pop(call.fd, None)
        elif call.name in ("mkdir", "mkdirat") and call.ok and call.strings:
            folder = call.strings[0]
            if folder.startswith(self.under):
                self.owed[os.path.dirname(folder)] = f"parent of the new folder {folder}"
        elif call.name.startswith("rename") and call.ok and len(call.strings) >= 2:
            source, target = call.strings[0], call.strings[-1]
            if not target.startswith(self.under):
                return
            if not self.synced.pop(source, False):
                self.problems.append(f"{target}: data not fsynced before its rename")
            self.owed[os.path.dirname(target)] = f"folder of {os.path.basename(target)} after its rename"
            self.files.append(target)

    def settle(self, event: str) -> None:
        """``event`` (an acknowledgement or a database write) happens now: nothing may be owed."""
        for folder, why in self.owed.items():
            self.problems.append(f"{event} before fsync of {folder} ({why})")
        self.owed.clear()


@dataclass
class Report:
    acknowledged: int = 0  # C-STORE responses the node sent
    spooled: int = 0  # instances renamed into the spool
    results: int = 0  # result files renamed into the outbox
    delivered: int = 0  # C-STORE responses the node received from the destination
    problems: list[str] | None = None


def check(calls: list[Call], data_dir: Path, scp_port: int, destination_port: int | None = None) -> Report:
    """Check the three orders above; ``problems`` lists every violation (empty: all durable in time)."""
    spool, outbox, wal = f"{data_dir}/spool/", f"{data_dir}/outbox/", f"{data_dir}/ainode.db-wal"
    report = Report(problems=[])
    for pid, thread in _threads(calls).items():
        receive, results = _Durability(spool), _Durability(outbox)
        awaiting_answer = False
        for call in thread:
            receive.see(call)
            results.see(call)
            socket = call.fd or ""
            p_data = bool(call.strings) and call.strings[0].startswith("\x04")
            if call.name == "sendto" and f":{scp_port}->" in socket and p_data:
                report.acknowledged += 1
                receive.settle(f"C-STORE response {report.acknowledged} (thread {pid})")
            if destination_port is not None and socket.endswith(f":{destination_port}]") and p_data:
                if call.name == "sendto":
                    awaiting_answer = True
                elif call.name == "recvfrom":
                    awaiting_answer = False
                    report.delivered += 1
            if call.name in ("write", "pwrite64") and call.fd == wal:
                results.settle(f"database write (thread {pid})")
                if awaiting_answer:
                    report.problems.append(
                        f"database write (thread {pid}) while a C-STORE to the destination had no answer yet"
                    )
        report.spooled += len(receive.files)
        report.results += len(results.files)
        report.problems += receive.problems + results.problems
    return report
