"""File-to-file hops of one chest radiograph, from its C-STORE to its SR delivered.

A node runs in this process with the shipped models and one destination, a
pynetdicom storage SCP on loopback. One real chest CR (``RG1_UNCR.dcm`` from
pydicom-data) is sent to it with pynetdicom. While the radiograph travels,
``sys.setprofile``/``threading.setprofile`` record every Python call whose
caller and callee are both in a file of the node's own packages (``core``,
``dimse``, ``models``, ``sr_writer``, ``node``, ``training``; tests, benches and
libraries are left out). The run stops when the destination has the SR.

What is counted:

- **files**: repository files that ran a function on the path;
- **hops**: distinct directed file pairs (caller's file → callee's file, two
  different files) seen on the path — how often the reader of the code has
  to open another file to follow one radiograph;
- **back-and-forth**: pairs of files with hops both ways (a → b and b → a).

Start-up (model loading, database creation, the workers building their
pipelines) is not recorded: a first radiograph goes through untraced, and the
second one, a new study, is the one counted, so only the steady path of an
instance is.

    .venv/bin/python bench/hops.py [--verbose]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pydicom  # noqa: E402
from _common import free_port, table  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402
from pynetdicom import AE, AllStoragePresentationContexts, evt  # noqa: E402

PACKAGES = ("core", "dimse", "models", "sr_writer", "node", "training")
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def _own(filename: str) -> str | None:
    """The repository-relative path of a file of the node's packages, else None."""
    try:
        relative = Path(filename).resolve().relative_to(REPO)
    except ValueError:
        return None
    return relative.as_posix() if relative.parts and relative.parts[0] in PACKAGES else None


class HopRecorder:
    """Records caller-file → callee-file pairs of calls between the node's own files."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.hops: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._names: dict[str, str | None] = {}
        #: Off while the node starts: threads get the profiler when they start, so it is
        #: installed before the node starts and switched on once the node is up.
        self.active = False

    def _name(self, filename: str) -> str | None:
        if filename not in self._names:
            self._names[filename] = _own(filename)
        return self._names[filename]

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call" or not self.active or frame.f_code.co_name == "<module>":
            return  # a module's body runs once when first imported: not a step of the path
        callee = self._name(frame.f_code.co_filename)
        if callee is None:
            return
        caller_frame = frame.f_back
        # The caller is the nearest own frame below, so a hop through a library (pynetdicom
        # calling our handler, a thread starting our loop) counts from our file that set it up.
        while caller_frame is not None and (
            self._name(caller_frame.f_code.co_filename) is None or caller_frame.f_code.co_name == "<module>"
        ):
            caller_frame = caller_frame.f_back
        with self._lock:
            self.files.add(callee)
            if caller_frame is None:
                return
            caller = self._name(caller_frame.f_code.co_filename)
            if caller is not None and caller != callee:
                self.hops.setdefault((caller, callee), len(self.hops))


def _destination() -> tuple[AE, int, threading.Event]:
    got_sr = threading.Event()

    def on_store(event: Any) -> int:
        if str(event.request.AffectedSOPClassUID).startswith(SR_PREFIX):
            got_sr.set()
        return 0x0000

    ae = AE(ae_title="DEST")
    ae.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    return ae, port, got_sr


def _send(path: Path, port: int) -> None:
    ds = pydicom.dcmread(path)
    # A new study each time, so the second send is a first analysis too, not a re-send.
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = (generate_uid() for _ in range(3))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ae = AE(ae_title="ORTHANC")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    if not assoc.is_established:
        raise SystemExit("the node refused the association")
    status = assoc.send_c_store(ds)
    assoc.release()
    if getattr(status, "Status", None) != 0:
        raise SystemExit(f"C-STORE failed: {status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="list every hop in the order first seen")
    args = parser.parse_args(argv)

    from node.service import Node
    from node.settings import Settings

    radiograph = Path(get_testdata_file("RG1_UNCR.dcm"))
    dest, dest_port, got_sr = _destination()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            port=0,
            host="127.0.0.1",
            data_dir=Path(tmp) / "data",
            http_enabled=False,
            destinations={"dest": {"type": "dicom", "ae_title": "DEST", "host": "127.0.0.1", "port": dest_port}},
            default_destinations=["dest"],
        )
        recorder = HopRecorder()
        threading.setprofile(recorder)
        sys.setprofile(recorder)
        node = Node(settings)
        node.start()
        try:
            _send(radiograph, node.port)  # warm-up, untraced
            if not got_sr.wait(120):
                raise SystemExit("no SR reached the destination in 120 s")
            got_sr.clear()
            recorder.active = True
            started = time.monotonic()
            _send(radiograph, node.port)
            if not got_sr.wait(120):
                raise SystemExit("no SR reached the destination in 120 s")
            seconds = time.monotonic() - started
        finally:
            sys.setprofile(None)
            threading.setprofile(None)  # type: ignore[arg-type]
            node.stop()
            dest.shutdown()

    pairs = set(recorder.hops)
    both_ways = {tuple(sorted(pair)) for pair in pairs if (pair[1], pair[0]) in pairs}
    rows: list[list[object]] = [
        ["files on the path", len(recorder.files)],
        ["hops (distinct file → file)", len(pairs)],
        ["file pairs with hops both ways", len(both_ways)],
        ["seconds, C-STORE to SR delivered (traced)", f"{seconds:.1f}"],
    ]
    print(table(["one chest radiograph, C-STORE → SR delivered", "count"], rows))
    if args.verbose:
        print()
        for (caller, callee), _order in sorted(recorder.hops.items(), key=lambda item: item[1]):
            print(f"{caller} → {callee}")
        if both_ways:
            print("\nboth ways:")
            for a, b in sorted(both_ways):
                print(f"{a} ↔ {b}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
