"""The body-composition SEG's display colours (issue 18): each segment says how a viewer draws it.

Without a Recommended Display CIELab Value OHIF v3 opens the segmentation with a warning and colours of its
own choice; tests/viewer checks what OHIF draws, this test what the SEG holds. Validity (dciodvfy) is
tests/sr_writer/test_ct_objects.py's.
"""

from __future__ import annotations

import numpy as np
from highdicom.color import CIELabColor

from core.findings import AlgorithmInfo
from sr_writer import build_tissue_segmentation
from sr_writer.seg import COLOURS, TISSUES
from tests.sr_writer.scenarios import series
from tests.sr_writer.test_ct_objects import ct_series


def test_each_segment_has_its_display_colour() -> None:
    source = ct_series(1)[0]
    masks = {key: np.zeros((64, 64), bool) for key in TISSUES}
    seg = build_tissue_segmentation(source, masks, AlgorithmInfo(name="ct-lumbar", version="1"), params=series(993))
    shown = {
        str(item.SegmentLabel): CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
        for item in seg.SegmentSequence
    }
    expected = {label: COLOURS[key] for key, (label, *_) in TISSUES.items()}
    assert shown == expected
    assert len(set(shown.values())) == len(shown)  # three tissues, three colours
