"""The README's Orthanc recipe, as written: results exactly once per study, whatever Orthanc re-sends.

The Orthanc configuration block and the Lua script are read out of README.md
("Adding the node to Orthanc"); the test changes only what must differ on a test
machine (the node's port, the script's path, Orthanc's own ports and folders) and,
to see three ``StableAge`` periods pass in seconds, the value of ``StableAge``.
DCMTK's ``storescu`` stores a real chest CR and an abdominal CT phantom into
Orthanc (no REST shortcut); Orthanc forwards them to a real node process
with the shipped models; the node sends its results back by C-STORE. Then 1,000
re-sends of the CT series go straight to the node.

Sites also forward on Orthanc's stable events, which re-send the whole study,
the node's results included, each time it becomes stable again: that looped
before re-sends were recognised, and is tested here too.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import func, select

from dimse.scu import store_files
from node.db import AuditEvent, AuditKind, Job, JobState, Result, Series, SeriesState
from tests.helpers import OrthancServer, free_port
from tests.integration.nodeproc import REPO, NodeProcess
from training.phantoms.ct import abdomen_phantom

RESULT_MODALITIES = {"SR", "PR", "SEG", "KO", "OT"}
STABLE_AGE = 3  # seconds, so that three periods pass within the test


def readme_recipe() -> tuple[dict[str, Any], str]:
    """The JSON configuration and the Lua script of the README's Orthanc section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Adding the node to Orthanc", 1)[1].split("\n## ", 1)[0]
    config = re.search(r"```json\n(.*?)```", section, re.S)
    lua = re.search(r"```lua\n(.*?)```", section, re.S)
    assert config and lua, "the README's Orthanc section must hold a ```json and a ```lua block"
    return json.loads(config.group(1)), lua.group(1)


def test_the_readme_recipe_is_what_this_test_runs() -> None:
    config, lua = readme_recipe()
    assert config["DicomModalities"]["ainode"] == ["AINODE", "127.0.0.1", 11112]  # the node's defaults
    assert config["DicomAet"] == "ORTHANC" and len(config["LuaScripts"]) == 1
    assert "OnStoredInstance" in lua and "SendToModality(instanceId, 'ainode')" in lua
    assert "OnStable" not in lua  # stable events would add StableAge to every result and re-send studies


DEBIAN_CONFIG = Path("/etc/orthanc/orthanc.json")
#: Keys of Debian's configuration the test machine must change: ports, folders, plugins (the fixture sets them).
MACHINE_KEYS = {"HttpPort", "DicomPort", "StorageDirectory", "IndexDirectory", "Plugins"}


def debian_orthanc_config() -> dict[str, Any]:
    """Debian's ``/etc/orthanc/orthanc.json`` (comments removed), as the package installs it."""
    text = re.sub(r"/\*.*?\*/", "", DEBIAN_CONFIG.read_text(encoding="utf-8"), flags=re.S)
    config = json.loads(re.sub(r"(?m)^\s*//.*$", "", text))
    assert isinstance(config, dict)
    return {k: v for k, v in config.items() if k not in MACHINE_KEYS}


def _orthanc_from_readme(
    factory: Callable[..., OrthancServer], workdir: Path, node_port: int, base: dict[str, Any] | None = None
) -> OrthancServer:
    """Orthanc with the README's keys set (over ``base``, e.g. Debian's own configuration)."""
    config, lua = readme_recipe()
    config = {**(base or {}), **config}
    script = workdir / "ainode.lua"
    workdir.mkdir(parents=True, exist_ok=True)
    script.write_text(lua, encoding="utf-8")
    config["DicomModalities"]["ainode"][2] = node_port
    config["LuaScripts"] = [str(script)]
    config["StableAge"] = STABLE_AGE
    # The fixture's own settings accept stores from anyone, as Orthanc's defaults do; the README's win.
    return factory(modalities=config.pop("DicomModalities"), extra_config=config)


def _results(orthanc: OrthancServer, study_uid: str) -> Counter[str]:
    return Counter(
        i.modality for i in orthanc.instances() if i.study_instance_uid == study_uid and i.modality in RESULT_MODALITIES
    )


def _wait(condition: Callable[[], Any], timeout: float, what: str, node: NodeProcess, orthanc: OrthancServer) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}\n--- node ---\n{node.log()}\n--- Orthanc ---\n{orthanc.log_tail()}")
        time.sleep(0.3)


def _resent_instances(node: NodeProcess) -> int:
    """Instances the node recorded as re-sent unchanged (and did not analyse again)."""
    db = node.database()
    try:
        with db.session() as s:
            return int(
                s.scalar(
                    select(func.coalesce(func.sum(AuditEvent.instance_count), 0)).where(
                        AuditEvent.kind == AuditKind.RESENT
                    )
                )
                or 0
            )
    finally:
        db.dispose()


def _db_counts(node: NodeProcess) -> tuple[int, int, int, int]:
    """Jobs, results, re-sends recorded, and series the node received that are not source images."""
    db = node.database()
    try:
        with db.session() as s:
            return (
                s.scalar(select(func.count(Job.id))) or 0,
                s.scalar(select(func.count(Result.id))) or 0,
                s.scalar(select(func.count(AuditEvent.id)).where(AuditEvent.kind == AuditKind.RESENT)) or 0,
                s.scalar(select(func.count(Series.id)).where(Series.state == SeriesState.IGNORED)) or 0,
            )
    finally:
        db.dispose()


@pytest.mark.integration
def test_orthanc_configured_from_the_readme_sends_each_study_once(
    tmp_path: Path, orthanc_factory: Callable[..., OrthancServer], rg1_uncr: Path
) -> None:
    node_port = free_port()
    orthanc = _orthanc_from_readme(orthanc_factory, tmp_path / "orthanc", node_port)
    node = NodeProcess(
        tmp_path / "node",
        full_models=True,
        port=node_port,
        destinations={
            "pacs": {"type": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
        quiet_period={"default": 2.0, "CR": 0.5, "DX": 0.5},
    )
    node.start()
    try:
        ct = abdomen_phantom(603, slices=60, size=256, spacing_z=5.0).write_series(tmp_path / "ct")
        cr_study = str(pydicom.dcmread(rg1_uncr, stop_before_pixels=True).StudyInstanceUID)
        ct_study = str(pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID)
        started = time.monotonic()
        orthanc.store_with_storescu([rg1_uncr])
        orthanc.store_with_storescu(ct)

        cr_results = _wait(
            lambda: _results(orthanc, cr_study).get("SR") and _results(orthanc, cr_study),
            60,
            "no SR for the radiograph",
            node,
            orthanc,
        )
        cr_seconds = time.monotonic() - started
        ct_results = _wait(
            lambda: {"SR", "SEG"} <= set(_results(orthanc, ct_study)) and _results(orthanc, ct_study),
            120,
            "no SR and SEG for the abdominal CT",
            node,
            orthanc,
        )
        time.sleep(2)  # the last objects of the CT's results
        cr_results, ct_results = _results(orthanc, cr_study), _results(orthanc, ct_study)
        jobs, results, _, _ = _db_counts(node)
        assert jobs == 2, node.cli("jobs").stdout
        assert cr_results["SR"] == 1 and cr_results["PR"] == 1, cr_results
        assert ct_results["SR"] == 1 and ct_results["SEG"] == 1 and ct_results["KO"] == 1, ct_results
        assert sum(cr_results.values()) + sum(ct_results.values()) == results
        assert cr_seconds < 30, f"first result after {cr_seconds:.1f} s: StableAge must not delay it"

        # Three StableAge periods: Orthanc's stable events fire (the results changed both studies);
        # nothing more may arrive.
        time.sleep(3 * STABLE_AGE + 2)
        assert (_results(orthanc, cr_study), _results(orthanc, ct_study)) == (cr_results, ct_results)
        assert _db_counts(node)[:2] == (jobs, results)

        # The script never sent the node its own results: no series of them reached the node.
        assert _db_counts(node) == (jobs, results, 0, 0)

        # The modality sends both studies into Orthanc again; Orthanc forwards them again (each
        # stored instance fires OnStoredInstance): the node records two re-sends, nothing more.
        orthanc.store_with_storescu([rg1_uncr])
        orthanc.store_with_storescu(ct)
        _wait(lambda: _db_counts(node)[2] >= 2, 30, "the re-sends were not recorded", node, orthanc)
        time.sleep(3)
        assert (_results(orthanc, cr_study), _results(orthanc, ct_study)) == (cr_results, ct_results)
        assert _db_counts(node) == (jobs, results, 2, 0)

        # Orthanc sends each whole study to the node again, its results included (what a rule on
        # a stable event does): recorded as re-sends, nothing analysed, nothing sent back.
        for study in (cr_study, ct_study):
            answer = orthanc.forward_study(study, "ainode")
            assert answer.get("FailedInstancesCount", 0) == 0, answer
        _wait(lambda: _db_counts(node)[2] >= 4, 30, "the re-sends were not recorded", node, orthanc)
        time.sleep(3)
        assert (_results(orthanc, cr_study), _results(orthanc, ct_study)) == (cr_results, ct_results)
        counts = _db_counts(node)
        assert counts[:3] == (jobs, results, 4) and counts[3] >= 1  # the results came too, and were ignored
        # A thousand more re-sends of the CT series straight to the node, 20 instances per association.
        before = _resent_instances(node)
        for _ in range(50):
            outcomes = store_files(ct[:20], host="127.0.0.1", port=node.port, called_ae="AINODE", calling_ae="ORTHANC")
            assert all(o.succeeded for o in outcomes)
        _wait(
            lambda: _resent_instances(node) == before + 1000, 30, "the 1,000 re-sends were not recorded", node, orthanc
        )
        assert _db_counts(node)[:2] == (jobs, results)
        assert (_results(orthanc, cr_study), _results(orthanc, ct_study)) == (cr_results, ct_results)
        audit = node.cli("audit", "--kind", "resent")
        assert audit.returncode == 0 and "not analysed again" in audit.stdout, audit.stdout + audit.stderr
        db = node.database()
        try:
            with db.session() as s:
                assert all(j.state == JobState.DONE for j in s.scalars(select(Job)))
        finally:
            db.dispose()
    finally:
        node.stop()


# Scripts other sites use: each sends the whole study or series again whenever it becomes
# stable, which happens again after every result the node stores.
STABLE_SCRIPTS = {
    "OnStableStudy": "function OnStableStudy(studyId, tags, metadata)\n"
    "  RestApiPost('/modalities/ainode/store', studyId)\nend\n",
    "OnStableSeries": "function OnStableSeries(seriesId, tags, metadata)\n"
    "  RestApiPost('/modalities/ainode/store', seriesId)\nend\n",
}


@pytest.mark.integration
@pytest.mark.parametrize("event", sorted(STABLE_SCRIPTS))
def test_forwarding_on_stable_events_does_not_loop(
    tmp_path: Path, orthanc_factory: Callable[..., OrthancServer], rg1_uncr: Path, event: str
) -> None:
    node_port = free_port()
    script = tmp_path / "forward.lua"
    script.write_text(STABLE_SCRIPTS[event], encoding="utf-8")
    orthanc = orthanc_factory(
        modalities={"ainode": ["AINODE", "127.0.0.1", node_port]},
        extra_config={"LuaScripts": [str(script)], "StableAge": 2},
    )
    node = NodeProcess(
        tmp_path / "node",
        port=node_port,
        destinations={
            "pacs": {"type": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
    )
    node.start()
    try:
        orthanc.store_with_storescu([rg1_uncr])
        study = str(pydicom.dcmread(rg1_uncr, stop_before_pixels=True).StudyInstanceUID)
        _wait(lambda: _results(orthanc, study).get("SR"), 60, "no SR", node, orthanc)
        # The SR made the study and its own new series unstable; once stable again, Orthanc sends the
        # whole study (OnStableStudy: the radiograph is a re-send) or the SR's series (OnStableSeries).
        resent_or_own = 2 if event == "OnStableStudy" else 3
        _wait(lambda: _db_counts(node)[resent_or_own] >= 1, 30, "Orthanc sent nothing back", node, orthanc)
        time.sleep(4 * 2 + 2)  # four more StableAge periods
        assert _results(orthanc, study) == Counter({"SR": 1}), _results(orthanc, study)
        jobs, results, resent, ignored = _db_counts(node)
        assert (jobs, results) == (1, 1) and ignored >= 1  # its own SR came back and was not analysed
        assert resent >= (1 if event == "OnStableStudy" else 0)
    finally:
        node.stop()


@pytest.mark.integration
def test_the_quick_start_sample_sent_into_orthanc_comes_back_analysed(
    tmp_path: Path, orthanc_factory: Callable[..., OrthancServer]
) -> None:
    """The first hour: ``ainode sample cxr --send ORTHANC@…`` into Debian's Orthanc configured as the README says
    (its four keys set in ``/etc/orthanc/orthanc.json``), results back in Orthanc."""
    node_port = free_port()
    orthanc = _orthanc_from_readme(orthanc_factory, tmp_path / "orthanc", node_port, base=debian_orthanc_config())
    node = NodeProcess(
        tmp_path / "node",
        port=node_port,
        destinations={
            "pacs": {"type": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}
        },
    )
    node.start()
    try:
        started = time.monotonic()
        run = node.cli(
            "sample", "cxr", "--out", str(tmp_path / "sample"), "--send", f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
        )
        assert run.returncode == 0 and "as MODALITY" in run.stdout, run.stdout + run.stderr
        study = next(line.split()[1] for line in run.stdout.splitlines() if line.startswith("study "))
        _wait(lambda: _results(orthanc, study).get("SR"), 60, "no SR for the sample", node, orthanc)
        print(f"sample into Orthanc -> SR in Orthanc: {time.monotonic() - started:.1f} s")
    finally:
        node.stop()
