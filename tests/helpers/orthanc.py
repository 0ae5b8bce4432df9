"""A real Orthanc server for tests, started from its Debian binary.

Orthanc stands in for the PACS: it sends studies to the node with C-STORE
(PS3.4 annex B) through its ``/modalities/{name}/store`` REST route, and
receives the node's results by C-STORE or STOW-RS (PS3.18). Each server gets
its own configuration, storage and index folders and free ports, so tests can
run several at once and never touch a system-wide Orthanc.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from orthanc_api_client import OrthancApiClient

from .dicom_tools import require_tool, storescu, tool_env
from .externals import missing_program_hint, require_integration
from .ports import free_port

__all__ = ["OrthancInstance", "OrthancServer", "find_dicomweb_plugin"]

# Debian installs plugins in /usr/share/orthanc/plugins; other builds use
# /usr/lib/orthanc or /usr/local. The first match wins.
_PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/lib/*/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so*",
    "/usr/local/lib/orthanc/plugins/libOrthancDicomWeb.so*",
)
_ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_BIND_ATTEMPTS = 3


class _PortTaken(Exception):
    """Orthanc exited because a port chosen for it was taken meanwhile."""


def find_dicomweb_plugin() -> str:
    """Return the path of Orthanc's DICOMweb plugin shared library.

    The environment variable ``AINODE_ORTHANC_DICOMWEB_PLUGIN`` overrides the
    search over the usual install folders.

    Raises
    ------
    FileNotFoundError
        When the plugin (Debian package ``orthanc-dicomweb``) is not installed.
    """
    require_integration("Orthanc")
    override = os.environ.get("AINODE_ORTHANC_DICOMWEB_PLUGIN")
    if override:
        return override
    for pattern in _PLUGIN_GLOBS:
        matches = sorted(glob.glob(pattern))
        if matches:
            return matches[0]
    raise FileNotFoundError(
        "Orthanc's DICOMweb plugin libOrthancDicomWeb.so was not found; install the "
        f"Debian package 'orthanc-dicomweb' ({missing_program_hint()})"
    )


@dataclass(frozen=True)
class OrthancInstance:
    """One instance stored in Orthanc, with the identifiers tests look at.

    Attributes
    ----------
    id : str
        Orthanc's resource ID (a hash, not a DICOM UID).
    sop_instance_uid, sop_class_uid : str
        SOP Common module (PS3.3 C.12.1).
    series_instance_uid, study_instance_uid : str
        The parents' UIDs.
    modality : str
        Series-level Modality, e.g. ``"SR"``, ``"PR"``, ``"KO"``, ``"SEG"``.
    series_description : str
        Series Description, empty when absent.
    instance_number : int or None
        Instance Number, when present and numeric.
    """

    id: str
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    series_description: str
    instance_number: int | None


class OrthancServer:
    """An Orthanc process with its own folders and ports.

    Use :meth:`start` and :meth:`stop`, or the ``orthanc``/``orthanc_factory``
    fixtures of ``tests/conftest.py``, which stop it at teardown.

    Parameters
    ----------
    workdir : pathlib.Path
        An empty folder for the configuration, storage, index and log.
    aet : str
        Orthanc's own AE title (``DicomAet``).
    modalities : mapping, optional
        ``DicomModalities`` entries, e.g. ``{"ainode": ["AINODE", "127.0.0.1", 11112]}``.
    extra_config : mapping, optional
        More configuration keys, applied last (they win).
    http_auth : (str, str), optional
        A user name and password: HTTP Basic authentication is then required
        (``AuthenticationEnabled``, ``RegisteredUsers``); the helper's own
        requests use it.
    """

    def __init__(
        self,
        workdir: Path,
        aet: str = "ORTHANC",
        modalities: Mapping[str, Any] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        http_auth: tuple[str, str] | None = None,
    ) -> None:
        if not 0 < len(aet) <= 16:
            raise ValueError(f"DicomAet must be 1 to 16 characters, got {aet!r}")
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.extra_config = dict(extra_config or {})
        self.http_auth = http_auth
        self._set_ports(free_port(), free_port())
        self.log_path = self.workdir / "orthanc.log"
        self.config_path = self.workdir / "orthanc.json"
        self._process: subprocess.Popen[bytes] | None = None
        self._terminated = False
        self._sop_classes: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"OrthancServer(aet={self.aet!r}, http={self.http_url}, dicom_port={self.dicom_port})"

    # -- life cycle -------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """Return the configuration written to ``orthanc.json``."""
        config: dict[str, Any] = {
            "Name": f"ainode-test-{self.aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "DicomModalities": self.modalities,
            # Short timeouts keep a failing test short; closing SCU
            # associations at once (default: 5 s later) lets the node see
            # the end of a forwarded study without waiting.
            "DicomScpTimeout": 5,
            "DicomScuTimeout": 10,
            "DicomAssociationCloseDelay": 0,
            "UnknownSopClassAccepted": True,
            "StorageCompression": False,
            "SaveJobs": False,
            "Plugins": [find_dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        if self.http_auth is not None:
            config.update({"AuthenticationEnabled": True, "RegisteredUsers": {self.http_auth[0]: self.http_auth[1]}})
        config.update(self.extra_config)
        return config

    def start(self, timeout: float = _START_TIMEOUT) -> OrthancServer:
        """Write the configuration, start Orthanc and wait until REST answers.

        A port taken by another process between :func:`free_port` and
        Orthanc's bind is retried with new ports, up to three times.

        Raises
        ------
        RuntimeError
            When Orthanc exits or ``GET /system`` does not answer within
            ``timeout`` seconds; the message holds Orthanc's log.
        """
        if self._process is not None:
            raise RuntimeError(f"{self!r} is already started")
        for attempt in range(_BIND_ATTEMPTS):
            try:
                return self._start_once(timeout)
            except _PortTaken:
                if attempt == _BIND_ATTEMPTS - 1:
                    raise RuntimeError(f"Orthanc could not bind its ports:\n{self.log_tail()}") from None
                self._set_ports(free_port(), free_port())
        raise AssertionError("unreachable")

    def _set_ports(self, http_port: int, dicom_port: int) -> None:
        while dicom_port == http_port:
            dicom_port = free_port()
        self.http_port, self.dicom_port = http_port, dicom_port
        self.http_url = f"http://127.0.0.1:{http_port}"
        self.dicomweb_url = f"{self.http_url}/dicom-web"
        user, password = self.http_auth or (None, None)
        self.api = OrthancApiClient(self.http_url, user=user, pwd=password)

    def _start_once(self, timeout: float) -> OrthancServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        with open(self.log_path, "wb") as log:
            process = subprocess.Popen(
                [require_tool("Orthanc"), "--verbose", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=tool_env(),
                cwd=self.workdir,
            )
        self._process, self._terminated = process, False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self._process = None
                if "already in use" in self.log_tail():
                    raise _PortTaken
                raise RuntimeError(f"Orthanc exited with status {process.returncode} at start-up:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.http_url}/system", timeout=0.5, auth=self.http_auth).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer GET /system within {timeout} s:\n{self.log_tail()}")

    def terminate(self) -> None:
        """Ask Orthanc to stop (SIGTERM) without waiting; see :meth:`wait_stopped`.

        Orthanc takes about 2 s to stop its threads; the fixtures terminate a
        server at teardown and wait for all of them at the end of the session,
        so that no test pays for it. Ports and folders are never reused.
        """
        self.api.close()
        if self._process is not None and self._process.poll() is None and not self._terminated:
            self._process.send_signal(signal.SIGTERM)
            self._terminated = True

    def wait_stopped(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Wait for the process to exit after :meth:`terminate`; SIGKILL after ``timeout``."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None and not self._terminated:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def stop(self) -> None:
        """Stop Orthanc with SIGTERM and wait for it to exit; SIGKILL after 10 s."""
        self.terminate()
        self.wait_stopped()

    @property
    def running(self) -> bool:
        """True while the Orthanc process is alive."""
        return self._process is not None and self._process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        """Return the end of Orthanc's log, for failure messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no Orthanc log)"
        return text[-chars:]

    # -- sending and receiving ---------------------------------------------

    def add_modality(self, name: str, aet: str, port: int, host: str = "127.0.0.1") -> None:
        """Declare a DICOM peer at run time (``PUT /modalities/{name}``).

        Useful when the peer's port is known only after Orthanc started.
        """
        self.api.put(f"modalities/{name}", json={"AET": aet, "Host": host, "Port": port})

    def store_with_storescu(
        self,
        paths: Iterable[str | os.PathLike[str]],
        calling_ae: str = "STORESCU",
        extra_args: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[str]:
        """Send files into this Orthanc with DCMTK's ``storescu``.

        Raises
        ------
        RuntimeError
            When storescu fails, with its output and Orthanc's log.
        """
        proc = storescu(paths, "127.0.0.1", self.dicom_port, self.aet, calling_ae, extra_args)
        if proc.returncode != 0 or "E: " in proc.stderr:
            raise RuntimeError(
                f"storescu into {self!r} failed (exit {proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}\n--- Orthanc log ---\n{self.log_tail()}"
            )
        return proc

    def upload(self, path: str | os.PathLike[str]) -> list[str]:
        """Store a file through REST (``POST /instances``); return instance IDs."""
        return list(self.api.upload_file(os.fspath(path)))

    def resolve(self, id_or_uid: str) -> str:
        """Return the Orthanc ID of a study, series or instance given by UID or ID."""
        if _ORTHANC_ID.match(id_or_uid):
            return id_or_uid
        found = self.api.post("tools/lookup", data=id_or_uid).json()
        if not found:
            raise LookupError(f"no resource with UID {id_or_uid} in {self!r}")
        return str(found[0]["ID"])

    def forward_study(self, study: str, modality_name: str, timeout: float = 60.0) -> dict[str, Any]:
        """Send a study to a configured modality by C-STORE, synchronously.

        Parameters
        ----------
        study : str
            Orthanc study ID or Study Instance UID.
        modality_name : str
            A key of ``DicomModalities`` (or of :meth:`add_modality`).
        timeout : float
            Seconds Orthanc waits for the peer.

        Returns
        -------
        dict
            Orthanc's answer (instance counts, failed instances).
        """
        body = {"Resources": [self.resolve(study)], "Synchronous": True, "Timeout": int(timeout + 0.5)}
        answer = self.api.post(f"modalities/{modality_name}/store", json=body, timeout=timeout + 10)
        return dict(answer.json())

    def instance_count(self) -> int:
        """Return how many instances Orthanc holds (``GET /statistics``)."""
        return int(self.api.get_json("statistics")["CountInstances"])

    def instances(self) -> list[OrthancInstance]:
        """Return every stored instance with its study and series identifiers."""
        # Children first, parents after: every series and study of a listed instance is then in the later
        # listings (listed parents first, an instance stored in between had a study the listing missed).
        listed = self.api.get_json("instances?expand")
        series = {s["ID"]: s for s in self.api.get_json("series?expand")}
        studies = {s["ID"]: s["MainDicomTags"].get("StudyInstanceUID", "") for s in self.api.get_json("studies?expand")}
        result = []
        for item in listed:
            parent = series.get(item["ParentSeries"])
            if parent is None or parent["ParentStudy"] not in studies:  # not expected; the next poll sees it
                continue
            tags = item["MainDicomTags"]
            number = str(tags.get("InstanceNumber", "")).strip()
            result.append(
                OrthancInstance(
                    id=item["ID"],
                    sop_instance_uid=tags.get("SOPInstanceUID", ""),
                    sop_class_uid=self._sop_class(item["ID"]),
                    series_instance_uid=parent["MainDicomTags"].get("SeriesInstanceUID", ""),
                    study_instance_uid=studies.get(parent["ParentStudy"], ""),
                    modality=parent["MainDicomTags"].get("Modality", ""),
                    series_description=parent["MainDicomTags"].get("SeriesDescription", ""),
                    instance_number=int(number) if number.lstrip("-").isdigit() else None,
                )
            )
        result.sort(key=lambda i: (i.study_instance_uid, i.series_instance_uid, i.instance_number or 0))
        return result

    def _sop_class(self, instance_id: str) -> str:
        # Not a main DICOM tag in Orthanc 1.10; it is kept as metadata.
        if instance_id not in self._sop_classes:
            response = self.api.get(f"instances/{instance_id}/metadata/SopClassUid")
            self._sop_classes[instance_id] = response.text.strip()
        return self._sop_classes[instance_id]

    def wait_for_instances(
        self,
        predicate: Callable[[OrthancInstance], bool] | None = None,
        *,
        study_uid: str | None = None,
        modality: str | None = None,
        count: int = 1,
        timeout: float = 30.0,
    ) -> list[OrthancInstance]:
        """Poll REST until at least ``count`` instances match, and return them.

        Parameters
        ----------
        predicate : callable, optional
            Keeps an instance when it returns True.
        study_uid : str, optional
            Keeps instances of this Study Instance UID.
        modality : str, optional
            Keeps instances whose series has this Modality (e.g. ``"SR"``).
        count : int
            How many matching instances to wait for.
        timeout : float
            Seconds to wait.

        Returns
        -------
        list of OrthancInstance
            All matching instances (possibly more than ``count``).

        Raises
        ------
        TimeoutError
            Naming what was stored and ending with Orthanc's log.
        """

        def keep(instance: OrthancInstance) -> bool:
            if study_uid is not None and instance.study_instance_uid != study_uid:
                return False
            if modality is not None and instance.modality != modality:
                return False
            return predicate is None or predicate(instance)

        deadline = time.monotonic() + timeout
        while True:
            everything = self.instances()
            matching = [i for i in everything if keep(i)]
            if len(matching) >= count:
                return matching
            if time.monotonic() >= deadline:
                stored = "\n".join(f"  {i.modality} {i.sop_class_uid} study={i.study_instance_uid}" for i in everything)
                raise TimeoutError(
                    f"{len(matching)} of {count} expected instance(s) (study_uid={study_uid}, "
                    f"modality={modality}) in {self!r} after {timeout} s; stored:\n"
                    f"{stored or '  (nothing)'}\n--- Orthanc log ---\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def download_instance(self, instance_id: str) -> bytes:
        """Return the DICOM file of an instance (``GET /instances/{id}/file``)."""
        return bytes(self.api.instances.get_file(instance_id))
