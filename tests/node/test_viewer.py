"""``ainode viewer`` (:mod:`node.viewer`): the OHIF build served, its configuration, the DICOMweb proxy.

Real sockets on loopback: the viewer's server on a free port, a small OHIF-like build in a temporary
folder, and a DICOMweb server played by the standard library's HTTP server, which records what reaches
it. What OHIF itself does with the viewer is tests/viewer's (Chromium on the real build and Orthanc).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from node.settings import ViewerDicomWebSettings, ViewerSettings
from node.viewer import ViewerServer, app_config, base_url
from node.web.pages import viewer_link
from tests.helpers.certs import self_signed_certificate
from tests.helpers.cli import REPO, ainode
from tests.helpers.ports import free_port

INDEX = b"<!doctype html><title>OHIF</title><script src='/app-config.js'></script>"
BOUNDARY = "ainode-test-boundary"
PASSWORD = "correct-horse-battery"
TOKEN = "a-bearer-token-of-some-length"


@dataclass
class Seen:
    """A request the DICOMweb server received."""

    path: str
    headers: dict[str, str]


@dataclass
class Upstream:
    """A DICOMweb server on loopback: QIDO-RS answers echo the query; a frame answer comes in two parts."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    #: Set by the test once the first part of the multipart answer reached it through the viewer.
    first_part_read: threading.Event = field(default_factory=threading.Event)
    #: Whether the second part was sent only after the first reached the test (the proxy streamed).
    streamed: list[bool] = field(default_factory=list)


def _parts() -> tuple[bytes, bytes]:
    head = f"--{BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
    first = head + bytes(range(256)) * 64 + b"\r\n"
    second = head + b"\x00\xff" * 4096 + f"\r\n--{BOUNDARY}--\r\n".encode()
    return first, second


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    state = Upstream()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            state.seen.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
            if self.path.endswith("/rendered"):  # breaks off: a tenth of the announced length, then closed
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b"\x89PNG" + b"\x00" * 9996)
                self.wfile.flush()
                self.close_connection = True
                return
            if "/frames/" in self.path:
                first, second = _parts()
                self.send_response(200)
                self.send_header(
                    "Content-Type", f"multipart/related; type=application/octet-stream; boundary={BOUNDARY}"
                )
                self.send_header("Connection", "close")
                self.send_header("Keep-Alive", "timeout=5")
                self.end_headers()
                self.wfile.write(first)
                self.wfile.flush()
                state.streamed.append(state.first_part_read.wait(10))
                self.wfile.write(second)
                return
            body = json.dumps([{"path": self.path}]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", '"v1"')
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/dicom-web"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.first_part_read.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """A stand-in for the OHIF build: index.html, bundles, a wasm file and the build's own app-config.js."""
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_bytes(INDEX)
    (dist / "app.bundle.js").write_text("console.log('ohif')")
    (dist / "assets" / "codec.wasm").write_bytes(b"\x00asm\x01\x00\x00\x00")
    (dist / "app-config.js").write_text("window.config = {shipped: true};")
    (tmp_path / "secret.txt").write_text("outside the build")
    return dist


def _serve(build: Path, dicomweb: ViewerDicomWebSettings) -> ViewerServer:
    return ViewerServer(build, dicomweb, "127.0.0.1", 0).start()


@pytest.fixture
def viewer(build: Path, upstream: Upstream) -> Iterator[ViewerServer]:
    server = _serve(build, ViewerDicomWebSettings(url=upstream.url))
    try:
        yield server
    finally:
        server.stop()


def _config(text: str) -> dict[str, object]:
    match = re.fullmatch(r"window\.config = (.*);\n", text, re.DOTALL)
    assert match, text
    loaded: dict[str, object] = json.loads(match.group(1))
    return loaded


def test_app_config_points_the_one_data_source_at_the_same_origin(viewer: ViewerServer) -> None:
    answer = requests.get(viewer.url + "/app-config.js", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/javascript")
    assert answer.text == app_config()  # generated, not the build's own file
    config = _config(answer.text)
    [source] = config["dataSources"]  # type: ignore[misc]
    assert config["defaultDataSourceName"] == source["sourceName"] == "dicomweb"
    roots = {key: source["configuration"][key] for key in ("qidoRoot", "wadoRoot", "wadoUriRoot")}
    assert roots == {"qidoRoot": "/dicom-web", "wadoRoot": "/dicom-web", "wadoUriRoot": "/dicom-web"}
    assert source["configuration"]["omitQuotationForMultipartRequest"] is True  # Orthanc's plugin


def test_files_of_the_build_and_index_html_for_the_apps_routes(viewer: ViewerServer, build: Path) -> None:
    bundle = requests.get(viewer.url + "/app.bundle.js", timeout=10)
    assert (bundle.status_code, bundle.text) == (200, "console.log('ohif')")
    assert bundle.headers["content-type"].startswith("text/javascript")
    wasm = requests.get(viewer.url + "/assets/codec.wasm", timeout=10)
    assert (wasm.status_code, wasm.headers["content-type"]) == (200, "application/wasm")
    # The link the admin pages make, and OHIF's other routes: the single-page app.
    for route in (
        viewer_link(viewer.url, "1.2.826.0.1.3680043.8.498.1"),
        viewer.url + "/",
        viewer.url + "/segmentation?StudyInstanceUIDs=1.2.3",
        viewer.url + "/viewer/dicomweb",
    ):
        page = requests.get(route, timeout=10)
        assert (page.status_code, page.content) == (200, INDEX), route
        assert page.headers["content-type"].startswith("text/html")
    missing = requests.get(viewer.url + "/missing.bundle.js", timeout=10)
    assert missing.status_code == 404 and "Traceback" not in missing.text
    # Nothing outside the build, however the path is spelled.
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/%2e%2e/%2e%2e/secret.txt"):
        with socket.create_connection(("127.0.0.1", viewer.port), timeout=10) as raw:
            raw.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := raw.recv(65536):
                reply += chunk
        assert b"outside the build" not in reply, path


def test_qido_query_and_accept_reach_the_dicomweb_server_without_the_browsers_credentials(
    viewer: ViewerServer, upstream: Upstream
) -> None:
    query = "PatientName=DOE%5EJ*&limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
    answer = requests.get(
        f"{viewer.url}/dicom-web/studies?{query}",
        headers={
            "Accept": "application/dicom+json",
            "Authorization": "Basic YnJvd3NlcjpzZWNyZXQ=",
            "Cookie": "session=abc",
            "Connection": "keep-alive, X-Private",
            "X-Private": "hop",
        },
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    assert answer.headers["etag"] == '"v1"'
    [seen] = upstream.seen
    assert seen.path == f"/dicom-web/studies?{query}"  # passed as sent, not decoded and encoded again
    assert answer.json() == [{"path": seen.path}]
    assert seen.headers["accept"] == "application/dicom+json"
    for name in ("authorization", "cookie", "x-private"):
        assert name not in seen.headers, (name, seen.headers)


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_the_proxy_adds_the_configured_credentials(
    build: Path, upstream: Upstream, auth: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIEWER_DICOMWEB_SECRET", TOKEN if auth == "bearer" else PASSWORD)
    settings = ViewerDicomWebSettings(
        url=upstream.url,
        auth=auth,  # type: ignore[arg-type]
        username="viewer" if auth == "basic" else None,
        password_env="VIEWER_DICOMWEB_SECRET" if auth == "basic" else None,
        token_env="VIEWER_DICOMWEB_SECRET" if auth == "bearer" else None,
    )
    server = _serve(build, settings)
    try:
        answer = requests.get(server.url + "/dicom-web/studies/1.2.3/series", timeout=10)
        config = requests.get(server.url + "/app-config.js", timeout=10).text
    finally:
        server.stop()
    assert answer.status_code == 200
    expected = (
        f"Bearer {TOKEN}" if auth == "bearer" else "Basic " + base64.b64encode(f"viewer:{PASSWORD}".encode()).decode()
    )
    assert upstream.seen[0].headers["authorization"] == expected
    secret = TOKEN if auth == "bearer" else PASSWORD
    assert secret not in config and secret not in answer.text and secret not in str(answer.headers)


def test_multipart_bulk_data_is_streamed_not_held_whole(viewer: ViewerServer, upstream: Upstream) -> None:
    first, second = _parts()
    path = "/dicom-web/studies/1.2.3/series/4.5/instances/6.7/frames/1"
    with requests.get(
        viewer.url + path,
        headers={"Accept": "multipart/related; type=application/octet-stream"},
        stream=True,
        timeout=10,
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].endswith(f"boundary={BOUNDARY}")
        assert "keep-alive" not in answer.headers  # the upstream's hop-by-hop header is not passed
        received = b""
        chunks = answer.raw.stream(4096, decode_content=False)
        while len(received) < len(first):
            received += next(chunks)  # arrives while the server still holds back its second part
        upstream.first_part_read.set()
        for chunk in chunks:
            received += chunk
    assert upstream.streamed == [True], "the second part was sent before the first reached the browser"
    assert received == first + second
    assert upstream.seen[0].headers["accept"] == "multipart/related; type=application/octet-stream"


def test_an_unreachable_dicomweb_server_is_502_with_one_line(build: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"  # nobody listens
    server = _serve(build, ViewerDicomWebSettings(url=url))
    try:
        with caplog.at_level(logging.WARNING, logger="ainode.viewer"):
            answer = requests.get(server.url + "/dicom-web/studies?limit=1", timeout=10)
        page = requests.get(server.url + "/app.bundle.js", timeout=10)  # the viewer keeps serving
    finally:
        server.stop()
    assert answer.status_code == 502
    assert answer.text.count("\n") == 1 and answer.text.startswith(f"the DICOMweb server {url} did not answer")
    assert "Traceback" not in answer.text
    assert page.status_code == 200
    warnings = [r for r in caplog.records if r.name == "ainode.viewer"]
    assert len(warnings) == 1 and warnings[0].exc_info is None, [r.getMessage() for r in warnings]


def test_an_answer_broken_off_upstream_is_broken_off_for_the_browser_too(
    viewer: ViewerServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        with pytest.raises(requests.exceptions.ChunkedEncodingError):  # not a short answer that looks whole
            requests.get(viewer.url + "/dicom-web/studies/1.2.3/rendered", timeout=10).content  # noqa: B018
        assert requests.get(viewer.url + "/dicom-web/studies", timeout=10).status_code == 200  # still serving
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in lines] == ["ainode.viewer"], [(r.name, r.getMessage()) for r in lines]
    assert "broke off its answer to /dicom-web/studies/1.2.3/rendered" in lines[0].getMessage()
    assert lines[0].exc_info is None


def test_the_viewer_only_reads(viewer: ViewerServer, upstream: Upstream) -> None:
    for method, path in (("POST", "/dicom-web/studies"), ("DELETE", "/dicom-web/studies/1.2.3"), ("PUT", "/")):
        answer = requests.request(method, viewer.url + path, data=b"x", timeout=10)
        assert answer.status_code == 405, (method, path)
        assert "GET" in answer.headers["allow"] and "Traceback" not in answer.text
    assert upstream.seen == []


def test_a_path_climbing_out_of_the_dicomweb_root_is_not_forwarded(viewer: ViewerServer, upstream: Upstream) -> None:
    for path in ("/dicom-web/../tools/reset", "/dicom-web/%2e%2e/instances", "/dicom-web/studies/%2E%2E/%2E%2E/x"):
        with socket.create_connection(("127.0.0.1", viewer.port), timeout=10) as raw:
            raw.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            reply = raw.makefile("rb").read()
        assert reply.startswith(b"HTTP/1.1 404"), (path, reply[:200])
    assert upstream.seen == []


def _config_file(tmp_path: Path, config: dict[str, object]) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "var"), **config}))
    return path


def test_ainode_viewer_without_the_build_says_how_to_fetch_it(tmp_path: Path) -> None:
    empty = tmp_path / "no-build"
    empty.mkdir()
    run = ainode("viewer", config=_config_file(tmp_path, {"viewer": {"ohif_dir": str(empty)}}), timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    [line] = run.stderr.strip().splitlines()
    assert "no OHIF build" in line and "bash scripts/ohif.sh" in line and str(empty) in line


@contextlib.contextmanager
def _viewer_process(tmp_path: Path, config: dict[str, object]) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """``ainode viewer`` as a user runs it, with ``config`` as node.yaml: the process, and the viewer's URL and
    the DICOMweb server's that its first log line names (stopped at the end if the test did not stop it)."""
    path = _config_file(tmp_path, config)
    process = subprocess.Popen(
        [sys.executable, "-m", "node.cli", "viewer"],
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "AINODE_CONFIG": str(path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"viewer: OHIF on (https?://127\.0\.0\.1:\d+), studies from the DICOMweb server (\S+)", line)
        assert found, line
        yield process, found.group(1), found.group(2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_ainode_viewer_serves_until_stopped(
    tmp_path: Path, build: Path, upstream: Upstream, stop: signal.Signals
) -> None:
    config = {"viewer": {"ohif_dir": str(build), "port": 0, "dicomweb": {"url": upstream.url}}}
    with _viewer_process(tmp_path, config) as (process, url, dicomweb):
        assert url.startswith("http://") and dicomweb == upstream.url
        assert requests.get(url + "/app-config.js", timeout=10).text == app_config()
        assert requests.get(url + "/dicom-web/studies", timeout=10).status_code == 200
        process.send_signal(stop)
        assert process.wait(timeout=20) == 0
        assert process.stderr is not None
        rest = process.stderr.read()
    assert "Traceback" not in rest and "viewer: stopped" in rest, rest


@pytest.mark.integration  # openssl makes the certificate
def test_ainode_viewer_serves_https_with_the_nodes_http_certificate(
    tmp_path: Path, build: Path, upstream: Upstream
) -> None:
    cert, key = self_signed_certificate(tmp_path)
    config = {
        "http_tls": {"certificate": str(cert), "private_key": str(key)},
        "viewer": {"ohif_dir": str(build), "port": 0, "dicomweb": {"url": upstream.url}},
    }
    with _viewer_process(tmp_path, config) as (process, url, _):
        assert url.startswith("https://")
        assert requests.get(url + "/app-config.js", verify=str(cert), timeout=10).text == app_config()
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(url.replace("https://", "http://") + "/app-config.js", timeout=10)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


def test_ainode_viewer_on_a_taken_port_is_one_line(tmp_path: Path, build: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        run = ainode(
            "viewer", config=_config_file(tmp_path, {"viewer": {"ohif_dir": str(build), "port": port}}), timeout=60
        )
    assert run.returncode == 2, run.stdout + run.stderr
    [line] = run.stderr.strip().splitlines()
    assert f"cannot listen on 127.0.0.1:{port}" in line and "viewer.port" in line


def test_the_address_the_admin_pages_link_to() -> None:
    assert base_url(ViewerSettings()) == "http://127.0.0.1:8081"
    assert base_url(ViewerSettings(host="::1", port=9000)) == "http://[::1]:9000"
    assert base_url(ViewerSettings(), "https") == "https://127.0.0.1:8081"  # with http_tls the viewer is HTTPS
    assert (
        base_url(ViewerSettings(url="https://viewer.hospital.example/ohif/")) == "https://viewer.hospital.example/ohif"
    )
