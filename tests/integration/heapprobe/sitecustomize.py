"""Heap probe for the memory-growth test, loaded into the node process through ``PYTHONPATH``.

When ``HEAP_PROBE_REPORT`` names a file, SIGUSR2 makes the process append one JSON line to it:
its resident set (``VmRSS``, KB), then glibc's ``malloc_trim(0)`` (free heap pages handed back to the
system) and the resident set again, with the bytes the allocator has in use (``mallinfo2``). The node
itself is not changed; without the variable this module does nothing.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
from pathlib import Path
from types import FrameType


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def _report(_signum: int, _frame: FrameType | None) -> None:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    rss = _rss_kb()
    libc.malloc_trim(0)
    info = libc.mallinfo2()
    line = {"rss_kb": rss, "trimmed_rss_kb": _rss_kb(), "heap_in_use": info.uordblks + info.hblkhd}
    with open(os.environ["HEAP_PROBE_REPORT"], "a") as fh:
        fh.write(json.dumps(line) + "\n")


if os.environ.get("HEAP_PROBE_REPORT"):
    signal.signal(signal.SIGUSR2, _report)
