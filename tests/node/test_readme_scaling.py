"""The README's "Scaling out" section, as a user would copy it (issue 17).

Its configuration block is a valid node configuration for ``executor: celery``, and every value it shows as
the node's own (lease, heartbeat, time limits, promotion, devices, restarts) is the shipped default, so the
section cannot drift from the code; every test its fault table cites exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from node.settings import CelerySettings, PrioritySettings, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^## Scaling out\n(.*?)^## ", text, re.S | re.M)
    assert found, "README.md has no '## Scaling out' section followed by another section"
    return found.group(1)


def test_its_configuration_loads_as_a_celery_node_with_the_shipped_defaults(section: str, tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(blocks) == 1, f"expected one yaml block in 'Scaling out', found {len(blocks)}"
    config = tmp_path / "node.yaml"
    config.write_text(blocks[0])
    settings = load_settings(config, environ={})
    assert settings.executor == "celery"
    assert settings.database_url and settings.database_url.startswith("postgresql")
    assert settings.storage.type == "s3" and settings.storage.bucket
    assert settings.celery.queues == {"ct_pe": "gpu", "ct_lumbar": "gpu"}
    shipped_celery = CelerySettings()
    for key in ("default_queue", "lease_seconds", "heartbeat_seconds", "soft_time_limit", "time_limit"):
        assert getattr(settings.celery, key) == getattr(shipped_celery, key), key
    assert settings.priorities.promote_after == PrioritySettings().promote_after
    shipped = Settings()
    assert settings.devices == shipped.devices
    assert settings.job_max_restarts == shipped.job_max_restarts


def test_the_time_limits_it_states_are_the_shipped_ones(section: str) -> None:
    celery = CelerySettings()
    conf = (REPO / "docker" / "rabbitmq.conf").read_text()
    (timeout_ms,) = re.findall(r"^consumer_timeout\s*=\s*(\d+)", conf, re.M)
    assert f"`time_limit` ({celery.time_limit / 60:g} min)" in section
    assert f"`soft_time_limit` ({celery.soft_time_limit / 60:g} min)" in section
    assert f"sets {int(timeout_ms) / 60000:g} min" in section
    assert int(timeout_ms) / 1000 > celery.time_limit > celery.soft_time_limit


def test_every_test_its_fault_table_cites_exists(section: str) -> None:
    cited = set(re.findall(r"`((?:tests/[\w/]+/)?test_\w+\.py)`", section))
    assert len(cited) >= 6, cited
    missing = [
        name
        for name in cited
        if not (REPO / name).is_file() and not (REPO / "tests" / "integration" / "scale" / name).is_file()
    ]
    assert not missing, f"the README cites tests that do not exist: {missing}"
