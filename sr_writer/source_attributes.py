"""Patient, study and series attributes copied from a source image into a result, checked against their VR.

Real vendor files carry values their VR does not allow: a Patient's Age ``62``
instead of ``062Y``, a Study Date ``2020-01-02``, a name with Latin-1 letters
and no Specific Character Set, a 70-character Study Description in an LO.
highdicom copies the Patient, Clinical Trial Subject, General Study, Patient
Study and Clinical Trial Study modules (and the Specimen module of a
presentation state or segmentation) from the source as they are, so every
result object would repeat the error and fail ``dciodvfy``.

:func:`clean_source` returns a copy of the source in which every attribute a
writer copies is valid (PS3.5 6.2: format, length, character repertoire of the
Specific Character Set, Value Multiplicity of the data dictionary; PS3.3
enumerated values of the few coded strings copied). A value is

- corrected where the standard says how to read it: an Age String without
  unit or zero padding (``62`` -> ``062Y``), a date or time in the ACR-NEMA
  form (``2020.01.02`` -> ``20200102``, ``12:30:00`` -> ``123000``), padding
  spaces of coded strings and numbers;
- otherwise dropped: a Type 2 attribute becomes empty, any other absent; a
  sequence with an invalid value in one of its items is dropped whole.

Each drop or correction is a :class:`SourceAttributeIssue` naming the
attribute and the reason, never the value (values are patient data). The
writers record them on the objects they return; :func:`source_attribute_issues`
reads them back and :func:`describe_issues` words them for a job summary.
"""

from __future__ import annotations

import copy
import datetime
import functools
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydicom import Dataset
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from sr_writer.errors import InvalidSourceValue

__all__ = [
    "SourceAttributeIssue",
    "TYPE2_COPIED",
    "clean_source",
    "copied_attributes",
    "describe_issues",
    "probability_text",
    "record_issues",
    "significant",
    "source_attribute_issues",
]

# Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1) that highdicom
# reads from the first source; real files sometimes omit them, and a result may carry them empty.
TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)

# The result must be in the source's study whatever its UID looks like; the writers check it themselves.
_NEVER_TOUCHED = frozenset({"StudyInstanceUID", "SpecificCharacterSet"})

# Python attribute (not a DICOM element: pydicom keeps lower-case names as plain attributes) holding
# the issues on a cleaned source and on a result object.
_ISSUES = "_ainode_source_issues"

#: Maximum length in characters per value (PS3.5 Table 6.2-1); PN is per component group.
_MAX_LENGTH: dict[str, int] = {
    "AE": 16,
    "AS": 4,
    "CS": 16,
    "DA": 8,
    "DS": 16,
    "DT": 26,
    "IS": 12,
    "LO": 64,
    "LT": 10240,
    "PN": 64,
    "SH": 16,
    "ST": 1024,
    "TM": 14,
    "UI": 64,
    "UC": 2**32 - 2,
    "UT": 2**32 - 2,
    "UR": 2**32 - 2,
}
#: Text VRs that may hold line breaks and tabs (PS3.5 6.1.3); the others allow ESC only.
_FORMATTED_TEXT = frozenset({"LT", "ST", "UT"})
_STRING_VRS = frozenset(_MAX_LENGTH)
#: VRs whose value is in the Specific Character Set (PS3.5 6.1.2.3); the others are in the default repertoire.
_DECLARED_TEXT = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})

#: Enumerated values (PS3.3) of the coded strings the writers copy.
_ENUMERATED: dict[str, frozenset[str]] = {
    "PatientSex": frozenset({"M", "F", "O"}),
    "Laterality": frozenset({"R", "L"}),
    "PatientSexNeutered": frozenset({"ALTERED", "UNALTERED"}),
    "PatientIdentityRemoved": frozenset({"YES", "NO"}),
    "QualityControlSubject": frozenset({"YES", "NO"}),
    "SmokingStatus": frozenset({"YES", "NO", "UNKNOWN"}),
}

#: Specific Character Set values a result can keep as they are (single-byte or single-valued; highdicom
#: accepts them); a source in ISO 2022 code extensions gets its text decoded and the result in UTF-8.
_KEPT_CHARSETS = frozenset(
    {
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 144",
        "ISO_IR 127",
        "ISO_IR 126",
        "ISO_IR 138",
        "ISO_IR 148",
        "ISO_IR 203",
        "ISO_IR 13",
        "ISO_IR 166",
        "ISO_IR 192",
        "GB18030",
        "GBK",
    }
)
_UTF8 = "ISO_IR 192"

_AS = re.compile(r"\d{3}[DWMY]")
_AS_LOOSE = re.compile(r"(\d{1,3}) ?([DWMYdwmy]?)")
_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_DA_ACR_NEMA = re.compile(r"(\d{4})\.(\d{2})\.(\d{2})")
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,6})?)?)?")
_TM_ACR_NEMA = re.compile(r"(\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?")
_DT = re.compile(r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?")
_CS = re.compile(r"[A-Z0-9 _]*")
_DS = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_IS = re.compile(r"[+-]?\d+")
_UI = re.compile(r"(0|[1-9]\d*)(\.(0|[1-9]\d*))*")


@dataclass(frozen=True)
class SourceAttributeIssue:
    """One attribute of a source that a result does not carry as it was.

    Attributes
    ----------
    keyword : str
        The attribute's keyword, e.g. ``"PatientAge"``; ``"Seq > Inner"`` for a
        correction inside a sequence item.
    reason : str
        Why, without the value: ``"invalid AS"``, ``"longer than 64 bytes (LO)"``.
    corrected : bool
        True when the value was corrected (and kept), False when it was dropped.
    """

    keyword: str
    reason: str
    corrected: bool = False

    def __str__(self) -> str:
        return f"{self.keyword} ({self.reason})"


def copied_attributes(source: Dataset) -> dict[str, str]:
    """Keywords of the root attributes a writer copies from ``source``, with their PS3.3 Type.

    These are the attributes highdicom copies: those of the Patient and Study information
    entities (and of the Specimen module) of the source's IOD, plus :data:`TYPE2_COPIED`.
    """
    return dict(_copied_attributes(str(source.get("SOPClassUID", ""))))


@functools.lru_cache(maxsize=64)
def _copied_attributes(sop_class_uid: str) -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {keyword: "2" for keyword in TYPE2_COPIED}
    try:
        from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map

        iod = get_sop_class_iod_map()[sop_class_uid]
        attributes = get_module_attribute_map()
        for module in get_iod_module_map()[iod]:
            if module["ie"] in ("Patient", "Study") or module["key"] == "specimen":
                for item in attributes[module["key"]]:
                    if not item["path"]:
                        found.setdefault(str(item["keyword"]), str(item["type"]))
    except (ImportError, KeyError):
        pass  # an IOD highdicom does not know: it refuses the source itself; the Type 2 ones still apply
    return tuple(found.items())


def clean_source(
    source: Dataset, extra: Mapping[str, str] | None = None, *, patient_study: bool = True
) -> tuple[Dataset, list[SourceAttributeIssue]]:
    """A copy of ``source`` whose attributes copied into results are valid for their VR.

    Parameters
    ----------
    source : pydicom.Dataset
        A source image's header; it is not changed.
    extra : mapping of str to str, optional
        Further keywords the caller copies itself, with their Type in the result
        (e.g. ``{"Laterality": "2"}`` for a presentation state).
    patient_study : bool
        Check the patient and study attributes (:func:`copied_attributes`) and
        the Specific Character Set too: what a writer copies from its first
        source. False checks ``extra`` only (what it copies from every other
        source, e.g. each slice's window explanation), and returns ``source``
        itself, not a copy, when that is valid.

    Returns
    -------
    tuple of pydicom.Dataset and list of SourceAttributeIssue
        The copy (missing :data:`TYPE2_COPIED` attributes added empty), and what
        was dropped or corrected, also recorded on the copy
        (:func:`source_attribute_issues`). Cleaning a cleaned copy again keeps
        its earlier issues.
    """
    issues = list(source_attribute_issues(source))
    targets = copied_attributes(source) if patient_study else {}
    targets.update(extra or {})
    charset, charset_issue = _charset(source)
    if not patient_study:
        charset_issue = None  # the first source's is the one a result copies
        if _all_valid(source, targets, charset):
            return source, issues
    cleaned = copy.deepcopy(source)  # a header without pixels: small
    if charset_issue is not None:
        issues.append(charset_issue)
    with warnings.catch_warnings():
        # pydicom's warnings about invalid values quote the value: patient data must not reach a log.
        warnings.simplefilter("ignore")
        if charset.convert:
            cleaned.decode()
        for keyword, kind in targets.items():
            if keyword in _NEVER_TOUCHED:
                continue
            tag = tag_for_keyword(keyword)
            if tag is None:
                continue
            if tag not in cleaned:
                if keyword in TYPE2_COPIED and patient_study:
                    setattr(cleaned, keyword, "")
                continue
            undecodable = _undecodable(cleaned.get_item(tag), charset)
            if undecodable is not None:
                issues.append(SourceAttributeIssue(keyword, undecodable))
                _drop(cleaned, tag, keyword, kind)
                continue
            try:
                element = cleaned[tag]
            except (ValueError, TypeError, OverflowError, KeyError):  # pydicom cannot even convert it
                issues.append(SourceAttributeIssue(keyword, f"invalid {dictionary_VR(tag)}"))
                _drop(cleaned, tag, keyword, kind)
                continue
            try:
                value, corrections = _checked_element(keyword, element.VR, element.value, charset, path=keyword)
            except InvalidSourceValue as exc:
                issues.append(SourceAttributeIssue(keyword, str(exc)))
                _drop(cleaned, tag, keyword, kind)
                continue
            if corrections:
                element.value = value
                issues.extend(corrections)
    if not patient_study:
        pass  # a result takes its character set from the first source only
    elif charset.convert:
        cleaned.SpecificCharacterSet = _UTF8
    elif charset.codec is None and "SpecificCharacterSet" in cleaned:
        # Unknown, or the default repertoire said explicitly ("ISO_IR 6", which highdicom refuses): absent
        # means the same for the ASCII text that is left.
        del cleaned.SpecificCharacterSet
    setattr(cleaned, _ISSUES, tuple(issues))
    return cleaned, issues


def _all_valid(source: Dataset, targets: Mapping[str, str], charset: _Charset) -> bool:
    """Whether every non-sequence attribute of ``targets`` in ``source`` is valid as it is (nothing to copy)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword in targets:
            tag = tag_for_keyword(keyword)
            if tag is None or tag not in source:
                continue
            if dictionary_VR(tag) == "SQ" or _undecodable(source.get_item(tag), charset) is not None:
                return False
            try:
                element = source[tag]
                if _checked_element(keyword, element.VR, element.value, charset, path=keyword)[1]:
                    return False
            except (InvalidSourceValue, ValueError, TypeError, OverflowError, KeyError):
                return False
    return True


def source_attribute_issues(dataset: Dataset) -> list[SourceAttributeIssue]:
    """What was dropped or corrected: on a cleaned source (:func:`clean_source`) or a result object of ours."""
    return list(getattr(dataset, _ISSUES, ()))


def record_issues(dataset: Dataset, sources: Iterable[Dataset]) -> None:
    """Record on a result object the issues of the cleaned sources it was made from (each once)."""
    issues = source_attribute_issues(dataset)
    for source in sources:
        issues.extend(i for i in source_attribute_issues(source) if i not in issues)
    setattr(dataset, _ISSUES, tuple(issues))


def describe_issues(issues: Sequence[SourceAttributeIssue]) -> str:
    """Words for a job summary: "source attributes dropped: PatientAge (invalid AS); corrected: ..." ("" if none)."""
    unique = list(dict.fromkeys(issues))
    dropped = [str(i) for i in unique if not i.corrected]
    corrected = [str(i) for i in unique if i.corrected]
    parts = []
    if dropped:
        parts.append("source attributes dropped: " + ", ".join(dropped))
    if corrected:
        parts.append("source attributes corrected: " + ", ".join(corrected))
    return "; ".join(parts)


def significant(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits (a NUM's value as a reader should see it)."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(f"{value:.{digits}g}")


def probability_text(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, in plain decimals: 0.8712 -> "0.871", 0.00001 -> "0.0000100"."""
    if value == 0 or not math.isfinite(value):
        return f"{value:.{max(digits - 1, 0)}f}" if value == 0 else str(value)
    return format(Decimal(f"{value:#.{digits}g}"), "f")


# --- Checking ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Charset:
    """How the result will encode copied text: ``codec`` None for the default repertoire (ASCII)."""

    codec: str | None
    convert: bool = False  # the result is written in UTF-8 (ISO 2022 code extensions in the source)


def _charset(source: Dataset) -> tuple[_Charset, SourceAttributeIssue | None]:
    raw = source.get("SpecificCharacterSet")
    values = [] if raw is None else [raw] if isinstance(raw, str) else [str(v) for v in raw]
    values = [v.strip() for v in values]
    if not any(values) or values == ["ISO_IR 6"]:
        return _Charset(None), None
    if len(values) == 1 and values[0] in _KEPT_CHARSETS:
        return _Charset(python_encoding[values[0]]), None
    if all(v in python_encoding for v in values if v):
        return _Charset("utf-8", convert=True), None
    # pydicom reads such a file in the default repertoire: only ASCII text can be trusted.
    return _Charset(None), SourceAttributeIssue("SpecificCharacterSet", "unknown character set")


def _undecodable(element: Any, charset: _Charset) -> str | None:
    """Why the raw bytes of a text element are not text in the declared character set, or None.

    pydicom decodes such bytes with a fallback codec rather than failing, so the check is made
    on the bytes as read.
    """
    if not isinstance(element, RawDataElement) or not isinstance(element.value, bytes):
        return None
    if element.VR not in _DECLARED_TEXT or charset.codec is None or charset.convert:
        return None
    try:
        element.value.decode(charset.codec)
    except (UnicodeDecodeError, LookupError):
        return f"bytes not valid in the character set ({element.VR})"
    return None


def _drop(dataset: Dataset, tag: Any, keyword: str, kind: str) -> None:
    """Type 2 (and 2C, whose condition the source met) becomes empty; anything else absent."""
    del dataset[tag]
    if kind in ("2", "2C"):
        setattr(dataset, keyword, None if dictionary_VR(tag) == "SQ" else "")


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return list(value)
    if isinstance(value, (str, bytes)) and not value:
        return []
    return [value]


def _checked_element(
    keyword: str, vr: str, value: Any, charset: _Charset, path: str
) -> tuple[Any, list[SourceAttributeIssue]]:
    """The element's value, corrected where allowed, and the corrections; raises :class:`InvalidSourceValue`."""
    if vr == "SQ":
        return value, _checked_sequence(value, charset, path)
    values = _values(value)
    if not values:
        return value, []
    vm = dictionary_VM(keyword) if keyword and tag_for_keyword(keyword) is not None else "1-n"
    if not _vm_allows(vm, len(values)):
        raise InvalidSourceValue(f"{len(values)} values, VM {vm}")
    if vr in _NUMBER_VRS or vr not in _STRING_VRS:
        return value, []
    fixed: list[str] = []
    reasons: list[str] = []
    for item in values:
        text = str(item)
        new, reason = _checked_text(keyword, vr, text, charset)
        fixed.append(new)
        if reason:
            reasons.append(reason)
    if not reasons:
        return value, []
    corrected: Any = fixed[0] if len(fixed) == 1 else fixed
    issues = [SourceAttributeIssue(path, reason, corrected=True) for reason in dict.fromkeys(reasons)]
    return corrected, issues


def _checked_sequence(items: Any, charset: _Charset, path: str) -> list[SourceAttributeIssue]:
    """Check every element of every item; a correction is made in place, an invalid value drops the sequence."""
    issues: list[SourceAttributeIssue] = []
    for item in items if isinstance(items, (DicomSequence, list)) else []:
        for tag in list(item.keys()):
            inner = keyword_for_tag(tag) or str(tag)
            if tag.is_private:
                continue
            try:
                element = item[tag]
            except (ValueError, TypeError, OverflowError, KeyError):  # pydicom cannot even convert it
                raise InvalidSourceValue(
                    f"invalid {inner} in an item: invalid {dictionary_VR(tag) if inner else 'value'}"
                ) from None
            try:
                value, corrections = _checked_element(
                    keyword_for_tag(element.tag), element.VR, element.value, charset, f"{path} > {inner}"
                )
            except InvalidSourceValue as exc:
                raise InvalidSourceValue(f"invalid {inner} in an item: {exc}") from None
            if corrections:
                element.value = value
                issues.extend(corrections)
    return issues


def _vm_allows(vm: str, count: int) -> bool:
    """Whether ``count`` values fit the data dictionary's VM (``"1"``, ``"1-n"``, ``"2-2n"``, ``"1-3"``)."""
    try:
        if "-" not in vm:
            return count == int(vm)
        low, high = vm.split("-", 1)
        if high == "n":
            return count >= int(low)
        if high.endswith("n"):
            return count >= int(low) and count % int(high[:-1]) == 0
        return int(low) <= count <= int(high)
    except ValueError:
        return True  # a VM the dictionary words otherwise ("1-n or 1"): not ours to judge


def _checked_text(keyword: str, vr: str, text: str, charset: _Charset) -> tuple[str, str | None]:
    """One value of a string VR: (the value to write, the correction's reason or None)."""
    if vr == "AS":
        return _age(text.rstrip(" "))
    if vr == "DA":
        return _date(text.rstrip(" "))
    if vr == "TM":
        return _time(text.rstrip(" "))
    if vr == "DT":
        value = text.rstrip(" ")
        _datetime(value)
        return value, None
    if vr in ("CS", "DS", "IS", "AE", "UI"):
        value = text.strip(" \0")
        _length(vr, value, charset)
        if vr == "CS" and not _CS.fullmatch(value):
            raise InvalidSourceValue("invalid CS")
        if vr == "CS" and keyword in _ENUMERATED and value not in _ENUMERATED[keyword]:
            raise InvalidSourceValue("not an enumerated value (CS)")
        if vr == "DS" and not (_DS.fullmatch(value) and math.isfinite(float(value))):
            raise InvalidSourceValue("invalid DS")
        if vr == "IS" and not (_IS.fullmatch(value) and -(2**31) <= int(value) < 2**31):
            raise InvalidSourceValue("invalid IS")
        if vr == "UI" and not _UI.fullmatch(value):
            raise InvalidSourceValue("invalid UI")
        if vr == "AE":
            _repertoire(value, vr, _Charset(None))
        return value, None
    if vr == "PN":
        groups = text.split("=")
        if len(groups) > 3:
            raise InvalidSourceValue("more than 3 component groups (PN)")
        for group in groups:
            _length(vr, group, charset)
            if group.count("^") > 4:
                raise InvalidSourceValue("more than 5 components (PN)")
        _repertoire(text, vr, charset)
        return text, None
    _length(vr, text, charset)
    _repertoire(text, vr, charset)
    return text, None


def _length(vr: str, value: str, charset: _Charset) -> None:
    """At most the VR's maximum (per PN component group), counted in bytes as the result encodes the value.

    PS3.5 6.2 counts characters, which a multi-byte character set makes ambiguous; dciodvfy counts
    bytes, and a value that fits in bytes fits in characters too.
    """
    size = len(value.encode(charset.codec or "ascii", errors="replace")) if not value.isascii() else len(value)
    if size > _MAX_LENGTH[vr]:
        raise InvalidSourceValue(f"longer than {_MAX_LENGTH[vr]} bytes ({vr})")


def _repertoire(text: str, vr: str, charset: _Charset) -> None:
    """No control character but those the VR allows; every character in the result's character set."""
    allowed = "\x1b\r\n\f\t" if vr in _FORMATTED_TEXT else "\x1b"
    for ch in text:
        point = ord(ch)
        if (point < 0x20 or 0x7F <= point <= 0x9F) and ch not in allowed:
            raise InvalidSourceValue(f"control characters ({vr})")
        if ch == "\ufffd":
            raise InvalidSourceValue(f"bytes not valid in the character set ({vr})")
    if charset.codec is None:
        if any(ord(ch) > 0x7E for ch in text):
            raise InvalidSourceValue(f"characters outside the default character repertoire ({vr})")
        return
    try:
        text.encode(charset.codec)
    except (UnicodeEncodeError, LookupError):
        raise InvalidSourceValue(f"characters outside the character set ({vr})") from None


def _age(value: str) -> tuple[str, str | None]:
    if _AS.fullmatch(value):
        return value, None
    match = _AS_LOOSE.fullmatch(value)
    if match is None:
        raise InvalidSourceValue("invalid AS")
    unit = match.group(2).upper()
    reason = "AS without unit, read as years" if not unit else "AS not in the nnnU form"
    return f"{int(match.group(1)):03d}{unit or 'Y'}", reason


def _date(value: str) -> tuple[str, str | None]:
    match = _DA.fullmatch(value)
    reason = None
    if match is None:
        match = _DA_ACR_NEMA.fullmatch(value)
        reason = "ACR-NEMA DA form"
    if match is None:
        raise InvalidSourceValue("invalid DA")
    year, month, day = (int(g) for g in match.groups())
    try:
        datetime.date(year, month, day)
    except ValueError:
        raise InvalidSourceValue("invalid DA") from None
    return f"{year:04d}{month:02d}{day:02d}", reason


def _time(value: str) -> tuple[str, str | None]:
    match = _TM.fullmatch(value)
    reason = None
    if match is None:
        match = _TM_ACR_NEMA.fullmatch(value)
        reason = "ACR-NEMA TM form"
    if match is None:
        raise InvalidSourceValue("invalid TM")
    hours, minutes, seconds, fraction = match.groups()
    if int(hours) > 23 or (minutes and int(minutes) > 59) or (seconds and int(seconds) > 60):
        raise InvalidSourceValue("invalid TM")
    return "".join(g or "" for g in (hours, minutes, seconds, fraction)), reason


def _datetime(value: str) -> None:
    match = _DT.fullmatch(value)
    if match is None or len(value) > _MAX_LENGTH["DT"]:
        raise InvalidSourceValue("invalid DT")
    year, month, day, hours, minutes, seconds, _fraction, offset = match.groups()
    try:
        datetime.date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        raise InvalidSourceValue("invalid DT") from None
    if (hours and int(hours) > 23) or (minutes and int(minutes) > 59) or (seconds and int(seconds) > 60):
        raise InvalidSourceValue("invalid DT")
    if offset and (int(offset[1:3]) > 14 or int(offset[3:]) > 59):
        raise InvalidSourceValue("invalid DT")
