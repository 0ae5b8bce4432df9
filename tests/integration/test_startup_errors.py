"""Every start-up and command-line failure of issue 14 is one line naming the problem and the fix, exit 2.

Each case runs ``ainode`` as a user does (a subprocess with its own
configuration file) and checks stderr: exactly one ``ainode: error:`` line, the
last one, naming the problem and the setting that fixes it, and no traceback.
The read-only data directory is a tmpfs mounted ``ro`` (as root a chmod'ed
folder stays writable); a test that cannot mount it fails and says why.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import free_port, wait_for_port
from tests.helpers.cli import ainode

REPO = Path(__file__).resolve().parents[2]


def one_line_error(run: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The single ``ainode: error:`` line of a failed run (exit 2, no traceback), checked for ``expected``."""
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("ainode: error:")]
    assert len(errors) == 1 and run.stderr.rstrip().endswith(errors[0]), run.stderr
    for text in expected:
        assert text in errors[0], (text, errors[0])
    return errors[0]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A node on loopback, ports picked by the kernel, no destinations, the view filter only (fast start)."""
    models_yaml = tmp_path / "models.yaml"
    models_yaml.write_text("models:\n  - manifest: cxr-view-filter/model.json\n")
    cfg = tmp_path / "node.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "host": "127.0.0.1",
                "port": 0,
                "http_port": 0,
                "data_dir": str(tmp_path / "data"),
                "destinations": {},
                "default_destinations": [],
                "models_file": str(models_yaml),
                "cxr": {"finding_model": None, "four_class_models": [], "detector_model": None},
            }
        )
    )
    return cfg


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_dicom_port_in_use(config: Path, taken_port: int) -> None:
    run = ainode("serve", config=config, env={"AINODE_PORT": str(taken_port)})
    one_line_error(run, f"DICOM port 127.0.0.1:{taken_port} is already in use", "AINODE_PORT")


def test_http_port_in_use_stops_start_up(config: Path, taken_port: int) -> None:
    run = ainode("serve", config=config, env={"AINODE_HTTP_PORT": str(taken_port)})
    one_line_error(run, f"HTTP port 127.0.0.1:{taken_port} is already in use", "http_port", "http_enabled: false")


def _serve(config: Path, port: int, **env: str) -> subprocess.Popen[str]:
    """``ainode serve`` on ``config`` with DICOM port ``port`` and the given ``AINODE_*`` variables only."""
    return subprocess.Popen(
        [sys.executable, "-m", "node.cli", "serve"],
        cwd=REPO,
        text=True,
        env={"PATH": os.environ.get("PATH", ""), "AINODE_CONFIG": str(config), "AINODE_PORT": str(port), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_http_port_in_use_with_http_disabled_starts(config: Path, taken_port: int) -> None:
    port = free_port()
    proc = _serve(config, port, AINODE_HTTP_PORT=str(taken_port), AINODE_HTTP_ENABLED="false")
    try:
        assert wait_for_port(port, timeout=60), proc.stderr.read() if proc.poll() is not None else "not listening"
        assert "HTTP off" in (proc.stdout.readline() if proc.stdout else "")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err


def test_http_server_open_to_other_hosts_is_a_start_up_warning(config: Path) -> None:
    port = free_port()
    proc = _serve(config, port, AINODE_HTTP_HOST="0.0.0.0", AINODE_HTTP_METRICS_AUTH="false")
    try:
        assert wait_for_port(port, timeout=60), proc.stderr.read() if proc.poll() is not None else "not listening"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
    warnings = [line for line in err.splitlines() if "reachable from other hosts" in line]
    assert len(warnings) == 1, err
    assert "WARNING" in warnings[0] and "/metrics is open" in warnings[0] and "no http_tls" in warnings[0]


def test_data_dir_is_a_file(config: Path, tmp_path: Path) -> None:
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    run = ainode("serve", config=config, env={"AINODE_DATA_DIR": str(afile)})
    one_line_error(run, f"data directory {afile} is a file", "AINODE_DATA_DIR")


def test_data_dir_cannot_be_created(config: Path) -> None:
    run = ainode("serve", config=config, env={"AINODE_DATA_DIR": "/proc/x"})
    one_line_error(run, "cannot create data directory /proc/x", "AINODE_DATA_DIR")


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted read-only (root can write to any chmod'ed folder, not to a read-only mount)."""
    point = tmp_path / "ro"
    point.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(point)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.fail(f"cannot mount a read-only tmpfs for this test (needs root): {mount.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_data_dir_on_a_read_only_file_system(config: Path, read_only_dir: Path) -> None:
    run = ainode("serve", config=config, env={"AINODE_DATA_DIR": str(read_only_dir)})
    one_line_error(run, f"data directory {read_only_dir} is not writable", "Read-only file system", "AINODE_DATA_DIR")
    run = ainode("serve", config=config, env={"AINODE_DATA_DIR": str(read_only_dir / "node")})
    one_line_error(run, f"cannot create data directory {read_only_dir / 'node'}", "Read-only file system")


@pytest.mark.parametrize(
    "command", [("jobs",), ("jobs", "show", "1"), ("deliveries",), ("deliveries", "retry"), ("audit",)]
)
def test_commands_before_the_node_ever_ran(config: Path, tmp_path: Path, command: tuple[str, ...]) -> None:
    run = ainode(*command, config=config)
    one_line_error(
        run, f"no database at {tmp_path / 'data' / 'ainode.db'}", "the node has not run yet with this configuration"
    )
    assert not (tmp_path / "data").exists()  # a listing creates nothing


def test_unreachable_postgresql_is_one_line(config: Path) -> None:
    url = f"postgresql+psycopg://ainode:s3cret@127.0.0.1:{free_port()}/ainode"
    run = ainode("jobs", config=config, env={"AINODE_DATABASE_URL": url})
    line = one_line_error(run, "database postgresql+psycopg://ainode:***@127.0.0.1", "cannot be opened")
    assert "s3cret" not in run.stderr + line


def test_dev_sh_variables_are_not_settings(config: Path) -> None:
    """``AINODE_EXTRAS=postgres bash scripts/dev.sh run`` hands its own variables to ``ainode serve``."""
    port = free_port()
    proc = _serve(config, port, AINODE_EXTRAS="postgres", AINODE_PYTHON=sys.executable)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "listening" in line, line
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "unknown key" not in err and "Traceback" not in err and proc.returncode == 0


def test_sample_mistakes_are_one_line(config: Path, tmp_path: Path) -> None:
    run = ainode("sample", "cxr", "--out", str(tmp_path / "s"), "--send", "AINODE@127.0.0.1", config=config)
    one_line_error(run, "expected AE@HOST:PORT")
    assert not (tmp_path / "s").exists()  # the typo is found before anything is written
    (tmp_path / "afile").write_text("x")
    run = ainode("sample", "cxr", "--out", str(tmp_path / "afile"), config=config)
    one_line_error(run, "is a file")


def test_dicom_address_not_of_this_machine(config: Path) -> None:
    run = ainode("serve", config=config, env={"AINODE_HOST": "192.0.2.1"})  # TEST-NET-1: never ours
    one_line_error(run, "DICOM address 192.0.2.1 is not an address of this machine", "0.0.0.0")


def test_privileged_port_message_names_the_fix() -> None:
    import errno

    from node.preflight import listen_error

    message = str(listen_error("DICOM", "0.0.0.0", 104, PermissionError(errno.EACCES, "Permission denied"), "port"))
    assert message == (
        "DICOM port 0.0.0.0:104 needs root or CAP_NET_BIND_SERVICE (ports below 1024): choose a port "
        "of 1024 or above (port in node.yaml or AINODE_PORT), or grant the capability"
    )
    tls = str(listen_error("DICOM TLS", "::", 2762, OSError(errno.EADDRINUSE, "Address in use"), "tls.port"))
    assert "[::]:2762 is already in use" in tls and "AINODE_TLS__PORT" in tls


def test_unusable_database_url_is_one_line(config: Path) -> None:
    run = ainode("jobs", config=config, env={"AINODE_DATABASE_URL": "nosuchdb://user:s3cret@host/db"})
    one_line_error(run, "database_url nosuchdb://user:***@host/db cannot be used", "check database_url")
    assert "s3cret" not in run.stderr
