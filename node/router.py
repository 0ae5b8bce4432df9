"""Declarative series routing: which AI pipeline analyses a series.

The rules live in ``config/routing.yaml`` (data, never evaluated code), in the
spirit of mercure's routing rules and MONAI Deploy's series selector. A rule
names a pipeline, optional destinations and one condition tree::

    rules:
      - name: chest-radiograph        # unique; shown in logs and `ainode route`
        pipeline: cxr                 # or null: "matched, analyse nothing"
        destinations: []              # names from node.yaml; [] = node default
        enabled: true                 # false keeps a rule validated but unused
        priority: routine             # optional: urgent | priority | routine (node.priority)
        match:
          all:
            - {attribute: Modality, one_of: [CR, DX]}
            - any:
                - {attribute: BodyPartExamined, regex: "(?i)^(chest|thorax)"}
                - {attribute: StudyDescription, regex: "(?i)chest|thorax"}
            - not: {attribute: ImageType, equals: LOCALIZER}

Worked example: a CR image with Modality ``CR``, BodyPartExamined ``CHEST``
and ImageType ``DERIVED\\PRIMARY`` passes the ``one_of`` test, the first
``any`` branch, and the ``not`` (no ImageType value is ``LOCALIZER``), so the
series goes to ``cxr``. The same image with BodyPartExamined ``HAND`` and
StudyDescription ``HAND PA`` fails the ``any`` and goes to the next rule.

Semantics
---------
- Rules are tried top to bottom; the **first enabled rule that matches wins**.
  Nothing matched means the series is stored but not analysed.
- ``attribute`` is a DICOM keyword (PS3.6 data dictionary, e.g.
  ``BodyPartExamined``) or a tag written ``"0018,0015"``. Only top-level
  attributes of the dataset are tested.
- Conditions: ``equals`` (one value), ``one_of`` (list), ``regex`` (Python
  ``re.search``, so it matches anywhere unless anchored with ``^``/``$``; use
  ``(?i)`` for case-insensitive), ``range: {min, max}`` (numbers, inclusive,
  either bound optional) and ``present: true|false``. ``equals``/``one_of``
  compare text exactly (case-sensitive) after stripping DICOM padding; a
  number in the rule compares numerically (``equals: 1`` matches IS ``"01"``).
- Multi-valued attributes (VM > 1, e.g. ImageType ``ORIGINAL\\PRIMARY\\AXIAL``)
  match when **any one value** matches.
- A missing attribute, or one present with an empty value (type 2), fails every
  condition except ``present: false``. So ``not: {attribute: X, equals: Y}``
  is true when X is missing.
- A rule is evaluated on one instance of the series (its first); a condition
  about the whole series (e.g. number of slices) belongs to the pipeline.

Priority: a rule's optional ``priority`` (``urgent``, ``priority`` or ``routine``) is one of the
reasons of a job's priority (:mod:`node.priority`); the most urgent reason wins, so a rule never
makes a STAT request routine.

Loop prevention: result objects (SR, SEG, presentation states, KOS) and
anything written by this node are never routed, whatever the rules say; see
:func:`is_own_or_result_object`. ``sr_writer`` writes Manufacturer
:data:`OWN_MANUFACTURER` (``"ainode"``) on every object it creates.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydicom.datadict import dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

from core.identity import MANUFACTURER
from core.sop import is_result_object
from node.dicomheader import read_header
from node.errors import ConfigError, InputError
from node.priority import LEVELS, PRIORITY_TAGS

__all__ = [
    "OWN_MANUFACTURER",
    "AttributeCondition",
    "AllOf",
    "AnyOf",
    "NotCondition",
    "Condition",
    "ValueRange",
    "Rule",
    "RoutingConfig",
    "RouteDecision",
    "load_routing",
    "parse_routing",
    "check_references",
    "route",
    "is_own_or_result_object",
    "read_header",
    "routing_tags",
    "format_route_table",
]

#: Manufacturer (0008,0070) of every object this node writes (:data:`core.identity.MANUFACTURER`).
OWN_MANUFACTURER = MANUFACTURER

_RESULT_MODALITIES = frozenset({"SR", "SEG", "PR", "KO"})
# IHE "Processing Algorithm" purpose used in Contributing Equipment (IHE AIR).
_PURPOSE_PROCESSING = ("Newcode1", "99IHE")

_TAG_TEXT = re.compile(r"^\(?\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)?$")
_OPERATORS = ("equals", "one_of", "regex", "range", "present")
_COMBINATORS = ("all", "any", "not")

_EXAMPLES = {
    "rules": "rules:\n  - {name: chest-radiograph, pipeline: cxr, match: {attribute: Modality, one_of: [CR, DX]}}",
    "name": "name: chest-radiograph",
    "pipeline": "pipeline: cxr   (or pipeline: null to match and analyse nothing)",
    "destinations": "destinations: [pacs]   (or [] for the node's default destination)",
    "enabled": "enabled: false",
    "priority": "priority: urgent   (or priority, routine; omit it for the study's own priority)",
    "description": "description: Chest radiographs to the CXR pipeline",
    "match": "match: {attribute: Modality, one_of: [CR, DX]}",
    "attribute": 'attribute: BodyPartExamined   (a DICOM keyword, or a tag such as "0018,0015")',
    "equals": "equals: CHEST",
    "one_of": "one_of: [CR, DX]",
    "regex": 'regex: "(?i)^(chest|thorax)"',
    "range": "range: {min: 30, max: 2000}",
    "min": "range: {min: 30}",
    "max": "range: {max: 2000}",
    "present": "present: true",
    "all": "all: [{attribute: Modality, equals: CT}, {attribute: BodyPartExamined, equals: CHEST}]",
    "any": "any: [{attribute: Modality, equals: CR}, {attribute: Modality, equals: DX}]",
    "not": "not: {attribute: ImageType, equals: LOCALIZER}",
    "condition": "{attribute: Modality, one_of: [CR, DX]}   or   all: [...] / any: [...] / not: {...}",
}

Scalar = StrictStr | StrictInt | StrictFloat


class _ConditionSyntaxError(ValueError):
    """A condition is malformed; carries the dotted key and the example to show."""

    def __init__(self, key: str, message: str, example_key: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.detail = message
        self.example = _EXAMPLES.get(example_key, _EXAMPLES["condition"])


# --- condition models -----------------------------------------------------


class ValueRange(BaseModel):
    """Inclusive numeric bounds; either may be omitted but not both."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ValueRange:
        if self.min is None and self.max is None:
            raise ValueError("give at least one of min and max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g})")
        return self

    def contains(self, number: float) -> bool:
        return (self.min is None or number >= self.min) and (self.max is None or number <= self.max)


class AttributeCondition(BaseModel):
    """One test on one attribute; exactly one of the operator fields is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    attribute: StrictStr
    equals: Scalar | None = None
    one_of: tuple[Scalar, ...] | None = Field(default=None, min_length=1)
    regex: StrictStr | None = None
    range: ValueRange | None = None
    present: StrictBool | None = None
    _tag: BaseTag = PrivateAttr()
    _pattern: re.Pattern[str] | None = PrivateAttr(default=None)

    @field_validator("attribute")
    @classmethod
    def _known_attribute(cls, value: str) -> str:
        _parse_tag(value)
        return value

    @field_validator("regex")
    @classmethod
    def _compilable(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _one_operator(self) -> AttributeCondition:
        given = [op for op in _OPERATORS if getattr(self, op) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(
                f"a condition on {self.attribute} needs exactly one of {', '.join(_OPERATORS)} (found: {found})"
            )
        if given[0] != "present" and _is_sequence(_parse_tag(self.attribute)):
            raise ValueError(f"{self.attribute} is a sequence; only 'present: true|false' can test it")
        return self

    def model_post_init(self, context: Any) -> None:
        self._tag = _parse_tag(self.attribute)
        if self.regex is not None:
            self._pattern = re.compile(self.regex)

    def tags(self) -> set[int]:
        """The attribute this condition reads."""
        return {int(self._tag)}

    def matches(self, ds: Dataset) -> bool:
        values = _element_values(ds, self._tag)
        if self.present is not None:
            return (values is not None) == self.present
        if values is None:
            return False
        if self.equals is not None:
            return any(_same(value, self.equals) for value in values)
        if self.one_of is not None:
            return any(_same(value, wanted) for value in values for wanted in self.one_of)
        if self._pattern is not None:
            pattern = self._pattern
            return any(pattern.search(_text(value)) for value in values)
        if self.range is not None:
            bounds = self.range
            return any(n is not None and bounds.contains(n) for n in map(_number, values))
        return False  # unreachable: the validator requires one operator


class AllOf(BaseModel):
    """True when every sub-condition is true (an empty list is rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    all_: tuple[Condition, ...] = Field(alias="all", min_length=1)

    def tags(self) -> set[int]:
        return set().union(*(condition.tags() for condition in self.all_))

    def matches(self, ds: Dataset) -> bool:
        return all(condition.matches(ds) for condition in self.all_)


class AnyOf(BaseModel):
    """True when at least one sub-condition is true."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    any_: tuple[Condition, ...] = Field(alias="any", min_length=1)

    def tags(self) -> set[int]:
        return set().union(*(condition.tags() for condition in self.any_))

    def matches(self, ds: Dataset) -> bool:
        return any(condition.matches(ds) for condition in self.any_)


class NotCondition(BaseModel):
    """True when the sub-condition is false."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    not_: Condition = Field(alias="not")

    def tags(self) -> set[int]:
        return self.not_.tags()

    def matches(self, ds: Dataset) -> bool:
        return not self.not_.matches(ds)


Condition = AttributeCondition | AllOf | AnyOf | NotCondition
AllOf.model_rebuild()
AnyOf.model_rebuild()
NotCondition.model_rebuild()


def _parse_condition(raw: Any, key: str) -> Condition:
    """Build a condition tree from YAML data, naming the dotted key on error."""
    if isinstance(raw, (AttributeCondition, AllOf, AnyOf, NotCondition)):
        return raw
    if not isinstance(raw, dict):
        raise _ConditionSyntaxError(key, f"expected a condition mapping, got {_describe(raw)}", "condition")
    if "attribute" in raw:
        return _parse_attribute_condition(raw, key)
    kinds = [k for k in _COMBINATORS if k in raw]
    unknown = [str(k) for k in raw if k not in _COMBINATORS]
    if not kinds:
        hint = f" (unknown key {', '.join(map(repr, unknown))})" if unknown else ""
        raise _ConditionSyntaxError(key, f"a condition needs 'attribute' or one of all/any/not{hint}", "condition")
    if len(raw) != 1:
        extra = ", ".join(repr(str(k)) for k in raw if k != kinds[0])
        raise _ConditionSyntaxError(key, f"'{kinds[0]}' must stand alone in its mapping; also found {extra}", kinds[0])
    kind = kinds[0]
    body = raw[kind]
    if kind == "not":
        return NotCondition.model_validate({"not": _parse_condition(body, f"{key}.not")})
    if not isinstance(body, list) or not body:
        raise _ConditionSyntaxError(
            f"{key}.{kind}", f"expected a non-empty list of conditions, got {_describe(body)}", kind
        )
    children = tuple(_parse_condition(item, f"{key}.{kind}[{i}]") for i, item in enumerate(body))
    return AllOf.model_validate({"all": children}) if kind == "all" else AnyOf.model_validate({"any": children})


def _parse_attribute_condition(raw: dict[Any, Any], key: str) -> AttributeCondition:
    for field, value in raw.items():
        if field not in ("attribute", *_OPERATORS):
            raise _ConditionSyntaxError(
                f"{key}.{field}",
                f"unknown condition {field!r}; use one of {', '.join(_OPERATORS)}",
                "condition",
            )
        values = value if isinstance(value, list) else [value]
        if field in ("equals", "one_of") and any(isinstance(v, bool) for v in values):
            raise _ConditionSyntaxError(
                f"{key}.{field}",
                "YAML read an unquoted yes/no/on/off/true/false as a boolean; put the value in quotes",
                field,
            )
    try:
        return AttributeCondition.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(part) for part in err["loc"] if not isinstance(part, int)]
        subkey = ".".join([key, *loc]) if loc else key
        raise _ConditionSyntaxError(subkey, _clean_message(err["msg"]), loc[-1] if loc else "condition") from None


# --- rules ------------------------------------------------------------------


class Rule(BaseModel):
    """One routing rule: a name, a pipeline (or None) and a condition tree."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: StrictStr = Field(min_length=1)
    pipeline: Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")] | None
    destinations: tuple[StrictStr, ...] = ()
    enabled: StrictBool = True
    description: StrictStr = ""
    priority: Literal["urgent", "priority", "routine"] | None = None
    match: Condition

    @field_validator("match", mode="before")
    @classmethod
    def _build_match(cls, value: Any) -> Condition:
        return _parse_condition(value, "match")

    def matches(self, ds: Dataset) -> bool:
        return self.match.matches(ds)

    @property
    def level(self) -> int | None:
        """The rule's priority as a level of :mod:`node.priority`, ``None`` when it names none."""
        return None if self.priority is None else LEVELS[self.priority]


class RoutingConfig(BaseModel):
    """All routing rules, in priority order (first enabled match wins)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    rules: list[Rule]

    @model_validator(mode="after")
    def _unique_names(self) -> RoutingConfig:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice; names must be unique")
            seen.add(rule.name)
        return self


@dataclass(frozen=True)
class RouteDecision:
    """Where one series goes, and why (shown in logs and by ``ainode route``)."""

    pipeline: str | None
    rule: str | None
    destinations: tuple[str, ...]
    reason: str
    priority: int | None = None  # the matching rule's (node.priority level), None when it names none


def load_routing(path: Path) -> RoutingConfig:
    """Read and validate a routing rules file.

    Parameters
    ----------
    path : Path
        The YAML file, e.g. ``config/routing.yaml``.

    Returns
    -------
    RoutingConfig
        Validated rules; every regex is compiled and every attribute resolved
        against the PS3.6 data dictionary, so a bad rule fails at start-up.

    Raises
    ------
    ConfigError
        Unreadable file, invalid YAML, or an invalid rule. The message names
        the file, the rule (name and position), the key and a correct example.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read routing rules: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: routing rules are not UTF-8 text: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from exc
    return parse_routing(data, source=str(path))


def parse_routing(data: Any, *, source: str = "routing rules") -> RoutingConfig:
    """Validate already-parsed routing data (see :func:`load_routing`)."""
    if not isinstance(data, dict) or "rules" not in data:
        raise ConfigError(
            f"{source}: expected a mapping with a top-level 'rules' list, got {_describe(data)}.\n"
            f"  Example:\n{_EXAMPLES['rules']}"
        )
    try:
        return RoutingConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, data, exc)) from None


def check_references(config: RoutingConfig, *, pipelines: Collection[str], destinations: Collection[str]) -> None:
    """Check that enabled rules name only known pipelines and destinations.

    Raises
    ------
    ConfigError
        Naming the rule, the unknown name and the known ones.
    """
    problems = []
    for index, rule in enumerate(config.rules, start=1):
        if not rule.enabled:
            continue
        if rule.pipeline is not None and rule.pipeline not in pipelines:
            known = ", ".join(sorted(pipelines)) or "none"
            problems.append(
                f"rule {rule.name!r} (rule {index}), key pipeline: unknown pipeline "
                f"{rule.pipeline!r}; known pipelines: {known}"
            )
        for destination in rule.destinations:
            if destination not in destinations:
                known = ", ".join(sorted(destinations)) or "none"
                problems.append(
                    f"rule {rule.name!r} (rule {index}), key destinations: unknown destination "
                    f"{destination!r}; destinations defined in node.yaml: {known}"
                )
    if problems:
        raise ConfigError("routing rules refer to unknown names:\n  " + "\n  ".join(problems))


# --- routing ----------------------------------------------------------------

#: The attributes :func:`is_own_or_result_object` reads.
LOOP_PREVENTION_TAGS = frozenset(
    int(Tag(keyword)) for keyword in ("Modality", "SOPClassUID", "Manufacturer", "ContributingEquipmentSequence")
)


def routing_tags(config: RoutingConfig) -> frozenset[int]:
    """Every attribute :func:`route` can read of an instance: loop prevention's and every rule's, and
    what a job's priority is computed from (:data:`node.priority.PRIORITY_TAGS`).

    Disabled rules count too: one that would match is named in the reason. The receiver records these
    at receive (``Instance.header``) so that the assembler routes without reading the file again.
    """
    tags = set(LOOP_PREVENTION_TAGS) | PRIORITY_TAGS
    for rule in config.rules:
        tags |= rule.match.tags()
    return frozenset(tags)


def is_own_or_result_object(ds: Dataset) -> str | None:
    """Say why an object must never be routed (loop prevention), or ``None``.

    Never routed: Modality SR, SEG, PR or KO; any SR, KOS, presentation
    state or segmentation SOP class (PS3.4 Annex B.5); Manufacturer
    (0008,0070) equal to :data:`OWN_MANUFACTURER`; a Contributing Equipment
    Sequence (0018,A001) item with Purpose of Reference (Newcode1, 99IHE,
    "Processing Algorithm") and that Manufacturer.
    """
    modality = _text(ds.get("Modality", "") or "")
    if modality in _RESULT_MODALITIES:
        return f"result object not routed (loop prevention): Modality {modality}"
    sop_class = _text(ds.get("SOPClassUID", "") or "")
    if is_result_object(sop_class):
        name = UID(sop_class).name
        return f"result object not routed (loop prevention): SOP class {name}"
    if _is_own(ds.get("Manufacturer")):
        return f"own output not routed (loop prevention): Manufacturer is {OWN_MANUFACTURER!r}"
    for item in ds.get("ContributingEquipmentSequence", None) or []:
        purposes = item.get("PurposeOfReferenceCodeSequence", None) or []
        processing = any(
            (_text(code.get("CodeValue", "")), _text(code.get("CodingSchemeDesignator", ""))) == _PURPOSE_PROCESSING
            for code in purposes
        )
        if processing and _is_own(item.get("Manufacturer")):
            return (
                "own output not routed (loop prevention): Contributing Equipment "
                f"names {OWN_MANUFACTURER!r} as processing algorithm"
            )
    return None


def route(ds: Dataset, config: RoutingConfig) -> RouteDecision:
    """Decide the pipeline for the series ``ds`` belongs to.

    Parameters
    ----------
    ds : pydicom.Dataset
        One instance of the series (headers are enough).
    config : RoutingConfig
        Rules from :func:`load_routing`.

    Returns
    -------
    RouteDecision
        The first enabled matching rule's pipeline and destinations, or no
        pipeline with the reason (loop prevention, no match, a disabled rule
        that would have matched).
    """
    skip = is_own_or_result_object(ds)
    if skip is not None:
        return RouteDecision(None, None, (), skip)
    for rule in config.rules:
        if rule.enabled and rule.matches(ds):
            if rule.pipeline is None:
                reason = f"matched rule {rule.name!r}, which analyses nothing"
            else:
                reason = f"matched rule {rule.name!r}"
            return RouteDecision(rule.pipeline, rule.name, rule.destinations, reason, rule.level)
    disabled = [rule.name for rule in config.rules if not rule.enabled and rule.matches(ds)]
    if disabled:
        names = ", ".join(repr(name) for name in disabled)
        return RouteDecision(None, None, (), f"no enabled rule matched (disabled rule {names} would match)")
    return RouteDecision(None, None, (), "no rule matched")


def format_route_table(paths: Sequence[Path], config: RoutingConfig) -> tuple[str, int]:
    """Show where each file would be routed, for ``ainode route FILE...``.

    Folders are expanded recursively (sorted); only headers are read.

    Returns
    -------
    tuple of (str, int)
        A printable table with columns file, pipeline (``-`` for none), rule
        and reason; and the exit code: 0 when every file was read, 1 when
        any file could not be read or no file was found.
    """
    rows: list[tuple[str, str, str, str]] = []
    failed = False
    for file in _expand(paths):
        try:
            decision = route(read_header(file), config)
        except InputError as exc:
            failed = True
            rows.append((str(file), "-", "-", f"ERROR: {exc}"))
            continue
        rows.append((str(file), decision.pipeline or "-", decision.rule or "-", decision.reason))
    if not rows:
        return "no files found", 1
    header = ("FILE", "PIPELINE", "RULE", "REASON")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=False)) + "  " + row[3]
        for row in [header, *rows]
    ]
    return "\n".join(lines), 1 if failed else 0


# --- helpers ----------------------------------------------------------------


def _expand(paths: Sequence[Path]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path  # a missing file becomes an error row


def _parse_tag(text: str) -> BaseTag:
    found = _TAG_TEXT.match(text.strip())
    if found:
        return Tag(int(found.group(1), 16), int(found.group(2), 16))
    tag = tag_for_keyword(text.strip())
    if tag is None:
        close = difflib.get_close_matches(text.strip(), keyword_dict.keys(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown DICOM keyword {text!r}{hint}")
    return Tag(tag)


def _is_sequence(tag: BaseTag) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:  # private or unknown tag: VR not known in advance
        return False


def _element_values(ds: Dataset, tag: BaseTag) -> list[Any] | None:
    """The non-empty values of an element, or ``None`` if absent or empty."""
    try:
        element = ds.get(tag)
    except Exception:  # a corrupt value cannot be decoded: treat it as absent, keep routing
        return None
    if element is None or element.value is None:
        return None
    value = element.value
    if element.VR == "SQ":
        return list(value) or None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("latin-1")
    items = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    kept = [item for item in items if _text(item) != ""]
    return kept or None


def _text(value: Any) -> str:
    # DICOM pads to even length with space (text) or NUL (UI); compare without it.
    return str(value).strip(" \x00")


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(_text(value))
    except ValueError:
        return None


def _same(value: Any, wanted: str | int | float) -> bool:
    if isinstance(wanted, str):
        return _text(value) == wanted.strip()
    return _number(value) == float(wanted)


def _is_own(manufacturer: Any) -> bool:
    return manufacturer is not None and _text(manufacturer).casefold() == OWN_MANUFACTURER


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (empty)"
    return f"{type(value).__name__} {value!r}"[:80]


def _clean_message(message: str) -> str:
    return message.removeprefix("Value error, ")


def _format_errors(source: str, data: dict[str, Any], exc: ValidationError) -> str:
    raw_rules = data.get("rules")
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        original = (err.get("ctx") or {}).get("error")
        where = "routing rules"
        if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
            index = loc[1]
            raw = raw_rules[index] if isinstance(raw_rules, list) and index < len(raw_rules) else None
            name = raw.get("name") if isinstance(raw, dict) else None
            where = f"rule {name!r} (rule {index + 1})" if name else f"rule {index + 1}"
            loc = loc[2:]
        elif loc and loc[0] == "rules":
            loc = loc[1:] if len(loc) > 1 else loc
        if isinstance(original, _ConditionSyntaxError):
            key, message, example = original.key, original.detail, original.example
        else:
            key = ".".join(str(part) for part in loc) or "rules"
            message = _clean_message(err["msg"])
            names = [str(part) for part in loc if isinstance(part, str)]
            example = _EXAMPLES.get(names[-1] if names else "rules", _EXAMPLES["rules"])
            if err["type"] == "extra_forbidden" and names:
                allowed = list(Rule.model_fields) if where != "routing rules" else ["rules"]
                close = difflib.get_close_matches(names[-1], allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                message = f"unknown key {names[-1]!r}{hint} (allowed: {', '.join(allowed)})"
                example = _EXAMPLES.get(close[0], _EXAMPLES["rules"]) if close else _EXAMPLES["rules"]
            elif err["type"] == "string_pattern_mismatch":
                message = f"{err['input']!r} is not a valid name: use letters, digits, '_', '-' or '.'"
            elif not loc and "used twice" in message:
                key, example = "name", _EXAMPLES["name"]
        lines.append(f"{source}: {where}, key {key}: {message}\n    example: {example}")
    return "\n".join(lines)
