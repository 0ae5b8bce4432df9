"""The node's metrics (``node.metrics``) as prometheus-client writes them, checked against the README's table.

In one process, on the node's database (SQLite, then PostgreSQL; the
``db`` fixture of ``tests/node/conftest.py``): every instrument is moved once
and every gauge has a row to count, then the exposition is parsed by
prometheus-client's own parsers. The README's table of metrics is the list
checked, both ways: a metric renamed, retyped or relabelled in the code, or in
the README, fails here. The same metrics over HTTP, with their login:
``tests/node/test_http.py``, ``tests/node/test_http_auth.py`` and, through a
real node process, ``tests/integration/test_observability.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from dimse.scp import AssociationEvent
from node.db import Database, Job, JobState
from node.metrics import Metrics, StoreGauges

README = Path(__file__).parents[2] / "README.md"
TABLE_MARK = "<!-- metrics table: read by tests/node/test_metrics.py -->"


def readme_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """``{exposed family name: (type, label names)}`` from the README's table under :data:`TABLE_MARK`."""
    text = README.read_text()
    assert TABLE_MARK in text, "the README lost its metrics table (or the marker above it)"
    rows = {}
    for line in text.split(TABLE_MARK, 1)[1].lstrip("\n").splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, kind, labels = (cell.strip() for cell in line.strip("|").split("|")[:3])
        rows[name.strip("`")] = (kind, frozenset(re.findall(r"`([a-z_]+)`", labels)))
    return rows


def exposed(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """``{family name as exposed: (type, label names of its samples)}`` of a text exposition."""
    families = {}
    for family in text_string_to_metric_families(text):
        # The parser gives counters their OpenMetrics name; the text format exposes them with _total.
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = frozenset(label for s in family.samples for label in s.labels if label != "le")
        families[name] = (family.type, labels)
    return families


def _working(db: Database, data_dir: Path) -> Metrics:
    """Metrics with every instrument moved once and a job in the database, as a node that has worked."""
    metrics = Metrics()
    metrics.add_collector(StoreGauges(db, data_dir))
    with db.session() as session:
        session.add(Job(series_uid="1.2.3.4", study_uid="1.2.3", pipeline="cxr", state=JobState.DONE))
        session.commit()
    metrics.instance(0x0000)
    metrics.instance(0xB000)  # a warning is a success: the instance is kept
    metrics.instance(0xC210)
    metrics.association(AssociationEvent("accepted", "STORESCU", "127.0.0.1"))
    metrics.analysis_seconds.labels(pipeline="cxr").observe(0.3)
    metrics.deliveries.labels(destination="pacs", outcome="delivered").inc()
    metrics.delivery_seconds.labels(destination="pacs").observe(0.02)
    metrics.series_resent.labels(pipeline="cxr").inc()
    metrics.instances_resent.inc(4)
    metrics.purged_files.labels(reason="age").inc(3)
    metrics.purged_bytes.labels(reason="age").inc(2300)
    return metrics


def test_the_exposition_has_exactly_the_readme_metrics_with_their_types_and_labels(
    db: Database, tmp_path: Path
) -> None:
    listed = readme_metrics()
    assert len(listed) >= 18 and "ainode_instances_received_total" in listed  # the table was read
    body, content_type = _working(db, tmp_path).exposition()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    found = exposed(text)
    assert found == listed, {
        "in the README only": sorted(set(listed) - set(found)),
        "exposed only": sorted(set(found) - set(listed)),
        "different": sorted(n for n in set(found) & set(listed) if found[n] != listed[n]),
    }
    assert "_created" not in text  # no series the hand-written exposition did not have


def test_values_follow_what_the_node_did(db: Database, tmp_path: Path) -> None:
    metrics = _working(db, tmp_path)
    assert metrics.value("ainode_instances_received_total") == 2
    assert metrics.value("ainode_instances_rejected_total", status="0xC210", reason="Error: cannot understand") == 1
    assert metrics.value("ainode_associations_total", outcome="accepted") == 1
    assert metrics.value("ainode_associations_total", outcome="aborted") == 0  # listed before it happens
    assert metrics.value("ainode_analysis_seconds_bucket", pipeline="cxr", le="0.25") == 0
    assert metrics.value("ainode_analysis_seconds_bucket", pipeline="cxr", le="0.5") == 1
    assert metrics.value("ainode_analysis_seconds_sum", pipeline="cxr") == pytest.approx(0.3)
    assert metrics.value("ainode_purged_bytes_total", reason="age") == 2300
    assert metrics.value("ainode_purged_bytes_total", reason="watermark") == 0
    assert metrics.value("ainode_jobs", state="done", pipeline="cxr") == 1
    assert metrics.value("ainode_database_up") == 1 and metrics.value("ainode_data_dir_free_bytes") > 0
    metrics.instance(0x0000)
    assert metrics.value("ainode_instances_received_total") == 3


def test_two_nodes_in_one_process_keep_their_own_counts(db: Database, tmp_path: Path) -> None:
    first, second = Metrics(), Metrics()  # a registry each: no "Duplicated timeseries" from the library
    first.add_collector(StoreGauges(db, tmp_path))
    second.add_collector(StoreGauges(db, tmp_path))
    first.instance(0x0000)
    first.instance(0x0000)
    second.instance(0xA700)
    assert first.value("ainode_instances_received_total") == 2
    assert second.value("ainode_instances_received_total") == 0
    assert second.value("ainode_instances_rejected_total", status="0xA700", reason="Refused: out of resources") == 1
    assert first.value("ainode_instances_rejected_total", status="0xA700", reason="Refused: out of resources") == 0


def test_openmetrics_when_the_scraper_asks_for_it(db: Database, tmp_path: Path) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    body, content_type = _working(db, tmp_path).exposition(accept)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    families = {f.name: f for f in openmetrics_families(body.decode())}  # the parser insists on "# EOF"
    received = families["ainode_instances_received"]
    assert received.type == "counter" and [s.value for s in received.samples] == [2]
    assert families["ainode_jobs"].samples[0].labels == {"state": "done", "pipeline": "cxr"}


def test_a_failing_gauge_read_keeps_the_counters_and_says_the_database_is_down(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    metrics.add_collector(StoreGauges(db, None))  # type: ignore[arg-type]  # a bug (TypeError), not a disk error
    metrics.instance(0x0000)
    body, _ = metrics.exposition()
    found = exposed(body.decode())
    assert metrics.value("ainode_database_up") == 0 and metrics.value("ainode_instances_received_total") == 1
    assert "ainode_jobs" not in found and "ainode_associations_total" in found
    assert "the database and disk gauges could not be read" in caplog.text
