"""docker/compose.yaml and docker/Dockerfile, checked without a container engine.

No container engine runs on the machines that run these tests (CI included), so the images are
never built nor the services started here. What can be checked is: the file against the Compose
Specification's JSON schema (the copy check-jsonschema ships, validated with jsonschema); each
layout's wiring (profiles, healthchecks, depends_on conditions, restart policies, pinned images,
ports on 127.0.0.1, the shared volume); and that every ainode role's environment, interpolated as
compose does from docker/.env, is a valid node configuration over the wheel's node.yaml.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from node.settings import DEFAULT_CONFIG_FILE, Settings, load_settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
ROLES = ("ainode", "serve", "worker")  # the services that run the node's image
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
    assert sorted(single) == ["ainode", "orthanc"]
    node = single["ainode"]
    assert node["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert "AINODE_EXECUTOR" not in node["environment"] and "AINODE_DATABASE_URL" not in node["environment"]
    assert node["volumes"] == ["ainode-data:/var/lib/ainode"]


def test_the_scale_layout_has_broker_database_serve_and_replicated_workers(compose: dict[str, Any]) -> None:
    scale = _layout(compose, "scale")
    assert sorted(scale) == ["orthanc", "postgres", "rabbitmq", "serve", "worker"]
    assert int(scale["worker"]["deploy"]["replicas"]) == int(_dotenv()["AINODE_WORKERS"]) >= 2
    # Pinned official images, never a floating tag.
    for name, image in (("rabbitmq", "rabbitmq"), ("postgres", "postgres")):
        repository, _, tag = scale[name]["image"].partition(":")
        assert repository == image and re.match(r"^\d+\.\d+(\.\d+)?(-[a-z]+)?$", tag), scale[name]["image"]
    # Healthchecks where a dependant waits for them, conditions on them, restart policies everywhere.
    for name in ("rabbitmq", "postgres", "serve"):
        assert scale[name]["healthcheck"]["test"][0] == "CMD", name
    assert scale["serve"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "rabbitmq": {"condition": "service_healthy"},
        "orthanc": {"condition": "service_started"},
    }
    assert scale["worker"]["depends_on"]["serve"] == {"condition": "service_healthy"}
    for name, service in compose["services"].items():
        assert service["restart"] == "unless-stopped", name
    # Orthanc's modality "ainode" reaches the receiver in both layouts.
    assert "ainode" in scale["serve"]["networks"]["default"]["aliases"]
    modalities = json.loads(compose["services"]["orthanc"]["environment"]["ORTHANC__DICOM_MODALITIES"])
    assert modalities["ainode"][1] == "ainode"


def test_published_ports_listen_on_loopback_unless_configured(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    published = [(name, port) for name, s in compose["services"].items() for port in s.get("ports", [])]
    assert {name for name, _ in published} == {"orthanc", "ainode", "serve", "rabbitmq"}
    for name, port in published:
        assert port.startswith("127.0.0.1:"), (name, port)
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
