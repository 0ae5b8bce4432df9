"""docker/compose.yaml, docker/Dockerfile and its .dockerignore, checked without a container engine.

No container engine runs on the machines that run these tests (CI included), so the images are
never built nor the services started here. What can be checked is: the file against the Compose
Specification's JSON schema (the copy check-jsonschema ships, validated with jsonschema), whole and
per profile; each layout's wiring (profiles, healthchecks, depends_on conditions, restart policies,
images pinned to exact tags, ports on ${AINODE_BIND_ADDRESS:-127.0.0.1}, named volumes); Orthanc's
configuration against the README's recipe (the same Lua script, the same keys); that every role's
environment (ainode, serve, worker, viewer), interpolated as compose does from docker/.env, is a valid
node configuration over the wheel's node.yaml; the worker's healthcheck, run against real sockets; and
the build context: Docker's .dockerignore rules (implemented below after Docker's documentation) keep
.venv, var/, .cache, tests and DICOM files out and let in everything the Dockerfile copies.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import socket
import subprocess
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from node.settings import DEFAULT_CONFIG_FILE, Settings, load_settings
from tests.integration.test_readme_orthanc import readme_recipe

DOCKER = Path(__file__).resolve().parents[2] / "docker"
REPO = DOCKER.parent
ROLES = ("ainode", "serve", "worker")  # the services that run the node (the viewer runs the same image)
BIND = "${AINODE_BIND_ADDRESS:-127.0.0.1}"  # how every published port starts, before interpolation
_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def _dotenv() -> dict[str, str]:
    values = {}
    for line in (DOCKER / ".env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """``${NAME}``, ``${NAME:-default}`` and ``$$`` as compose substitutes them; an unset variable without a
    default fails the test (compose would substitute an empty string and warn)."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group("name"), match.group("default")
        if env.get(name):
            return env[name]
        assert default is not None, f"${{{name}}} has no default and docker/.env does not set it"
        return default

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    loaded = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    """The file as compose sees it with docker/.env and no other variable set."""
    interpolated: dict[str, Any] = _interpolate(raw, _dotenv())
    return interpolated


def _layout(compose: dict[str, Any], profile: str) -> dict[str, dict[str, Any]]:
    """The services a profile starts: its own and those without a profile."""
    return {
        name: service for name, service in compose["services"].items() if profile in service.get("profiles", [profile])
    }


def test_the_file_is_valid_against_the_compose_specification_schema(raw: dict[str, Any]) -> None:
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    # The schema is strict: it refuses what compose would refuse (a check that cannot pass everything).
    for service, key, value in (
        ("worker", "deploy", {"replica": 2}),
        ("serve", "depends_on", {"postgres": {"condition": "service_ready"}}),
        ("rabbitmq", "healthcheck", {"test": ["CMD", "true"], "interval": 10}),
    ):
        broken = json.loads(json.dumps(raw))
        broken["services"][service][key] = value
        assert list(validator.iter_errors(broken)), (service, key, value)


def test_the_single_node_layout_is_the_default_and_unchanged(compose: dict[str, Any]) -> None:
    assert _dotenv()["COMPOSE_PROFILES"] == "single"
    single = _layout(compose, "single")
    assert sorted(single) == ["ainode", "orthanc", "viewer"]
    node = single["ainode"]
    assert node["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert "AINODE_EXECUTOR" not in node["environment"] and "AINODE_DATABASE_URL" not in node["environment"]
    assert node["volumes"] == ["ainode-data:/var/lib/ainode"]


def test_the_scale_layout_has_broker_database_serve_and_replicated_workers(compose: dict[str, Any]) -> None:
    scale = _layout(compose, "scale")
    assert sorted(scale) == ["orthanc", "postgres", "rabbitmq", "serve", "viewer", "worker"]
    assert int(scale["worker"]["deploy"]["replicas"]) == int(_dotenv()["AINODE_WORKERS"]) >= 2
    # Healthchecks where a dependant waits for them, conditions on them, restart policies everywhere.
    for name in ("rabbitmq", "postgres", "serve"):
        assert scale[name]["healthcheck"]["test"][0] == "CMD", name
    assert scale["serve"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "rabbitmq": {"condition": "service_healthy"},
        "orthanc": {"condition": "service_healthy"},
    }
    assert scale["worker"]["depends_on"]["serve"] == {"condition": "service_healthy"}
    for name, service in compose["services"].items():
        assert service["restart"] == "unless-stopped", name
    # Orthanc's modality "ainode" reaches the receiver in both layouts (the single node's service name).
    assert "ainode" in scale["serve"]["networks"]["default"]["aliases"]


def test_published_ports_listen_on_loopback_unless_configured(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    published = [(name, port) for name, s in compose["services"].items() for port in s.get("ports", [])]
    assert {name for name, _ in published} == {"orthanc", "ainode", "serve", "rabbitmq", "viewer"}
    for name, port in published:
        assert port.startswith("127.0.0.1:"), (name, port)
    # Written so in the file, each one: the variable decides, loopback unless it is set.
    for name, service in raw["services"].items():
        for port in service.get("ports", []):
            assert port.startswith(BIND + ":"), (name, port)
    ports = {name: {p.rsplit(":", 1)[1] for p in s.get("ports", [])} for name, s in compose["services"].items()}
    assert ports["ainode"] == ports["serve"] == {"11112", "8080"}  # DICOM, and HTTP (health, admin pages)
    assert ports["viewer"] == {"8081"} and ports["orthanc"] == {"8042", "4242"}
    assert "postgres" not in {n for n, _ in published}  # the database stays inside the compose network
    opened = _interpolate(raw, {**_dotenv(), "AINODE_BIND_ADDRESS": "0.0.0.0"})
    assert all(p.startswith("0.0.0.0:") for s in opened["services"].values() for p in s.get("ports", []))


def test_serve_and_workers_share_one_volume_for_storage_and_their_own_data(compose: dict[str, Any]) -> None:
    serve, worker = compose["services"]["serve"], compose["services"]["worker"]
    assert serve["volumes"] == worker["volumes"] == ["ainode-shared:/var/lib/ainode"]
    assert "ainode-shared" in compose["volumes"]
    mount = Path("/var/lib/ainode")
    root = Path(serve["environment"]["AINODE_STORAGE__ROOT"])
    assert root == Path(worker["environment"]["AINODE_STORAGE__ROOT"]) and root.is_relative_to(mount)
    # Each role's data folder (its temporary files, renamed into the storage root) is on the same
    # volume, and no two roles share one: serve's is fixed, each worker's is named after its container.
    assert Path(serve["environment"]["AINODE_DATA_DIR"]).is_relative_to(mount)
    assert "AINODE_DATA_DIR=/var/lib/ainode/workers/$HOSTNAME exec ainode worker" in worker["command"][-1]


@pytest.mark.parametrize("role", ROLES)
def test_each_role_environment_is_a_valid_node_configuration(compose: dict[str, Any], role: str) -> None:
    """The role's AINODE_* variables (and the image's AINODE_DATA_DIR) over the wheel's node.yaml."""
    dockerfile = (DOCKER / "Dockerfile").read_text()
    [image_data_dir] = re.findall(r"^ENV AINODE_DATA_DIR=(\S+)$", dockerfile, re.MULTILINE)
    service = compose["services"][role]
    environ = {"AINODE_DATA_DIR": image_data_dir, **{k: str(v) for k, v in service["environment"].items()}}
    command = " ".join(service.get("command", []))
    if "AINODE_DATA_DIR=" in command:
        environ["AINODE_DATA_DIR"] = re.findall(r"AINODE_DATA_DIR=(\S+)", command)[0]
    settings = load_settings(DEFAULT_CONFIG_FILE, environ=environ)
    assert settings.destinations["pacs"].host == "orthanc"  # type: ignore[union-attr]
    if role != "worker":  # the HTTP server reachable through the published port; the viewer as the host sees it
        assert settings.http_host == "0.0.0.0" and settings.viewer.url == "http://127.0.0.1:8081"
    if role == "ainode":
        assert settings.executor == "local" and settings.database_url is None
        return
    assert settings.executor == "celery"
    assert settings.database_url == "postgresql+psycopg://ainode:ainode@postgres:5432/ainode"
    assert settings.celery.broker_url == "amqp://ainode:ainode@rabbitmq:5672/ainode"
    assert settings.storage.type == "posix" and settings.storage.root == Path("/var/lib/ainode/shared")
    assert settings.providers_for() == ["CPUExecutionProvider"]


def test_rabbitmq_consumer_timeout_is_above_celery_time_limits(compose: dict[str, Any]) -> None:
    volumes = compose["services"]["rabbitmq"]["volumes"]
    [conf] = [v for v in volumes if v.startswith("./rabbitmq.conf:")]
    assert conf.split(":")[1].startswith("/etc/rabbitmq/conf.d/")
    values = {}
    for line in (DOCKER / "rabbitmq.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    timeout_ms = int(values["consumer_timeout"])
    celery = Settings().celery
    assert celery.soft_time_limit < celery.time_limit < timeout_ms / 1000
    # The vhost the broker URL names is the one the broker creates at its first start.
    assert compose["services"]["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_VHOST"] == "ainode"


def test_the_image_installs_the_scale_out_extra() -> None:
    import tomllib

    dockerfile = (DOCKER / "Dockerfile").read_text()
    [extras] = re.findall(r'pip install --no-cache-dir "\$\(ls /dist/ainode-\*\.whl\)\[([a-z,]+)\]"', dockerfile)
    pyproject = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
    defined = pyproject["project"]["optional-dependencies"]
    assert {"postgres", "distributed"} <= set(extras.split(","))
    assert any(d.startswith("celery") for d in defined["distributed"])
    assert set(extras.split(",")) <= set(defined)


# -- every service -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["single", "scale"])
def test_each_layout_is_valid_and_complete_on_its_own(raw: dict[str, Any], profile: str) -> None:
    """The file as one profile starts it: schema-valid, and every service it waits for is in the layout."""
    schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    layout = {**raw, "services": _layout(raw, profile)}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(layout))
    assert not errors, [e.message for e in errors]
    for name, service in layout["services"].items():
        assert set(service.get("depends_on", {})) <= set(layout["services"]), (profile, name)


def _image_tag_is_pinned(image: str) -> bool:
    """An exact version tag (``15.10-bookworm``, ``24.12.1``), never none, ``latest`` or a bare major."""
    _, _, tag = image.rpartition(":")
    return ":" in image and re.fullmatch(r"\d+\.\d+(\.\d+)?(-[a-z0-9.]+)*", tag) is not None


def test_every_image_is_pinned_to_an_exact_tag(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:  # built here from docker/Dockerfile, whose base images are checked below
            assert service["image"] == "ainode:local", name
        else:
            assert _image_tag_is_pinned(service["image"]), (name, service["image"])
    stages = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", (DOCKER / "Dockerfile").read_text(), re.MULTILINE)
    assert len(stages) == 3
    for image, _ in stages:
        assert _image_tag_is_pinned(image), image
    # The check refuses what it must.
    for floating in ("orthancteam/orthanc", "orthancteam/orthanc:latest", "python:3", "node:20-bookworm-slim"):
        assert not _image_tag_is_pinned(floating), floating


def test_every_service_has_a_healthcheck_a_restart_policy_and_waits_for_healthy_dependencies(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD" and len(test) >= 2, name
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
    for name in ("ainode", "serve", "viewer"):
        assert "orthanc" in services[name]["depends_on"], name
    # The node's and the viewer's checks ask their own HTTP servers, on the ports they listen on.
    assert "http://127.0.0.1:8080/healthz" in services["ainode"]["healthcheck"]["test"][-1]
    assert services["serve"]["healthcheck"] == services["ainode"]["healthcheck"]
    assert "http://127.0.0.1:8081/" in services["viewer"]["healthcheck"]["test"][-1]
    assert services["orthanc"]["healthcheck"]["test"] == ["CMD", "/probes/test-aliveness.py"]


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if not source.startswith("."):  # a named volume, not a file of docker/
                used.setdefault(name, set()).add(f"{source}:{target}")
    assert set().union(*({v.split(":")[0] for v in vs} for vs in used.values())) == declared
    assert used["orthanc"] == {"orthanc-db:/var/lib/orthanc/db"}
    assert used["ainode"] == {"ainode-data:/var/lib/ainode"}
    assert used["serve"] == used["worker"] == {"ainode-shared:/var/lib/ainode"}
    assert used["postgres"] == {"postgres-data:/var/lib/postgresql/data"}
    assert used["rabbitmq"] == {"rabbitmq-data:/var/lib/rabbitmq"}
    assert "viewer" not in used  # the viewer keeps nothing: OHIF is in the image, the studies in Orthanc


def _broker_socket_check(port: int) -> list[str]:
    """The worker's healthcheck command, asking for an established connection to ``port`` instead of 5672."""
    compose = _interpolate(yaml.safe_load((DOCKER / "compose.yaml").read_text()), _dotenv())
    test: list[str] = compose["services"]["worker"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and test[3].count(":1628'") == 1
    return [sys.executable, "-c", test[3].replace(":1628'", f":{port:04X}'")]


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="the check reads Linux's /proc/net/tcp")
def test_the_worker_healthcheck_sees_an_established_broker_connection() -> None:
    """Run as written (only the port changed): unhealthy while nothing is connected, healthy once a client is."""
    compose = _interpolate(yaml.safe_load((DOCKER / "compose.yaml").read_text()), _dotenv())
    broker_port = int(compose["x-scale-node"]["AINODE_CELERY__BROKER_URL"].rsplit(":", 1)[1].split("/")[0])
    assert f"{broker_port:04X}" == "1628"
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        listening = subprocess.run(_broker_socket_check(port), capture_output=True, text=True, timeout=30)
        assert listening.returncode == 1, listening.stderr  # a listening socket is not a broker connection
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                connected = subprocess.run(_broker_socket_check(port), capture_output=True, text=True, timeout=30)
                assert connected.returncode == 0, connected.stderr
            client.close()


# -- Orthanc as the README configures it ---------------------------------------------------------------------


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """File mounts of a service: its file in docker/ -> the path in the container."""
    return {
        v.split(":")[0].removeprefix("./"): v.split(":")[1] for v in service.get("volumes", []) if v.startswith("./")
    }


def test_orthanc_forwards_with_the_readme_lua_script_and_configuration(compose: dict[str, Any]) -> None:
    readme_config, readme_lua = readme_recipe()
    orthanc = compose["services"]["orthanc"]
    mounts = _mounts(orthanc)
    # The script mounted is the README's, character for character, at the path the configuration names.
    assert (DOCKER / "orthanc" / "ainode.lua").read_text(encoding="utf-8") == readme_lua
    config = json.loads((DOCKER / "orthanc" / "orthanc.json").read_text(encoding="utf-8"))
    assert config["LuaScripts"] == [mounts["orthanc/ainode.lua"]]
    # The image reads every /etc/orthanc/*.json: the configuration file is one of them.
    assert re.fullmatch(r"/etc/orthanc/[^/]+\.json", mounts["orthanc/orthanc.json"])
    # Every key of the README's block, with its value; only the node's address differs (its service name here).
    for key, value in readme_config.items():
        if key == "DicomModalities":
            [(name, (aet, _, port))] = value.items()
            assert config[key] == {name: [aet, "ainode", port]}
        else:
            assert config[key] == value, key
    # "ainode" reaches the node in both layouts: the single node's service name, serve's alias.
    assert "ainode" in compose["services"]
    assert "ainode" in compose["services"]["serve"]["networks"]["default"]["aliases"]
    # The node sends its results to this Orthanc's DICOM port and AE title.
    destination = yaml.safe_load(compose["services"]["ainode"]["environment"]["AINODE_DESTINATIONS"])["pacs"]
    assert (destination["ae_title"], destination["port"]) == (config["DicomAet"], 4242)
    # DICOMweb on for the viewer, at the root the viewer's URL names.
    assert orthanc["environment"]["DICOM_WEB_PLUGIN_ENABLED"] == "true" and config["DicomWeb"]["Enable"] is True
    viewer_url = compose["services"]["viewer"]["environment"]["AINODE_VIEWER__DICOMWEB__URL"]
    assert viewer_url == "http://orthanc:8042" + config["DicomWeb"]["Root"].rstrip("/")


def test_the_viewer_serves_the_image_ohif_build_from_orthanc_dicomweb(compose: dict[str, Any]) -> None:
    viewer = compose["services"]["viewer"]
    assert viewer["command"] == ["ainode", "viewer"]
    assert viewer["build"] == compose["services"]["ainode"]["build"] and viewer["image"] == "ainode:local"
    environ = {k: str(v) for k, v in viewer["environment"].items()}
    settings = load_settings(DEFAULT_CONFIG_FILE, environ=environ).viewer
    assert (settings.host, settings.port) == ("0.0.0.0", 8081)  # inside the container; published on loopback
    assert settings.dicomweb.url == "http://orthanc:8042/dicom-web" and settings.dicomweb.auth == "basic"
    # The proxy logs in as Orthanc's registered user, with the password compose gives both containers.
    users = json.loads(compose["services"]["orthanc"]["environment"]["ORTHANC__REGISTERED_USERS"])
    assert settings.dicomweb.password_env is not None
    assert users == {settings.dicomweb.username: environ[settings.dicomweb.password_env]} == {"ainode": "ainode"}
    # The OHIF build the Dockerfile copies into the image, fetched by scripts/ohif.sh in its own stage.
    dockerfile = (DOCKER / "Dockerfile").read_text()
    [(stage, source, target)] = re.findall(r"^COPY --from=(\S+) (\S+) (\S+)$", dockerfile, re.MULTILINE)
    assert settings.ohif_dir == Path(target)
    [(script, dest)] = re.findall(rf"^FROM \S+ AS {stage}\nCOPY \S+ (\S+)\nRUN bash \1 (\S+)$", dockerfile, re.M)
    assert script.endswith("/scripts/ohif.sh") and source == f"{dest}/dist"
    assert "OHIF_VERSION=" in (REPO / "scripts" / "ohif.sh").read_text()  # the pinned version lives there


# -- the build context ---------------------------------------------------------------------------------------
# Docker's rules for .dockerignore (its documentation, "Dockerignore files"; moby's patternmatcher), as far as
# these files use them: one pattern a line, '#' lines and blank lines skipped; each pattern cleaned like a path
# (Go's filepath.Clean) with a leading '/' dropped, so it is matched from the context's root; '*' matches within
# one path element, '?' one character of one, '**' any number of elements (none included); a pattern that
# matches a folder excludes everything in it; the last pattern that matches a path decides, and '!' makes it an
# exception (the path is sent). Character classes ('[...]') are not used here and are refused.


def _docker_ignore_rules(lines: list[str], where: str = "") -> list[tuple[re.Pattern[str], bool]]:
    rules = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = posixpath.normpath(line.removeprefix("!").strip()).lstrip("/")
        assert "[" not in pattern and "\\" not in pattern, f"{where}: {line!r} uses syntax this test does not model"
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((re.compile(regex), exception))
    return rules


def _sent(rules: list[tuple[re.Pattern[str], bool]], path: str) -> bool:
    """Whether the build context holds ``path`` (relative, '/'-separated)."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # the path and each folder above it
    sent = True
    for regex, exception in rules:
        if any(regex.fullmatch(c) for c in candidates):
            sent = exception
    return sent


#: BuildKit reads docker/Dockerfile.dockerignore for docker/Dockerfile; the root one serves any other build.
IGNORE_FILES = ("docker/Dockerfile.dockerignore", ".dockerignore")


def _ignore_file_rules(name: str) -> list[tuple[re.Pattern[str], bool]]:
    return _docker_ignore_rules((REPO / name).read_text().splitlines(), name)


def _copied_sources() -> list[str]:
    """What the Dockerfile copies from the build context (COPY without --from)."""
    sources = []
    for line in (DOCKER / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from=") for w in words):
            sources += words[1:-1]
    return sources


def test_the_matcher_follows_docker_rules() -> None:
    """The model of Docker's rules on the documentation's kinds of example, so that it can fail."""
    rules = _docker_ignore_rules(["# a comment", "", "*/temp*", "*/*/temp*", "temp?", "**/*.md", "!README.md"])
    assert len(rules) == 5
    assert not _sent(rules, "somedir/temporary.txt") and not _sent(rules, "somedir/subdir/temporary.txt")
    assert _sent(rules, "a/b/c/temporary.txt")  # '*' stays within one folder level
    assert not _sent(rules, "tempa") and _sent(rules, "tempab") and _sent(rules, "temp/x")
    assert not _sent(rules, "docs/a.md") and not _sent(rules, "a.md") and _sent(rules, "README.md")
    folder = _docker_ignore_rules(["/build/", "!build/keep"])
    assert not _sent(folder, "build/a/b.o") and _sent(folder, "build/keep") and _sent(folder, "builds/x")
    assert _sent(_docker_ignore_rules(["!build", "build"]), "build/x") is False  # the last match decides


def test_both_ignore_files_hold_the_same_rules() -> None:
    rules = [[line.strip() for line in (REPO / name).read_text().splitlines()] for name in IGNORE_FILES]
    docker, root = ([line for line in lines if line and not line.startswith("#")] for lines in rules)
    assert docker == root and docker


@pytest.mark.parametrize("name", IGNORE_FILES)
def test_the_build_context_keeps_patient_data_and_the_venv_out(name: str) -> None:
    rules = _ignore_file_rules(name)
    for path in (
        ".venv/bin/python",
        ".venv/lib/python3.11/site-packages/pydicom/__init__.py",
        "var/ainode.db",
        "var/spool/1.2.840.1/1.2.840.1.1.dcm",
        "var/outbox/pacs/result.dcm",
        ".cache/ohif/dist/index.html",
        "tests/conftest.py",
        "tests/integration/nodeproc.py",
        "study.dcm",
        "incoming/CT/IM0001.dcm",
        "core/left-behind.dcm",
        "node/var/spool/x",
        "node/__pycache__/service.cpython-311.pyc",
        "scripts/dev.sh",
        ".git/HEAD",
        "docker/.env",
    ):
        assert not _sent(rules, path), (name, path)
    # What is on this checkout's disk, outside the folders the Dockerfile copies (those are checked below).
    copied = _copied_sources()
    for folder in (".cache", "var", "tests"):
        for root, _, names in os.walk(REPO / folder):
            for file_name in names[:50]:
                relative = (Path(root) / file_name).relative_to(REPO).as_posix()
                assert not _sent(rules, relative), (name, relative)
    assert "scripts/ohif.sh" in copied  # the one file of scripts/ the build needs is sent, nothing else of it


@pytest.mark.parametrize("name", IGNORE_FILES)
def test_the_build_context_holds_everything_the_dockerfile_copies(name: str) -> None:
    rules = _ignore_file_rules(name)
    sources = _copied_sources()
    assert {"pyproject.toml", "README.md", "core", "node", "weights", "scripts/ohif.sh"} <= set(sources)
    checked = 0
    for source in sources:
        path = REPO / source
        assert path.exists(), f"the Dockerfile copies {source}, which is not in the repository"
        files_ = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files_:
            relative = file.relative_to(REPO).as_posix()
            parts = relative.split("/")
            left_out = relative.endswith((".dcm", ".pyc")) or {"__pycache__", "var", ".pytest_cache"} & set(parts)
            assert _sent(rules, relative) != bool(left_out), (name, relative)
            checked += 1
    assert checked > 100
