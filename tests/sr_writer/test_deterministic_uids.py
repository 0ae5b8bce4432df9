"""UIDs derived from a job's seed (issue 17): the same job written again gives the same objects' UIDs.

Every writer (cxr SR, GSPS, SC; PE and lumbar SR, KOS, SEG, slice labels) is run over fixed
sources twice inside :func:`sr_writer.uids.deterministic_uids` with one seed, then with another
seed, then outside any scope. The UIDs compared are every UI value of each object, nested items
included, that lies under the configured root: those are the ones the writers make (the others
are the sources' and the standard's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest
from pydicom import Dataset

from core.findings import AlgorithmInfo
from sr_writer import (
    SeriesParams,
    build_key_object_selection,
    build_lumbar_report,
    build_measurement_report,
    build_pe_report,
    build_presentation_state,
    build_secondary_capture,
    build_slice_labels,
    build_tissue_segmentation,
    pe_labels,
)
from sr_writer.uids import MAX_ROOT_LENGTH, deterministic_uids, is_under_root, new_uid
from tests.helpers import rg1_uncr_path
from tests.sr_writer.scenarios import UID_ROOT, cxr_result, series
from tests.sr_writer.test_ct_objects import LEVELS, ct_series, headers, lumbar_result, pe_result

SEED: tuple[str | int, ...] = (41, "1.2.826.0.1.3680043.10.543.7.5.5", 1, "cxr", "analysis-key", "fingerprint")


def _made_uids(ds: Dataset, root: str = UID_ROOT) -> list[tuple[str, str]]:
    """``(path, uid)`` of every UI value under ``root`` in ``ds``, in the data set's order."""
    found: list[tuple[str, str]] = []

    def walk(item: Dataset, path: str) -> None:
        for element in item:
            if element.VR == "SQ":
                for index, child in enumerate(element.value):
                    walk(child, f"{path}{element.keyword}[{index}].")
            elif element.VR == "UI" and element.value:
                values = element.value if element.VM > 1 else [element.value]
                found.extend([(path + element.keyword, str(v)) for v in values if str(v).startswith(root + ".")])

    walk(ds, "")
    return found


@pytest.fixture(scope="module")
def writers() -> dict[str, Callable[[], Dataset]]:
    """Each object the node writes, built over the same fixed sources every time it is called."""
    import pydicom

    radiograph = pydicom.dcmread(rg1_uncr_path())
    header = pydicom.dcmread(rg1_uncr_path(), stop_before_pixels=True)
    pe_slices = ct_series(8)
    lumbar_slices = ct_series(len(LEVELS))
    yy, xx = np.mgrid[:64, :64]
    masks = {"muscle": yy > 40, "subcutaneous_fat": yy < 8, "visceral_fat": (xx < 6) & (yy > 10)}
    lumbar_labels = {str(s.SOPInstanceUID): level for s, level in zip(lumbar_slices, LEVELS, strict=True)}
    pe = pe_result(pe_slices)
    assert pe.pe is not None
    labels = pe_labels(pe.pe)
    seg_model = AlgorithmInfo(name="ct-lumbar", version="demo-1", demo=True)
    return {
        "SR": lambda: build_measurement_report(cxr_result(header), [header], params=series(990)),
        "GSPS": lambda: build_presentation_state(cxr_result(header), [header], params=series(991)),
        "SC": lambda: build_secondary_capture(cxr_result(radiograph), radiograph, params=series(992)),
        "PE SR": lambda: build_pe_report(pe, headers(pe_slices), params=series(993)),
        "lumbar SR": lambda: build_lumbar_report(
            lumbar_result(lumbar_slices), headers(lumbar_slices), params=series(994)
        ),
        "KOS": lambda: build_key_object_selection(
            pe,
            headers(pe_slices),
            [str(pe_slices[4].SOPInstanceUID)],
            title="of_interest",
            params=series(995),
            description="Slices with pulmonary embolism",
        ),
        "SEG": lambda: build_tissue_segmentation(pe_slices[1], masks, seg_model, params=series(996)),
        "slice labels": lambda: build_slice_labels(
            lumbar_result(lumbar_slices), headers(lumbar_slices), lumbar_labels, params=series(997)
        ),
        "PE labels": lambda: build_slice_labels(pe, headers(pe_slices), labels, params=series(998)),
    }


def _all(writers: dict[str, Callable[[], Dataset]]) -> dict[str, list[tuple[str, str]]]:
    return {kind: _made_uids(build()) for kind, build in writers.items()}


def test_the_same_seed_gives_the_same_uids_in_every_object(writers: dict[str, Callable[[], Dataset]]) -> None:
    with deterministic_uids(*SEED):
        first = _all(writers)
    with deterministic_uids(*SEED):
        again = _all(writers)
    assert again == first
    for kind, uids in first.items():
        paths = {path for path, _ in uids}
        # At least the object's own Series and SOP Instance UIDs are made by us; SEG's dimension
        # organisation too (highdicom would draw one at random under its own root).
        assert {"SeriesInstanceUID", "SOPInstanceUID"} <= paths, (kind, paths)
        for _, uid in uids:
            assert is_under_root(uid, UID_ROOT) and len(uid) <= 64, (kind, uid)
    assert "DimensionOrganizationSequence[0].DimensionOrganizationUID" in {p for p, _ in first["SEG"]}
    # Within one job, distinct objects never share a UID they made (the counter moves on).
    own = [uid for kind in first for path, uid in first[kind] if path in ("SeriesInstanceUID", "SOPInstanceUID")]
    assert len(own) == len(set(own))


@pytest.mark.parametrize("change", [0, 1, 2, 3, 4, 5])
def test_any_other_seed_gives_other_uids(writers: dict[str, Callable[[], Dataset]], change: int) -> None:
    other = list(SEED)
    part = other[change]
    other[change] = f"{part}0" if isinstance(part, str) else part + 1
    with deterministic_uids(*SEED):
        first = {uid for uids in _all(writers).values() for _, uid in uids}
    with deterministic_uids(*other):
        second = {uid for uids in _all(writers).values() for _, uid in uids}
    assert first and not first & second


def test_seed_parts_are_not_run_together() -> None:
    """("ab", "c") and ("a", "bc") are different seeds, though their characters are the same."""
    with deterministic_uids("ab", "c"):
        one = new_uid(UID_ROOT)
    with deterministic_uids("a", "bc"):
        two = new_uid(UID_ROOT)
    assert one != two


def test_outside_a_scope_uids_are_random(writers: dict[str, Callable[[], Dataset]]) -> None:
    first = {uid for uids in _all(writers).values() for _, uid in uids}
    second = {uid for uids in _all(writers).values() for _, uid in uids}
    assert first and not first & second


def test_the_scope_ends_with_its_block_even_on_an_error() -> None:
    with deterministic_uids(*SEED):
        inside = new_uid(UID_ROOT)
    with pytest.raises(RuntimeError), deterministic_uids(*SEED):
        assert new_uid(UID_ROOT) == inside
        raise RuntimeError("the job failed")
    assert new_uid(UID_ROOT) != inside  # random again, not the scope's second UID
    with deterministic_uids("outer"):
        outer = new_uid(UID_ROOT)
        with deterministic_uids(*SEED):
            assert new_uid(UID_ROOT) == inside  # the innermost scope counts, from its own start
        after = new_uid(UID_ROOT)
    with deterministic_uids("outer"):
        assert [new_uid(UID_ROOT), new_uid(UID_ROOT)] == [outer, after]  # the outer count went on


def test_longest_root_still_gives_valid_uids_in_a_scope() -> None:
    root = "1." + "2" * (MAX_ROOT_LENGTH - 2)
    with deterministic_uids(*SEED):
        uids = [new_uid(root) for _ in range(200)]
    assert len(set(uids)) == 200
    for uid in uids:
        assert len(uid) == 64 and is_under_root(uid, root), uid


def test_jobs_in_threads_each_get_their_own_sequence() -> None:
    """The local pool runs jobs in threads: each thread's scope is its own, whatever the interleaving."""
    seeds = [("job", n) for n in range(6)]
    expected = {}
    for seed in seeds:
        with deterministic_uids(*seed):
            expected[seed] = [new_uid(UID_ROOT) for _ in range(50)]
    got: dict[tuple[str, int], list[str]] = {}
    start = threading.Barrier(len(seeds))

    def job(seed: tuple[str, int]) -> None:
        with deterministic_uids(*seed):
            start.wait()
            got[seed] = [new_uid(UID_ROOT) for _ in range(50)]

    threads = [threading.Thread(target=job, args=(seed,)) for seed in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == expected
    assert new_uid(UID_ROOT) not in {uid for uids in expected.values() for uid in uids}  # this thread: random


def test_a_bad_root_is_refused_inside_a_scope_too() -> None:
    with deterministic_uids(*SEED), pytest.raises(ValueError, match="UID root"):
        new_uid("1.02.3")
    with pytest.raises(ValueError, match="UID root"):
        SeriesParams(uid_root="1..2", series_number=990)
