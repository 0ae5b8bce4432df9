"""What a user checks in the PACS after the scale-out tests: one SR for each study sent, no more."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pydicom

from tests.helpers import OrthancServer


def study_uids(files: Iterable[Path]) -> set[str]:
    """The Study Instance UIDs of DICOM files."""
    return {str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}


def assert_one_sr_per_study(orthanc: OrthancServer, studies: set[str], timeout: float = 60) -> None:
    """Orthanc holds exactly one SR in each of ``studies`` (waits for them to arrive)."""
    orthanc.wait_for_instances(
        lambda i: i.study_instance_uid in studies, modality="SR", count=len(studies), timeout=timeout
    )
    counts = Counter(
        i.study_instance_uid for i in orthanc.instances() if i.modality == "SR" and i.study_instance_uid in studies
    )
    missing = studies - set(counts)
    twice = {uid: n for uid, n in counts.items() if n != 1}
    assert not missing and not twice, f"studies without an SR: {sorted(missing)}; with more than one: {twice}"
