"""Start-up order does not matter (issue 17): ``ainode worker`` and ``ainode serve`` with ``executor: celery`` wait
for the database and the broker, saying what they wait for and where (no password), and a SIGTERM during the
wait ends them at once with status 0 and no traceback. Nothing is listening on the ports used here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import REPO
from tests.helpers.ports import free_port


def _start(command: str, config: dict[str, object], tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "executor": "celery", **config}))
    log = tmp_path / f"{command}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", command],
            cwd=REPO,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "AINODE_CONFIG": str(path)},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return proc, log


def _wait_for_line(proc: subprocess.Popen[bytes], log: Path, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace")
        if text in content:
            return content
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before saying {text!r}:\n{content}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"never said {text!r}:\n{log.read_text(errors='replace')}")


def _terminate(proc: subprocess.Popen[bytes], log: Path) -> str:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0, log.read_text(errors="replace")
    assert time.monotonic() - started < 5, "SIGTERM must end the wait at once, not after the back-off"
    content = log.read_text(errors="replace")
    assert "Traceback" not in content, content
    return content


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_a_role_waits_for_the_database_and_stops_cleanly_on_sigterm(command: str, tmp_path: Path) -> None:
    config = {
        "database_url": f"postgresql+psycopg://ainode:pw-not-shown@127.0.0.1:{free_port()}/ainode",
        "celery": {"broker_url": f"amqp://guest:guest@127.0.0.1:{free_port()}//"},
        "port": free_port(),
        "http_enabled": False,
    }
    proc, log = _start(command, config, tmp_path)
    try:
        _wait_for_line(proc, log, "next try in 2 s")  # the back-off: 1 s, then 2 s
        content = _terminate(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "waiting for the database at postgresql+psycopg://ainode:***@127.0.0.1" in content
    assert "pw-not-shown" not in content
    assert "stopped while waiting for the database" in content


def test_serve_waits_for_the_broker_once_the_database_answers(tmp_path: Path) -> None:
    config = {
        "celery": {"broker_url": f"amqp://guest:pw-not-shown@127.0.0.1:{free_port()}//"},  # SQLite: no server
        "port": free_port(),
        "http_enabled": False,
    }
    proc, log = _start("serve", config, tmp_path)
    try:
        _wait_for_line(proc, log, "waiting for the broker at amqp://guest:**@127.0.0.1")
        content = _terminate(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "pw-not-shown" not in content and "stopped while waiting for the broker" in content
    assert "listening on" not in content  # nothing was started


def test_without_the_distributed_extra_the_celery_roles_say_which_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from node import cli

    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "executor": "celery"}))
    monkeypatch.delitem(sys.modules, "node.distributed", raising=False)
    monkeypatch.setitem(sys.modules, "celery", None)  # as if Celery were not installed
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for command in ("worker", "serve"):
            assert cli.main(["--config", str(config), command]) == 2
            err = capsys.readouterr().err
            assert "executor: celery needs the 'distributed' extra (celery is not installed)" in err, err
            assert "Traceback" not in err
    finally:  # the commands set their own (stop on SIGTERM): this test process keeps pytest's
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
