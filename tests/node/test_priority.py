"""Job priorities (issue 17): how a job's priority is computed, and that the configuration says so clearly.

The order they give (claims, deliveries) is tested on a real database in ``test_priority_order.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence

from node.errors import ConfigError
from node.priority import (
    PRIORITY,
    PRIORITY_TAGS,
    ROUTINE,
    TRIAGED_URGENT,
    URGENT,
    JobPriority,
    PriorityPolicy,
    broker_priority,
    is_promoted,
    level_name,
)
from node.router import load_routing, parse_routing, route, routing_tags
from node.settings import PrioritySettings, load_settings

RULES = {
    "rules": [
        {
            "name": "ctpa-urgent",
            "pipeline": "ct_pe",
            "priority": "urgent",
            "match": {"attribute": "StudyDescription", "regex": "(?i)ctpa"},
        },
        {"name": "chest-radiograph", "pipeline": "cxr", "match": {"attribute": "Modality", "one_of": ["CR", "DX"]}},
    ]
}


def _header(**attributes: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _default_policy() -> PriorityPolicy:
    return PriorityPolicy.from_settings(PrioritySettings())


def test_a_rule_priority_makes_the_job_that_urgent_and_names_the_rule() -> None:
    config = parse_routing(RULES)
    ctpa = _header(Modality="CT", StudyDescription="CTPA")
    decision = route(ctpa, config)
    assert (decision.rule, decision.priority) == ("ctpa-urgent", URGENT)
    policy = _default_policy()
    assert policy.job_priority(ctpa, rule=decision.rule, rule_priority=decision.priority) == JobPriority(
        URGENT, "rule ctpa-urgent"
    )
    radiograph = _header(Modality="CR")
    decision = route(radiograph, config)
    assert (decision.rule, decision.priority) == ("chest-radiograph", None)
    assert policy.job_priority(radiograph, rule=decision.rule, rule_priority=decision.priority) == JobPriority(
        ROUTINE, None
    )


def test_an_invalid_rule_priority_is_a_clear_error_when_the_rules_load(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(
        "rules:\n"
        "  - name: ctpa\n"
        "    pipeline: ct_pe\n"
        "    priority: high\n"
        "    match: {attribute: Modality, equals: CT}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_routing(path)
    message = str(info.value)
    assert str(path) in message and "rule 'ctpa' (rule 1), key priority" in message
    assert "'urgent', 'priority' or 'routine'" in message and "example: priority: urgent" in message


def test_requested_procedure_priority_at_the_top_level_or_in_the_request_attributes() -> None:
    policy = _default_policy()
    assert policy.job_priority(_header(RequestedProcedurePriority="STAT")) == JobPriority(
        URGENT, "RequestedProcedurePriority STAT"
    )
    assert policy.job_priority(_header(RequestedProcedurePriority="stat ")) == JobPriority(
        URGENT, "RequestedProcedurePriority STAT"
    )
    assert policy.job_priority(_header(RequestedProcedurePriority="HIGH")) == JobPriority(
        PRIORITY, "RequestedProcedurePriority HIGH"
    )
    assert policy.job_priority(_header(RequestedProcedurePriority="ROUTINE")) == JobPriority(ROUTINE, None)
    in_request = _header(
        RequestAttributesSequence=Sequence(
            [_header(RequestedProcedureID="1"), _header(RequestedProcedurePriority="STAT")]
        )
    )
    assert policy.job_priority(in_request) == JobPriority(URGENT, "RequestedProcedurePriority STAT")
    # Configured values, not only the defaults.
    custom = PriorityPolicy(urgent_procedure_priorities=["ASAP"], high_procedure_priorities=[])
    assert custom.job_priority(_header(RequestedProcedurePriority="ASAP")).level == URGENT
    assert custom.job_priority(_header(RequestedProcedurePriority="HIGH")).level == ROUTINE


def test_patient_location_regexes() -> None:
    policy = _default_policy()
    for location in ("ED", "ED BAY 3", "Emergency Department", "A&E"):
        assert policy.job_priority(_header(CurrentPatientLocation=location)) == JobPriority(
            URGENT, f"location {location}"
        ), location
    for location in ("MEDICAL WARD 4", "REDWOOD", ""):
        assert policy.job_priority(_header(CurrentPatientLocation=location)) == JobPriority(ROUTINE, None), location
    icu = PriorityPolicy(urgent_locations=["^ICU"])
    assert icu.job_priority(_header(CurrentPatientLocation="ICU 2")).level == URGENT
    assert icu.job_priority(_header(CurrentPatientLocation="ED")).level == ROUTINE


def test_the_most_urgent_reason_wins_and_ties_name_the_first() -> None:
    policy = _default_policy()
    stat = _header(RequestedProcedurePriority="STAT", CurrentPatientLocation="ED")
    # A routine rule never makes a STAT request routine.
    assert policy.job_priority(stat, rule="cxr", rule_priority=ROUTINE) == JobPriority(
        URGENT, "RequestedProcedurePriority STAT"
    )
    assert policy.job_priority(stat, rule="ctpa", rule_priority=URGENT) == JobPriority(URGENT, "rule ctpa")
    high = _header(RequestedProcedurePriority="HIGH")
    assert policy.job_priority(high, rule="cxr", rule_priority=ROUTINE) == JobPriority(
        PRIORITY, "RequestedProcedurePriority HIGH"
    )
    assert policy.job_priority(high, triaged_urgent=True) == JobPriority(URGENT, TRIAGED_URGENT)
    assert policy.job_priority(_header(), triaged_urgent=True) == JobPriority(URGENT, TRIAGED_URGENT)


def test_a_long_location_is_cut_to_the_reason_column() -> None:
    reason = _default_policy().job_priority(_header(CurrentPatientLocation="ED " + "X" * 60)).reason
    assert reason is not None and reason.startswith("location ED XXX") and len(reason) <= 128


def test_the_receiver_records_what_the_priority_is_computed_from() -> None:
    assert routing_tags(parse_routing(RULES)) >= PRIORITY_TAGS
    assert {0x00401003, 0x00400275, 0x00380300} == set(PRIORITY_TAGS)


def test_promotion_starts_at_promote_after_exactly() -> None:
    created = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)
    assert is_promoted(created, created + timedelta(seconds=900), 900)
    assert not is_promoted(created, created + timedelta(seconds=900) - timedelta(microseconds=1), 900)
    assert broker_priority(ROUTINE, promoted=True) > broker_priority(URGENT, promoted=False)
    assert broker_priority(None, promoted=False) == broker_priority(ROUTINE, promoted=False)
    assert [level_name(p) for p in (URGENT, PRIORITY, ROUTINE, None)] == ["urgent", "priority", "routine", "routine"]


def test_a_bad_location_regex_or_promotion_time_stops_the_start_with_the_key(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text("priorities: {urgent_locations: ['(ED']}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    assert "priorities.urgent_locations" in str(info.value) and "invalid regular expression '(ED'" in str(info.value)
    config.write_text("priorities: {promote_after: 0}\n")
    with pytest.raises(ConfigError, match=r"priorities\.promote_after"):
        load_settings(config, environ={})
