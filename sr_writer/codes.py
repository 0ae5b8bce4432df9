"""The one table of coded concepts that ainode writes into DICOM objects.

Every Code Sequence item in an object we write (SR content tree concept
names, coded values and units, purposes of reference) comes from
:data:`CONCEPTS`; a test walks our SRs and fails on any code not found here.
That includes the structural concepts that highdicom writes for templates
TID 1500/1501/1002/4019 (PS3.16), so this table is also a list of what a
receiving PACS will see.

Sources. Codes of the DICOM (``DCM``), SNOMED CT (``SCT``), LOINC (``LN``) and
UCUM schemes were checked against PS3.16 (Annex D for DCM, the CIDs named in
each ``source``), as distributed in pydicom's code dictionary generated from
the standard (``pydicom.sr._concepts_dict``); ``tests/sr_writer`` re-checks
each one against that dictionary. Concepts with no standard code use the
private scheme ``99AINODE`` (PS3.16 section 8.2: private scheme designators
begin with ``99``); ``99IHE`` is IHE's own private scheme (IHE RAD AI Results).
Both are in :data:`PRIVATE_SCHEMES`, and every object we write declares those it
uses in its Coding Scheme Identification Sequence (:func:`declare_private_schemes`,
called by :func:`sr_writer.common.name_series`).

Labels of :class:`core.findings.Finding` are keys of this table whose
concept is marked ``is_finding``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept

from core.identity import MANUFACTURER
from sr_writer.errors import ParameterError, UnknownConceptError

__all__ = [
    "ALLOWED_SCHEMES",
    "CHESTXRAY14_LABELS",
    "CONCEPTS",
    "CodingScheme",
    "Concept",
    "FOUR_CLASS_LABELS",
    "LABEL_ALIASES",
    "PRIVATE_SCHEMES",
    "TRIAGE_KEYS",
    "VIEW_POSITION_KEYS",
    "code",
    "coding_scheme_items",
    "declare_private_schemes",
    "designators_used",
    "display_name",
    "finding_concept",
    "finding_key",
    "key_for",
]

#: Coding scheme designators we write. RFC5646 only for the language item
#: that TID 1500 requires (CID 5000); UMLS only for the TID 1500 row 12
#: container whose concept name the template fixes.
ALLOWED_SCHEMES = frozenset({"DCM", "SCT", "LN", "RADLEX", "UCUM", "RFC5646", "UMLS"})

_PS316 = "PS3.16 via pydicom.sr._concepts_dict"


@dataclass(frozen=True)
class CodingScheme:
    """A private coding scheme (PS3.16 section 8.2: its designator begins with ``99``), as every object
    that uses it declares it in the Coding Scheme Identification Sequence (0008,0110) (PS3.3 C.12.1.1.5).

    Attributes
    ----------
    designator : str
        Coding Scheme Designator (0008,0102).
    name : str
        Coding Scheme Name (0008,0115).
    responsible_organization : str
        Coding Scheme Responsible Organization (0008,0116).
    uid : str or None
        Coding Scheme UID (0008,010C), where the scheme has one.
    """

    designator: str
    name: str
    responsible_organization: str
    uid: str | None = None

    def item(self) -> CodingSchemeIdentificationItem:
        """The scheme as a Coding Scheme Identification Sequence item."""
        item = CodingSchemeIdentificationItem(
            designator=self.designator, name=self.name, responsible_organization=self.responsible_organization
        )
        if self.uid is not None:
            # Type 1C: required when the scheme has a UID, registered or not (highdicom sets it only
            # together with a Coding Scheme Registry, which a private scheme has not).
            item.CodingSchemeUID = self.uid
        return item


#: The private schemes we write. 99AINODE's UID is a UUID-derived UID (PS3.5 B.2) fixed for the
#: scheme; IHE publishes no UID for 99IHE (the IHE AI Results profile names the designator only).
PRIVATE_SCHEMES: Mapping[str, CodingScheme] = MappingProxyType(
    {
        "99AINODE": CodingScheme(
            "99AINODE",
            "ainode private concepts",
            f"{MANUFACTURER} project",
            f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, 'ainode.coding-scheme.99AINODE').int}",
        ),
        "99IHE": CodingScheme("99IHE", "IHE private concepts", "IHE International"),
    }
)


@dataclass(frozen=True)
class Concept:
    """One coded concept: the triplet of PS3.3 section 8.8 plus provenance.

    Parameters
    ----------
    value : str
        Code Value (0008,0100).
    scheme : str
        Coding Scheme Designator (0008,0102): DCM, SCT, LN, RADLEX, UCUM,
        RFC5646, UMLS or a private scheme of :data:`PRIVATE_SCHEMES`.
    meaning : str
        Code Meaning (0008,0104), as the standard spells it.
    source : str
        Where the code was checked: PS3.16 and the CID or template that holds it (re-checked against
        pydicom's copy of PS3.16 by the tests), a named citable source, or why it is private.
    is_finding : bool
        True when the concept may be the label of a ``Finding``.
    """

    value: str
    scheme: str
    meaning: str
    source: str
    is_finding: bool = False

    def __post_init__(self) -> None:
        if not (self.scheme in ALLOWED_SCHEMES or self.scheme in PRIVATE_SCHEMES):
            raise ParameterError(f"coding scheme {self.scheme!r} of {self.meaning!r} is not one we may write")
        if not self.value or not self.meaning or len(self.meaning) > 64:
            raise ParameterError(f"concept {self.value!r} {self.meaning!r}: empty value or meaning over 64 characters")

    def coded(self) -> CodedConcept:
        """The concept as a highdicom :class:`~highdicom.sr.CodedConcept`."""
        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)


def _c(value: str, scheme: str, meaning: str, source: str, is_finding: bool = False) -> Concept:
    return Concept(value, scheme, meaning, source, is_finding)


CONCEPTS: Mapping[str, Concept] = MappingProxyType(
    {
        # --- TID 1500 Measurement Report: structure written by highdicom ------------------------
        "imaging_measurement_report": _c("126000", "DCM", "Imaging Measurement Report", f"{_PS316}, CID 7021"),
        "language": _c("121049", "DCM", "Language of Content Item and Descendants", f"{_PS316}, TID 1204"),
        "english_us": _c("en-US", "RFC5646", "English (United States)", "PS3.16 CID 5000; highdicom DEFAULT_LANGUAGE"),
        "procedure_reported": _c("121058", "DCM", "Procedure reported", f"{_PS316}, TID 1500 row 4"),
        "imaging_measurements": _c("126010", "DCM", "Imaging Measurements", f"{_PS316}, TID 1500 row 6"),
        "qualitative_evaluations": _c(
            "C0034375",
            "UMLS",
            "Qualitative Evaluations",
            "PS3.16 TID 1500 row 12 (as in dcmjs and the HL7 DICOM-SR-to-FHIR IG); not in pydicom's dictionary",
        ),
        "measurement_group": _c("125007", "DCM", "Measurement Group", f"{_PS316}, TID 1501 row 1"),
        "tracking_identifier": _c("112039", "DCM", "Tracking Identifier", f"{_PS316}, TID 4108"),
        "tracking_uid": _c("112040", "DCM", "Tracking Unique Identifier", f"{_PS316}, TID 4108"),
        "algorithm_name": _c("111001", "DCM", "Algorithm Name", f"{_PS316}, TID 4019"),
        "algorithm_version": _c("111003", "DCM", "Algorithm Version", f"{_PS316}, TID 4019"),
        "source_of_measurement": _c("121112", "DCM", "Source of Measurement", f"{_PS316}, CID 7551, TID 1501 row 10"),
        "finding": _c("121071", "DCM", "Finding", f"{_PS316}, TID 1501 row 7"),
        # SNOMED's fully specified name is "Source (attribute)"; PS3.16 and highdicom write "Source".
        "source": _c("260753009", "SCT", "Source", f"{_PS316}, TID 1501 row 10 note, TID 1410"),
        "image_region": _c("111030", "DCM", "Image Region", f"{_PS316}, TID 1410 row 7"),
        # TID 1600 Image Library (sr_writer.report.image_library): the images the report speaks about.
        "image_library": _c("111028", "DCM", "Image Library", f"{_PS316}, TID 1600 row 1"),
        "image_library_group": _c("126200", "DCM", "Image Library Group", f"{_PS316}, TID 1600 row 2"),
        "frame_of_reference_uid": _c("112227", "DCM", "Frame of Reference UID", f"{_PS316}, TID 1602"),
        # Finding Site of the chest radiograph's image-level and box groups (CID 4031 Common Anatomic Regions).
        "chest": _c("816094009", "SCT", "Chest", f"{_PS316}, CID 4031"),
        "comment": _c("121106", "DCM", "Comment", f"{_PS316}, CID 12101"),
        # --- TID 1002 Observer Context: the algorithm as device observer (TID 1004) -------------
        "observer_type": _c("121005", "DCM", "Observer Type", f"{_PS316}, TID 1002"),
        "device": _c("121007", "DCM", "Device", f"{_PS316}, CID 270"),
        "device_observer_uid": _c("121012", "DCM", "Device Observer UID", f"{_PS316}, TID 1004"),
        "device_observer_name": _c("121013", "DCM", "Device Observer Name", f"{_PS316}, TID 1004"),
        "device_observer_manufacturer": _c("121014", "DCM", "Device Observer Manufacturer", f"{_PS316}, TID 1004"),
        "device_observer_model_name": _c("121015", "DCM", "Device Observer Model Name", f"{_PS316}, TID 1004"),
        # --- Procedures reported (CID 100 "Quantitative Diagnostic Imaging Procedures") ---------
        "xr_procedure": _c("43468-8", "LN", "XR unspecified body region", f"{_PS316}, CID 100"),
        "ct_procedure": _c("25045-6", "LN", "CT unspecified body region", f"{_PS316}, CID 100"),
        "imaging_procedure": _c("363679005", "SCT", "Imaging procedure", f"{_PS316}, CID 100"),
        # --- Contributing Equipment purposes of reference (PS3.3 C.12.1.1.2, CID 7005) ----------
        "processing_algorithm": _c(
            "Newcode1",
            "99IHE",
            "Processing Algorithm",
            "IHE RAD AI Results (AIR) Contributing Equipment; same triplet as MONAI Deploy/MONAI Label",
        ),
        # Purpose of Reference of the Secondary Capture's Source Image Sequence (CID 7202).
        "source_image_for_processing": _c(
            "121322", "DCM", "Source image for image processing operation", f"{_PS316}, CID 7202"
        ),
        "acquisition_equipment": _c("109101", "DCM", "Acquisition Equipment", f"{_PS316}, CID 7005"),
        "processing_equipment": _c("109102", "DCM", "Processing Equipment", f"{_PS316}, CID 7005"),
        # --- Radiograph view (CID 4010 "DX View") ------------------------------------------------
        "image_view": _c("111031", "DCM", "Image View", f"{_PS316}, Annex D"),
        "frontal": _c("399033003", "SCT", "frontal", f"{_PS316}, CID 4010"),
        "lateral": _c("399067008", "SCT", "lateral", f"{_PS316}, CID 4010"),
        "antero_posterior": _c("399348003", "SCT", "antero-posterior", f"{_PS316}, CID 4010"),
        "postero_anterior": _c("272479007", "SCT", "postero-anterior", f"{_PS316}, CID 4010"),
        "left_lateral": _c("399173006", "SCT", "left lateral", f"{_PS316}, CID 4010"),
        "right_lateral": _c("399198007", "SCT", "right lateral", f"{_PS316}, CID 4010"),
        # No standard concept names "the view the header claims" or "analysed further".
        "header_image_view": _c(
            "VIEWHDR", "99AINODE", "Image View in header (ViewPosition)", "private: no standard code"
        ),
        "analysed_further": _c("ANALYSED", "99AINODE", "Analysed further", "private: no standard code"),
        # --- Values and units ---------------------------------------------------------------
        "yes": _c("373066001", "SCT", "Yes", f"{_PS316}, CID 230"),
        "no": _c("373067005", "SCT", "No", f"{_PS316}, CID 230"),
        "present": _c("52101004", "SCT", "Present", f"{_PS316}, CID 240"),
        "absent": _c("272519000", "SCT", "Absent", f"{_PS316}, CID 240"),
        # DCM 111047 is "Probability of cancer" (CID 6048, mammography CAD): wrong for a
        # view or a generic finding; DCM 122157 "Probability" is the generic concept.
        "probability": _c("122157", "DCM", "Probability", f"{_PS316}, Annex D"),
        "no_units": _c("1", "UCUM", "no units", f"{_PS316}, CID 7181"),
        # --- Findings (labels of core.findings.Finding) -----------------------------------
        # The 14 NIH ChestX-ray14 labels, keyed as Data_Entry_2017.csv spells them (lower case,
        # "_" for the space). Where PS3.16 holds the concept (chest CAD CIDs 6102/6104, CID 3700,
        # CID 12248) the code is the standard's and the test re-checks it; the others were checked
        # against the published SNOMED CT releases, HL7 FHIR implementation guides or clinical
        # references named in ``source``.
        "atelectasis": _c(
            "46621007",
            "SCT",
            "Atelectasis",
            "SNOMED CT 46621007 |Atelectasis (disorder)| as used in public HL7 FHIR/CDS code tables "
            "(e.g. MedDRA-to-SNOMED ConceptMap 'Atelectasis' -> 46621007); no browser page found to confirm",
            True,
        ),
        # Not 287272002: PS3.16's CID 12248 labels it "Cardiomegaly", but its own Table O-1 gives that
        # SNOMED concept the full name "Enlarged septal foramen of heart (disorder)" (pydicom has both).
        "cardiomegaly": _c(
            "8186001",
            "SCT",
            "Cardiomegaly",
            "SNOMED CT 8186001 |Cardiomegaly (disorder)|; Human Phenotype Ontology HP:0001640 'Cardiomegaly' "
            "cross-references SNOMEDCT_US:8186001 and UMLS C0018800",
            True,
        ),
        "consolidation": _c(
            "95436008",
            "SCT",
            "Lung consolidation",
            "SNOMED CT 95436008 |Lung consolidation (disorder)|; parent of 233604007 |Pneumonia| in the "
            "SNOMED CT International release relationships (published extract, gist pgwilliams/8006310)",
            True,
        ),
        # ChestX-ray14 "Edema" is pulmonary oedema (cardiogenic or not), not oedema in general.
        "edema": _c("19242006", "SCT", "Pulmonary edema", f"{_PS316}, CID 3700", True),
        # ChestX-ray14 "Effusion" is pleural effusion.
        "effusion": _c("60046008", "SCT", "Pleural effusion", f"{_PS316}, CID 8134", True),
        "emphysema": _c(
            "87433001",
            "SCT",
            "Pulmonary emphysema",
            "SNOMED CT 87433001 |Pulmonary emphysema (disorder)|; HL7 Lithuanian Lung Cancer IG, "
            "ValueSet incidental-finding (build.fhir.org/ig/HL7LT/ig-lt-lung)",
            True,
        ),
        "fibrosis": _c(
            "51615001",
            "SCT",
            "Fibrosis of lung",
            "SNOMED CT 51615001 |Fibrosis of lung (disorder)|; listed in several HL7 FHIR IG value sets "
            "(chronic lung disease / pulmonary rehabilitation conditions, FSH sources)",
            True,
        ),
        # ChestX-ray14 "Hernia" is a hiatal (diaphragmatic) hernia seen behind the heart, not an
        # abdominal-wall hernia: 84089009 rather than 414403008 |Hernia of abdominal cavity|.
        "hernia": _c(
            "84089009",
            "SCT",
            "Hiatal hernia",
            "SNOMED CT 84089009 |Hiatal hernia (disorder)|; VisualDx 'Hiatal hernia' codes section "
            "(SNOMEDCT 84089009, ICD-10-CM K44.9)",
            True,
        ),
        # No SNOMED concept was found that matches "Infiltration" as a radiographic label; DICOM's
        # chest CAD context group has the radiographic concept.
        "infiltration": _c("112121", "DCM", "Infiltrate", f"{_PS316}, CID 6104", True),
        "mass": _c("4147007", "SCT", "Mass", f"{_PS316}, CID 6104", True),
        "nodule": _c("27925004", "SCT", "Nodule", f"{_PS316}, CID 6104", True),
        # No value set of PS3.16 holds pleural thickening, and the SNOMED CT code once used here
        # (78381009) was cited by one secondary source only: private until a citable code is found.
        "pleural_thickening": _c(
            "PLEURTHICK",
            "99AINODE",
            "Pleural thickening",
            "private: no PS3.16 concept; SNOMED CT 78381009 could not be confirmed in a citable source",
            True,
        ),
        "pneumonia": _c(
            "233604007",
            "SCT",
            "Pneumonia",
            "SNOMED CT 233604007 |Pneumonia (disorder)|; HL7 C-CDA on FHIR example Condition CF-problem "
            "(hl7.org/fhir/us/ccda) and CH EKM ValueSet (build.fhir.org/ig/ahdis/ch-ekm)",
            True,
        ),
        "pneumothorax": _c("36118008", "SCT", "Pneumothorax", f"{_PS316}, CID 6102", True),
        "pulmonary_embolism": _c("59282003", "SCT", "Pulmonary embolism", f"{_PS316}, CID 6102", True),
        # --- The four classes of the four-class classifier (pneumonia is the finding above) ---
        "covid19": _c(
            "840539006",
            "SCT",
            "COVID-19",
            "SNOMED CT 840539006 |COVID-19 (disorder)|, interim release 20200309; listed by "
            "healthintersections.com.au 'COVID-19 Related Codes' (2020-04-01)",
            True,
        ),
        # "Normal" (CID 222 Normality) rather than a disorder: the class says the film shows no disease.
        "normal": _c("17621005", "SCT", "Normal", f"{_PS316}, CID 222", True),
        # The four-class classifier's training data's TUBERCULOSIS class is pulmonary TB on a chest film.
        "tuberculosis": _c(
            "154283005",
            "SCT",
            "Pulmonary tuberculosis",
            "SNOMED CT 154283005 |Pulmonary tuberculosis|; PMC7586722 (Int J Tuberc Lung Dis 2020) "
            "Table 3, mapped to ICD-10-CM A15.0",
            True,
        ),
        # --- Triage, ranking, detection -----------------------------------------------------
        # SNOMED's "Priority (attribute)" names the item; PS3.16 has no triage-level values (CID 3414
        # "Procedure Urgency" codes procedures, not findings), so the levels are private.
        "triage_priority": _c("260870009", "SCT", "Priority", f"{_PS316} (SNOMED 'Priority (attribute)')"),
        "triage_urgent": _c("TRIAGE1", "99AINODE", "Urgent", "private: no standard triage-level code"),
        "triage_priority_level": _c("TRIAGE2", "99AINODE", "Priority", "private: no standard triage-level code"),
        "triage_routine": _c("TRIAGE3", "99AINODE", "Routine", "private: no standard triage-level code"),
        "top_finding_rank": _c("RANK", "99AINODE", "Top finding rank", "private: no standard code"),
        "confidence": _c("CONF", "99AINODE", "Detection confidence", "private: no standard code"),
        # --- ChestX-Det classes beyond ChestX-ray14 (the detector's extra labels) ------------
        # The chest CAD context groups hold the radiographic concepts, as for "infiltration".
        "calcification": _c("112063", "DCM", "Abnormal calcifications", f"{_PS316}, CID 6101", True),
        # ChestX-Det "Diffuse Nodule": many small nodules spread over the lungs, a pattern.
        "diffuse_nodule": _c("112067", "DCM", "Nodular pattern", f"{_PS316}, CID 6104", True),
        # ChestX-Det "Fracture" covers ribs and clavicles, so the bone is not named.
        "fracture": _c(
            "125605004",
            "SCT",
            "Fracture of bone",
            "SNOMED CT 125605004 |Fracture of bone (disorder)|; domain of the IHTSDO template "
            "'Fracture of [bone structure] (disorder) - v2' (github.com/IHTSDO/snomed-templates)",
            True,
        ),
        # --- Pulmonary embolism on CTPA (the PE model, RSNA-PE exam labels) -----------------
        "acute_pulmonary_embolism": _c(
            "706870000",
            "SCT",
            "Acute pulmonary embolism",
            "SNOMED CT 706870000 |Acute pulmonary embolism (disorder)|; condition code table of the "
            "samply/blaze documentation (docs/cql-queries, Synthea data)",
            True,
        ),
        # RSNA "indeterminate": the study cannot be read for PE (quality), a finding of the exam.
        "pe_indeterminate": _c(
            "PEINDET", "99AINODE", "Study indeterminate for pulmonary embolism", "private: no standard code", True
        ),
        # RSNA's RV/LV labels are classes of the diameter ratio; LOINC 59078-6 is the inverse (LV/RV).
        "rv_lv_ratio_gte_1": _c("RVLVGE1", "99AINODE", "RV/LV diameter ratio >= 1", "private: no standard code", True),
        "rv_lv_ratio_lt_1": _c("RVLVLT1", "99AINODE", "RV/LV diameter ratio < 1", "private: no standard code", True),
        # The value of a finding that could not be determined (a PE exam that cannot be read, a level
        # map with no level): CID 240 "Present/Absent", whose Present and Absent we write, holds
        # "Undetermined"; SCT 82334004 "Indeterminate" is CID 4220's (ophthalmic fixation quality).
        "indeterminate": _c("373068000", "SCT", "Undetermined", f"{_PS316}, CID 240"),
        # Modifiers of pulmonary embolism (59282003) for the RSNA chronic and acute-and-chronic
        # labels, from CID 6130; "acute and chronic" is the finding with both.
        "chronic": _c("90734009", "SCT", "Chronic", f"{_PS316}, CID 6130"),
        "acute_onset": _c("385315009", "SCT", "Acute onset", f"{_PS316}, CID 6130"),
        # Concept name of those modifiers (HAS CONCEPT MOD on the PE finding, PS3.16 section 6.2.4): the exam's
        # PE is a feature composed from the slices' findings, as the CAD templates' composite features are.
        "composite_feature_modifier": _c(
            "112023", "DCM", "Composite Feature Modifier", f"{_PS316}, Annex D (CAD composite feature modifier)"
        ),
        "pulmonary_artery": _c("81040000", "SCT", "Pulmonary artery", f"{_PS316}, CID 4"),
        # TID 300 Finding Site (highdicom FindingSite) with its laterality and topographical modifier.
        "finding_site": _c("363698007", "SCT", "Finding Site", f"{_PS316}, CID 9000"),
        "laterality": _c("272741003", "SCT", "Laterality", f"{_PS316}, CID 210"),
        "topographical_modifier": _c("106233006", "SCT", "Topographical modifier", f"{_PS316}, CID 210"),
        "right": _c("24028007", "SCT", "Right", f"{_PS316}, CID 244"),
        "left": _c("7771000", "SCT", "Left", f"{_PS316}, CID 244"),
        "central": _c("26216008", "SCT", "Central", f"{_PS316}, CID 2"),
        # --- Vertebral levels and body composition on abdominal CT (the vertebral level model)
        # The vertebral level model's class "T" is any thoracic level above L1, "S" the sacrum.
        "thoracic_spine": _c("122495006", "SCT", "Thoracic spine", f"{_PS316}, CID 4"),
        "t12_vertebra": _c("23215003", "SCT", "T12 vertebra", f"{_PS316}, CID 7151"),
        "l1_vertebra": _c("66794005", "SCT", "L1 vertebra", f"{_PS316}, CID 7151"),
        "l2_vertebra": _c("14293000", "SCT", "L2 vertebra", f"{_PS316}, CID 7151"),
        "l3_vertebra": _c("36470004", "SCT", "L3 vertebra", f"{_PS316}, CID 7151"),
        "l4_vertebra": _c("11994002", "SCT", "L4 vertebra", f"{_PS316}, CID 7151"),
        "l5_vertebra": _c("49668003", "SCT", "L5 vertebra", f"{_PS316}, CID 7151"),
        "sacrum": _c("54735007", "SCT", "Sacrum", f"{_PS316}, CID 4"),
        # The finding of a level map that could not be determined (its value: SCT Indeterminate).
        "vertebral_level": _c("VERTLEVEL", "99AINODE", "Vertebral level", "private: no standard code"),
        # The muscle as an anatomic structure (a finding site, CID 8134); a segment's type is "muscle".
        "skeletal_muscle": _c("127954009", "SCT", "Skeletal muscle", f"{_PS316}, CID 8134"),
        # Segmentation property type of muscle under the category Tissue (CID 7191, 7166).
        "muscle": _c("91727004", "SCT", "Muscle", f"{_PS316}, CID 7191, CID 7166"),
        # PS3.16 has no "subcutaneous/visceral adipose tissue": subcutaneous fat is the subcutaneous
        # tissue (CID 7191, 7166), visceral fat is fat (CID 7191, 7166) with the modifier "Internal"
        # (CID 2): the one encoding of visceral fat, in the SR's finding site (topographical modifier)
        # and in the SEG's segmented property type (type modifier).
        "subcutaneous_tissue": _c("71966008", "SCT", "Subcutaneous tissue", f"{_PS316}, CID 7191, CID 7166"),
        "fat": _c("55603005", "SCT", "Fat", f"{_PS316}, CID 7191, CID 7166"),
        "internal": _c("260521003", "SCT", "Internal", f"{_PS316}, CID 2"),
        "abdomen": _c("818981001", "SCT", "Abdomen", f"{_PS316}, CID 4"),
        "tissue": _c("85756007", "SCT", "Tissue", f"{_PS316}, CID 7150"),
        "area": _c("42798000", "SCT", "Area", f"{_PS316}, CID 7469"),
        "skeletal_muscle_index": _c(
            "SMI", "99AINODE", "Skeletal muscle index", "private: no standard code (muscle area / height squared)"
        ),
        # PS3.16 CID 7181 spells the UCUM cm2 meaning this way (pydicom's dictionary).
        "square_centimeter": _c("cm2", "UCUM", "Centimeter**2", f"{_PS316}, CID 7181"),
        # Not listed in PS3.16, which allows any valid UCUM expression for TID 300 units (CID 7181 is
        # extensible); cm2/m2 is UCUM grammar for area per squared height.
        "square_centimeter_per_square_meter": _c(
            "cm2/m2", "UCUM", "cm2/m2", "UCUM expression (unitsofmeasure.org grammar); PS3.16 CID 7181 is extensible"
        ),
        "artificial_intelligence": _c("123110", "DCM", "Artificial Intelligence", f"{_PS316}, CID 7162"),
        # --- Key Object Selection titles (CID 7010) and content (TID 2010) --------------------
        "of_interest": _c("113000", "DCM", "Of Interest", f"{_PS316}, CID 7010"),
        "for_referring_provider": _c("113002", "DCM", "For Referring Provider", f"{_PS316}, CID 7010"),
        "best_in_set": _c("113013", "DCM", "Best In Set", f"{_PS316}, CID 7010"),
        "key_object_description": _c("113012", "DCM", "Key Object Description", f"{_PS316}, TID 2010"),
    }
)

#: Older or alternative spellings of finding labels, mapped to their key in :data:`CONCEPTS`.
LABEL_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "pleural_effusion": "effusion",
        "pleural thickening": "pleural_thickening",
        "covid-19": "covid19",
    }
)

#: The 14 NIH ChestX-ray14 labels (the 14-finding classifier's outputs) in the order of the
#: ``Data_Entry_2017.csv`` documentation.
CHESTXRAY14_LABELS: tuple[str, ...] = (
    "atelectasis",
    "cardiomegaly",
    "consolidation",
    "edema",
    "effusion",
    "emphysema",
    "fibrosis",
    "hernia",
    "infiltration",
    "mass",
    "nodule",
    "pleural_thickening",
    "pneumonia",
    "pneumothorax",
)

#: The four classes of the four-class chest radiograph classifier.
FOUR_CLASS_LABELS: tuple[str, ...] = ("covid19", "normal", "pneumonia", "tuberculosis")

#: Triage levels (``core.findings.ImageResult.triage``) mapped to their concept keys.
TRIAGE_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "urgent": "triage_urgent",
        "priority": "triage_priority_level",
        "routine": "triage_routine",
    }
)

#: View Position (0018,5101) values mapped to CID 4010 keys: the defined terms of the CR Series
#: and DX Positioning modules (PS3.3 C.8.1.1, C.8.11.5) plus "LATERAL", common in the wild.
VIEW_POSITION_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "AP": "antero_posterior",
        "PA": "postero_anterior",
        "LL": "left_lateral",
        "RL": "right_lateral",
        "LATERAL": "lateral",
    }
)


def code(key: str) -> CodedConcept:
    """The coded concept stored under ``key`` in :data:`CONCEPTS`.

    Parameters
    ----------
    key : str
        Short key, e.g. ``"image_view"``.

    Returns
    -------
    highdicom.sr.CodedConcept

    Raises
    ------
    sr_writer.errors.UnknownConceptError
        (a KeyError) When the key is not in the table (the message lists the known keys).
    """
    try:
        return CONCEPTS[key].coded()
    except KeyError:
        raise UnknownConceptError(
            f"no coded concept {key!r} in sr_writer.codes.CONCEPTS; known: {', '.join(sorted(CONCEPTS))}"
        ) from None


def finding_concept(label: str) -> CodedConcept:
    """The concept for a ``Finding`` label.

    Raises
    ------
    sr_writer.errors.UnknownConceptError
        (a KeyError) When ``label`` is not a key of :data:`CONCEPTS` or names a concept that is
        not a finding (e.g. ``"frontal"``).
    """
    return CONCEPTS[finding_key(label)].coded()


def finding_key(label: str) -> str:
    """The table key of a ``Finding`` label: the label itself, or its canonical key for an alias
    (:data:`LABEL_ALIASES`, e.g. ``"pleural_effusion"`` -> ``"effusion"``); case-insensitive.

    Raises
    ------
    sr_writer.errors.UnknownConceptError
        (a KeyError) When the label names no finding concept.
    """
    key = label.strip().lower()
    key = LABEL_ALIASES.get(key, key)
    concept = CONCEPTS.get(key)
    if concept is None or not concept.is_finding:
        known = sorted(k for k, c in CONCEPTS.items() if c.is_finding)
        raise UnknownConceptError(
            f"finding label {label!r} has no coded concept in sr_writer.codes; finding labels: {', '.join(known)}"
        )
    return key


def display_name(label: str) -> str:
    """A short human label for a finding, e.g. ``"Nodule"``, for GSPS text and burned-in captions."""
    return CONCEPTS[finding_key(label)].meaning


def key_for(value: str, scheme: str) -> str | None:
    """The table key of the concept ``(value, scheme)``, or None when it is not ours."""
    for key, concept in CONCEPTS.items():
        if concept.value == value and concept.scheme == scheme:
            return key
    return None


def designators_used(ds: pydicom.Dataset) -> Iterator[str]:
    """Every Coding Scheme Designator (0008,0102) anywhere in ``ds``, nested sequences included."""
    for elem in ds:
        if elem.tag == 0x00080102 and elem.value:
            yield str(elem.value)
        elif elem.VR == "SQ":
            for item in elem.value:
                yield from designators_used(item)


def coding_scheme_items(designators: Iterator[str] | set[str]) -> list[CodingSchemeIdentificationItem]:
    """Coding Scheme Identification items for the private schemes among ``designators``, sorted.

    A private designator that is not one of ours (copied from a source) gets an item with the
    designator alone, the one Type 1 attribute of the item.
    """
    items = []
    for designator in sorted({d for d in designators if d.startswith("99")}):
        scheme = PRIVATE_SCHEMES.get(designator)
        items.append(scheme.item() if scheme else CodingSchemeIdentificationItem(designator=designator))
    return items


def declare_private_schemes(ds: pydicom.Dataset) -> None:
    """Declare in the Coding Scheme Identification Sequence (0008,0110) every private scheme ``ds`` uses
    and does not declare yet (PS3.3 C.12.1.1.5); items already there are kept."""
    declared = {
        str(item.get("CodingSchemeDesignator", "")) for item in ds.get("CodingSchemeIdentificationSequence", [])
    }
    missing = coding_scheme_items(set(designators_used(ds)) - declared)
    if missing:
        if "CodingSchemeIdentificationSequence" not in ds:
            ds.CodingSchemeIdentificationSequence = []
        ds.CodingSchemeIdentificationSequence.extend(missing)
