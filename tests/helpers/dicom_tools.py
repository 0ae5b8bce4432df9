"""Run the reference DICOM command-line tools (DCMTK, dicom3tools) from tests.

``dciodvfy`` (dicom3tools) checks a file against the IOD tables of PS3.3;
``storescu`` and ``echoscu`` (DCMTK) are independent DIMSE peers (PS3.7
C-STORE and C-ECHO), so a test does not check our network code with itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .externals import missing_program_hint, require_integration

__all__ = [
    "DciodvfyReport",
    "assert_dciodvfy_clean",
    "dciodvfy",
    "echoscu",
    "require_tool",
    "pynetdicom_store",
    "storescu",
    "tool_env",
]

# Debian package that provides each tool, named in the error when one is missing.
_TOOL_PACKAGES = {
    "dciodvfy": "dicom3tools",
    "storescu": "dcmtk",
    "echoscu": "dcmtk",
    "storescp": "dcmtk",
    "dcmdump": "dcmtk",
    "dcmp2pgm": "dcmtk",
    "dcm2pnm": "dcmtk",
    "dsr2html": "dcmtk",
    "Orthanc": "orthanc",
    "strace": "strace",
}


def require_tool(name: str) -> str:
    """Return the absolute path of a command-line tool, or fail clearly.

    Parameters
    ----------
    name : str
        Executable name, e.g. ``"storescu"``.

    Returns
    -------
    str
        The path found on ``PATH`` (``/usr/sbin`` and ``/sbin`` are searched too,
        for Orthanc when PATH is a non-root user's).

    Raises
    ------
    FileNotFoundError
        When the tool is not installed; the message names its Debian package.
    Failed
        (pytest's) When the running test is not marked ``integration``.
    """
    require_integration(name)
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search)
    if found is None:
        package = _TOOL_PACKAGES.get(name, name)
        raise FileNotFoundError(
            f"{name!r} is not installed; install the Debian package {package!r} ({missing_program_hint()})"
        )
    return found


def tool_env() -> dict[str, str]:
    """Return the environment for DCMTK and Orthanc subprocesses.

    ``TCP_NODELAY=1`` makes DCMTK disable Nagle's algorithm; without it every
    C-STORE on loopback stalls for about 50 ms waiting for a delayed ACK.
    """
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


@dataclass(frozen=True)
class DciodvfyReport:
    """What ``dciodvfy`` said about one file.

    Attributes
    ----------
    errors : list of str
        Lines starting with ``Error`` (an IOD violation of PS3.3 or an
        encoding error of PS3.5).
    warnings : list of str
        Lines starting with ``Warning``.
    output : str
        The whole output (stdout and stderr), for failure messages.
    """

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def clean(self) -> bool:
        """True when dciodvfy reported no error (warnings are allowed)."""
        return not self.errors


def dciodvfy(path: str | os.PathLike[str], timeout: float = 60.0) -> DciodvfyReport:
    """Verify a DICOM file with dicom3tools' ``dciodvfy``.

    Parameters
    ----------
    path : str or os.PathLike
        A DICOM Part 10 file (PS3.10).
    timeout : float
        Seconds before the subprocess is killed.

    Returns
    -------
    DciodvfyReport
        The error and warning lines. dciodvfy's exit status is not used: it
        is non-zero for warnings too.
    """
    tool = require_tool("dciodvfy")
    proc = subprocess.run(
        [tool, os.fspath(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines()]
    return DciodvfyReport(
        errors=[line for line in lines if line.startswith("Error")],
        warnings=[line for line in lines if line.startswith("Warning")],
        output=output,
    )


def assert_dciodvfy_clean(path: str | os.PathLike[str]) -> DciodvfyReport:
    """Fail the test when ``dciodvfy`` reports any error for ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The DICOM file to check.

    Returns
    -------
    DciodvfyReport
        The report, so a caller can also look at the warnings.

    Raises
    ------
    AssertionError
        Listing every error line, followed by the full dciodvfy output.
    """
    report = dciodvfy(path)
    if report.errors:
        listed = "\n".join(f"  {line}" for line in report.errors)
        raise AssertionError(
            f"dciodvfy found {len(report.errors)} error(s) in {os.fspath(path)}:\n"
            f"{listed}\n--- full output ---\n{report.output}"
        )
    return report


def _expand(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[str], bool]:
    names = [os.fspath(p) for p in paths]
    if not names:
        raise ValueError("storescu needs at least one file or folder to send")
    return names, any(Path(name).is_dir() for name in names)


def storescu(
    paths: Iterable[str | os.PathLike[str]],
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "STORESCU",
    extra_args: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK's ``storescu`` (a C-STORE SCU, PS3.4 B.2).

    Parameters
    ----------
    paths : iterable of path
        Files, or folders that are scanned recursively.
    host, port : str, int
        The Storage SCP to send to.
    called_ae, calling_ae : str
        AE titles (PS3.8); at most 16 characters each.
    extra_args : sequence of str
        More storescu options, e.g. ``("--propose-jpeg8",)``.
    timeout : float
        Seconds before the subprocess is killed.

    Returns
    -------
    subprocess.CompletedProcess
        Not checked: a test of a refusal asserts on ``returncode`` and
        ``stderr`` itself. storescu exits non-zero when an association is
        refused; a C-STORE failure status is reported in ``stderr``.
    """
    names, has_dirs = _expand(paths)
    cmd = [require_tool("storescu"), "-aet", calling_ae, "-aec", called_ae]
    if has_dirs:
        cmd += ["--scan-directories", "--recurse"]
    cmd += [*extra_args, host, str(port), *names]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env=tool_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def echoscu(
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str = "ECHOSCU",
    extra_args: Sequence[str] = (),
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Send a C-ECHO (Verification, PS3.4 annex A) with DCMTK's ``echoscu``.

    Parameters
    ----------
    host, port : str, int
        The SCP to probe.
    called_ae, calling_ae : str
        AE titles (PS3.8).
    extra_args : sequence of str
        More echoscu options.
    timeout : float
        Seconds before the subprocess is killed.

    Returns
    -------
    subprocess.CompletedProcess
        ``returncode`` is 0 when the association was accepted and the echo
        answered with success.
    """
    cmd = [
        require_tool("echoscu"),
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        *extra_args,
        host,
        str(port),
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        env=tool_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def pynetdicom_store(
    port: int, datasets: Sequence[Any], calling_ae: str = "STORESCU", called_ae: str = "AINODE"
) -> list[int | None]:
    """C-STORE each data set on one pynetdicom association; the status of each (None: no answer).

    One presentation context per SOP class and transfer syntax of the data sets.
    """
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    for sop_class, syntax in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
        ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, "the node refused the association"
    try:
        return [getattr(assoc.send_c_store(ds), "Status", None) for ds in datasets]
    finally:
        assoc.release()
