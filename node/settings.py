"""Node settings: ``config/node.yaml`` overridden by ``AINODE_...`` environment variables.

Every setting has an embedded default, so the node runs with no file at all.
A file and the environment only change what they name. Validation happens at
start-up and failures name the key, what is wrong and a correct example, e.g.::

    Invalid configuration (config/node.yaml, environment AINODE_*):
      - port: Input should be less than or equal to 65535 (got 70000). Example: port: 11112

Environment variables map onto keys by upper-casing and joining nested keys
with a double underscore: ``AINODE_PORT=11112``, ``AINODE_DATA_DIR=/srv/ainode``,
``AINODE_DELIVERY__MAX_ATTEMPTS=5``. Values are parsed as YAML, so lists and
mappings work too: ``AINODE_ALLOWED_PEERS='[{ae_title: PACS}]'``.
``AINODE_CONFIG`` names the node.yaml file itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.validation import problems
from node.errors import ConfigError


def _shipped(package: str) -> Path:
    """The folder of a data package shipped with ainode (``config``, ``weights``) on the file system.

    Found with :mod:`importlib.resources`: the package inside an installed wheel, the
    repository's folder in a checkout (editable install), from whatever folder ainode runs.
    """
    folder = files(package)
    if not isinstance(folder, Path):  # e.g. imported from a zip file: settings and the registry need real files
        raise ImportError(f"ainode's {package!r} package is not a folder on the file system ({folder})")
    return folder.resolve()


#: The shipped ``node.yaml``, read when neither ``--config`` nor ``AINODE_CONFIG`` names another.
DEFAULT_CONFIG_FILE = _shipped("config") / "node.yaml"
#: The shipped models (one folder per model) and the files that list models and route series to pipelines.
DEFAULT_MODELS_DIR = _shipped("weights")
DEFAULT_MODELS_FILE = DEFAULT_CONFIG_FILE.parent / "models.yaml"
DEFAULT_ROUTING_FILE = DEFAULT_CONFIG_FILE.parent / "routing.yaml"
ENV_PREFIX = "AINODE_"
#: ``AINODE_*`` variables that are not settings: the file's own name, the test suite's shared data,
#: and the variables of ``scripts/dev.sh`` (its Python and pip extras), which reach ``ainode serve``.
NOT_SETTINGS: frozenset[str] = frozenset({"AINODE_CONFIG", "AINODE_SHARED_DATA", "AINODE_EXTRAS", "AINODE_PYTHON"})

AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")]
_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_DEVICE_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")

EXAMPLES: dict[str, str] = {
    "ae_title": "ae_title: AINODE",
    "port": "port: 11112",
    "host": "host: 0.0.0.0",
    "uid_root": "uid_root: 1.2.826.0.1.3680043.8.498.1",
    "allowed_peers": "allowed_peers: [{ae_title: ORTHANC, host: 127.0.0.1}]",
    "destinations": "destinations: {pacs: {type: dicom, ae_title: ORTHANC, host: 127.0.0.1, port: 4242}}",
    "default_destinations": "default_destinations: [pacs]",
    "storage_commitment": "storage_commitment: {ae_title: AINODE-SC, host: 0.0.0.0, port: 11113}",
    "quiet_period": "quiet_period: {default: 10, CR: 0.5, DX: 0.5}",
    "workers": "workers: 2",
    "database_url": "database_url: postgresql+psycopg://ainode:secret@db:5432/ainode",
    "http_host": "http_host: 127.0.0.1",
    "http_port": "http_port: 8080",
    "http_enabled": "http_enabled: true",
    "max_pdu": "max_pdu: 262144",
    "dicom_limits": (
        "dicom_limits: {association_request_timeout: 10, max_negotiating: 64, max_dataset_size: 4294967296}"
    ),
    "http_tokens": "http_tokens: [{name: ris, token_env: AINODE_RIS_TOKEN}]",
    "http_users": "http_users: [{name: admin, password_hash: 'scrypt$16384$8$1$...'}]  # ainode hash-password",
    "http_tls": "http_tls: {certificate: /etc/ainode/http.crt, private_key: /etc/ainode/http.key}",
    "stow_max_request_size": "stow_max_request_size: 4294967296",
    "log_format": "log_format: json",
    "sources": "sources: {pacs: {type: dicom, ae_title: ORTHANC, host: 127.0.0.1, port: 4242, retrieve: move}}",
    "orthanc_watch": "orthanc_watch: {url: http://127.0.0.1:8042, source: orthanc-web}",
    "tls": "tls: {enabled: true, port: 2762, certificate: /etc/ainode/node.crt, private_key: /etc/ainode/node.key}",
    "cxr": "cxr: {four_class_models: [cxr-four-class], secondary_capture: true, triage: {urgent: {pneumothorax: 0.5}}}",
    "priorities": "priorities: {urgent_procedure_priorities: [STAT], urgent_locations: ['^ED'], promote_after: 900}",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AllowedPeerSettings(_Strict):
    """A modality or PACS that may store to the node."""

    ae_title: AETitle
    host: str | None = None


class TlsSettings(_Strict):
    """The node's DICOM TLS port (PS3.15 B.1, BCP 195): certificate files, checked at start-up by ``node.tls``."""

    enabled: bool = False
    port: int = Field(default=2762, ge=0, le=65535)
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _check_files_named(self) -> TlsSettings:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("enabled TLS needs 'certificate' and 'private_key' (PEM file paths)")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError(
                "require_client_certificate needs 'ca_certificates' (the CAs that sign client certificates)"
            )
        return self


class DicomDestinationSettings(_Strict):
    """A DICOM destination: results are sent by C-STORE (PS3.4 Annex B), over TLS when ``tls`` is true."""

    type: Literal["dicom"] = "dicom"
    ae_title: AETitle
    host: str
    port: int = Field(ge=1, le=65535)
    timeout: float = Field(default=30, gt=0)
    tls: bool = False
    ca_certificates: Path | None = None  # default: the system's CAs
    certificate: Path | None = None  # client certificate, when the peer asks for one
    private_key: Path | None = None
    verify_hostname: bool = True
    # Storage commitment (PS3.4 Annex J): after the C-STORE, an N-ACTION asks the destination to commit the
    # instances; the delivery is done when its N-EVENT-REPORT says so (see the node-level storage_commitment).
    storage_commitment: bool = False
    commitment_timeout: float = Field(default=300, gt=0)  # seconds to wait for the report, then sent again

    @model_validator(mode="after")
    def _check_tls(self) -> DicomDestinationSettings:
        named = [k for k in ("ca_certificates", "certificate", "private_key") if getattr(self, k) is not None]
        if named and not self.tls:
            raise ValueError(f"{', '.join(named)} given but 'tls' is false (set tls: true)")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("a client certificate needs both 'certificate' and 'private_key'")
        return self


class HttpServerSettings(_Strict):
    """An HTTP server the node talks to (a DICOMweb destination or source, an Orthanc's REST API).

    Secrets are never written in the file itself: ``password_env``/``token_env``
    name an environment variable, ``password_file``/``token_file`` a file.
    """

    url: str = Field(pattern=r"^https?://")
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    token_env: str | None = None
    token_file: Path | None = None
    verify_tls: bool = True
    ca_certificates: Path | None = None  # verifies an https server; default: the system's CAs
    timeout: float = Field(default=30, gt=0)

    def secret(self) -> str | None:
        """The password or token, read from its environment variable or file."""
        env = self.token_env if self.auth == "bearer" else self.password_env
        path = self.token_file if self.auth == "bearer" else self.password_file
        if env:
            value = os.environ.get(env)
            if value is None:
                raise ConfigError(f"{self.url}: environment variable {env} is not set")
            return value
        if path:
            try:
                return Path(path).read_text().strip()
            except OSError as exc:
                raise ConfigError(f"{self.url}: cannot read secret file {path}: {exc}") from exc
        return None


class DicomWebDestinationSettings(HttpServerSettings):
    """A DICOMweb destination: results are sent by STOW-RS (PS3.18 10.5)."""

    type: Literal["dicomweb"]


Destination = Annotated[DicomDestinationSettings | DicomWebDestinationSettings, Field(discriminator="type")]


class DicomSourceSettings(DicomDestinationSettings):
    """A DICOM Query/Retrieve SCP studies are pulled from (``node.pull``): C-FIND, then C-MOVE or C-GET.

    The same keys as a ``type: dicom`` destination, plus ``retrieve``: ``move`` asks the source to
    send the instances to the node's own AE title (the source must know the node as a modality, and
    the node must list the source in ``allowed_peers``); ``get`` receives them on the query's own
    association (C-GET, PS3.4 C.4.3), so the source needs no route back to the node.
    """

    retrieve: Literal["move", "get"] = "move"


class DicomWebSourceSettings(DicomWebDestinationSettings):
    """A DICOMweb server studies are pulled from (``node.pull``): QIDO-RS, then WADO-RS per series.

    The same keys as a ``type: dicomweb`` destination; ``url`` is the DICOMweb root.
    """


Source = Annotated[DicomSourceSettings | DicomWebSourceSettings, Field(discriminator="type")]


class OrthancWatchSettings(HttpServerSettings):
    """Watch an Orthanc's ``/changes`` feed and pull each new stable series (an alternative to Lua forwarding).

    ``url`` is Orthanc's REST root; ``source`` names the entry of ``sources`` the series are pulled
    through (that Orthanc by DICOMweb or DIMSE). The last change seen is kept in the data directory, so a
    restarted node resumes after it. Authentication as for a DICOMweb source (``auth``, ``username``,
    ``password_env``/``password_file``, ``token_env``/``token_file``).
    """

    enabled: bool = True
    source: str
    poll_seconds: float = Field(default=2.0, gt=0)
    event: Literal["StableSeries", "StableStudy"] = "StableSeries"


class ViewerDicomWebSettings(HttpServerSettings):
    """The DICOMweb server the viewer reads studies from (Orthanc's DICOMweb plugin by default).

    ``url`` is the DICOMweb root; the viewer's proxy adds the credentials (``auth`` etc.), so the browser
    never holds them and needs no CORS.
    """


class ViewerSettings(_Strict):
    """``ainode viewer``: the pinned OHIF v3 build (``scripts/ohif.sh``) with its DICOMweb data source proxied.

    ``url`` is the address the admin pages link to ("open in the viewer"); default
    ``http://<host>:<port>``. ``ohif_dir`` is the build's ``dist`` folder; default: ``.cache/ohif/dist`` of
    the checkout, where ``scripts/ohif.sh`` puts it.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    dicomweb: ViewerDicomWebSettings = Field(
        default_factory=lambda: ViewerDicomWebSettings(url="http://127.0.0.1:8042/dicom-web")
    )
    ohif_dir: Path | None = None
    url: str | None = Field(default=None, pattern=r"^https?://")


class WebSettings(_Strict):
    """The admin web pages of the node's HTTP server (``node.web``): sessions of the ``http_users``."""

    # A session ends this long after its login (then log in again).
    session_hours: float = Field(default=8.0, gt=0, le=24 * 30)


#: The name of an HTTP token or user: what audit rows and received instances record as the caller.
CallerName = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[A-Za-z0-9._@-]+$")]


class HttpTokenSettings(_Strict):
    """An API token of the node's HTTP server (``Authorization: Bearer``); the token is in a variable or file."""

    name: CallerName
    token_env: str | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _check_one_source(self) -> HttpTokenSettings:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError(f"token {self.name!r}: give exactly one of 'token_env' and 'token_file'")
        return self

    def secret(self) -> str:
        """The token, read from its environment variable or file (at least 16 characters)."""
        if self.token_env is not None:
            value = os.environ.get(self.token_env)
            if value is None:
                raise ConfigError(f"http_tokens {self.name!r}: environment variable {self.token_env} is not set")
        else:
            try:
                value = Path(str(self.token_file)).read_text().strip()
            except OSError as exc:
                raise ConfigError(
                    f"http_tokens {self.name!r}: cannot read token file {self.token_file}: {exc}"
                ) from exc
        if len(value.strip()) < 16:
            raise ConfigError(
                f"http_tokens {self.name!r}: the token is shorter than 16 characters (make one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return value.strip()


class HttpUserSettings(_Strict):
    """A user of the node's HTTP server (HTTP Basic); ``password_hash`` is made by ``ainode hash-password``."""

    name: CallerName
    password_hash: str

    @field_validator("password_hash")
    @classmethod
    def _check_hash(cls, value: str) -> str:
        from node.web.auth import check_hash_format

        return check_hash_format(value)


class HttpTlsSettings(_Strict):
    """HTTPS for the node's HTTP server: a PEM certificate (chain) and its private key."""

    certificate: Path
    private_key: Path


class StorageCommitmentSettings(_Strict):
    """Where the N-EVENT-REPORTs of storage commitment arrive: a pynetdicom AE of its own (PS3.4 J.3.3).

    Its AE title is the calling AE title of the N-ACTION; the PACS sends the report to that AE title's
    address in its own configuration (Orthanc: a ``DicomModalities`` entry). Listening only when a
    destination has ``storage_commitment: true``.
    """

    ae_title: AETitle = "AINODE-SC"
    host: str = "0.0.0.0"
    port: int = Field(default=11113, ge=0, le=65535)


class DeliverySettings(_Strict):
    """Retry policy of the dispatcher: exponential back-off, then a dead letter.

    A failing delivery is retried after ``backoff_initial * 2**(attempts-1)`` seconds, at most
    ``backoff_max``; it becomes a dead letter once its first failure is ``give_up_after_hours``
    old (a PACS maintenance window lasts hours), or after ``max_attempts`` attempts when that is set.
    """

    max_attempts: int | None = Field(default=None, ge=1)
    backoff_initial: float = Field(default=2.0, gt=0)
    backoff_max: float = Field(default=600.0, gt=0)
    give_up_after_hours: float = Field(default=48.0, gt=0)


class RetentionSettings(_Strict):
    """What ``node.retention`` removes from the spool and the outbox (database rows are kept).

    Files of a series whose jobs are finished and whose results are all delivered go
    ``keep_hours`` after the last of those events; earlier, oldest first, while the data
    directory's free space is under ``min_free_percent``. Never anything unfinished.
    """

    enabled: bool = True
    keep_hours: float = Field(default=24.0, ge=0)
    min_free_percent: float = Field(default=10.0, ge=0, lt=100)
    interval_seconds: float = Field(default=60.0, gt=0)


#: Default triage thresholds of the cxr pipeline (label key -> probability at or above which the level applies).
#: Urgent: a finding that needs a doctor now (pneumothorax). Priority: findings that need a report today.
DEFAULT_TRIAGE_URGENT: dict[str, float] = {"pneumothorax": 0.5}
DEFAULT_TRIAGE_PRIORITY: dict[str, float] = {
    "mass": 0.5,
    "nodule": 0.5,
    "effusion": 0.5,
    "consolidation": 0.5,
    "pneumonia": 0.5,
    "edema": 0.5,
    "cardiomegaly": 0.5,
    "covid19": 0.5,
    "tuberculosis": 0.5,
}


class CxrTriageSettings(_Strict):
    """Per-finding thresholds of the triage levels (urgent, then priority; else routine).

    Keys are finding keys of ``sr_writer.codes`` (the 14 ChestX-ray14 findings, the four
    classes, detector labels); a key matches findings, classes and boxes of that label, and
    the highest probability (or box confidence) on the image counts.
    """

    urgent: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TRIAGE_URGENT))
    priority: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TRIAGE_PRIORITY))

    @field_validator("urgent", "priority")
    @classmethod
    def _check_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        from sr_writer.codes import finding_key

        checked: dict[str, float] = {}
        for label, threshold in value.items():
            try:
                key = finding_key(label)
            except KeyError as exc:
                raise ValueError(str(exc).strip("\"'")) from None
            if not 0.0 <= float(threshold) <= 1.0:
                raise ValueError(f"threshold of {label!r} must be between 0 and 1")
            checked[key] = float(threshold)
        return checked


class CxrSettings(_Strict):
    """The chest radiograph pipeline: which models run after the view filter, triage, extra objects.

    A model named here but not installed (no manifest or no weights) does not stop the
    pipeline: it logs a warning at start-up and the SR of each frontal image says which
    analysis was not done. ``null`` (or an empty list) switches a step off on purpose.
    """

    finding_model: str | None = "cxr-findings"
    four_class_models: list[str] = Field(default_factory=lambda: ["cxr-four-class"])
    detector_model: str | None = "cxr-detector"
    top_findings: int = Field(default=3, ge=0, le=14)
    # A normal image has no top finding: ranking fourteen near-zero probabilities would name
    # whichever label has the highest base rate (the emergency-department triage service does; false
    # restores that).
    top_findings_present_only: bool = True
    triage: CxrTriageSettings = Field(default_factory=CxrTriageSettings)
    presentation_state: bool = True
    secondary_capture: bool = False
    parallel_models: bool = True


class DicomLimitsSettings(_Strict):
    """Timers and caps of the DICOM listener (``dimse.scp.StorageSCP``), against slow or hostile peers.

    ``association_request_timeout`` is a deadline from the TCP accept to the end of the
    A-ASSOCIATE-RQ, TLS handshake included, that reads do not extend; ``network_timeout`` and
    ``dimse_timeout`` bound each whole PDU between and inside DIMSE messages; ``acse_timeout`` how
    long a rejected or released connection waits for the peer to close it. ``max_negotiating`` and
    ``max_negotiating_per_address`` cap connections accepted but not yet associated (established
    associations are capped by ``max_associations``); ``max_dataset_size`` is the largest data set
    received (a larger one is answered 0xA700 and not kept).
    """

    association_request_timeout: float = Field(default=10, gt=0)
    acse_timeout: float = Field(default=30, gt=0)
    network_timeout: float = Field(default=60, gt=0)
    dimse_timeout: float = Field(default=60, gt=0)
    max_negotiating: int = Field(default=64, ge=1)
    max_negotiating_per_address: int = Field(default=8, ge=1)
    max_dataset_size: int = Field(default=4 << 30, ge=1)


def _default_destinations() -> dict[str, DicomDestinationSettings | DicomWebDestinationSettings]:
    return {"pacs": DicomDestinationSettings(ae_title="ORTHANC", host="127.0.0.1", port=4242)}


class CelerySettings(_Strict):
    """The distributed executor (``executor: celery``): Celery 5 over RabbitMQ (``node.distributed``).

    The broker carries job ids only; PostgreSQL (``database_url``) holds every state. Each job goes to
    the queue of its pipeline (``queues``, else ``default_queue``); ``ainode worker --queues`` consumes them.
    """

    broker_url: str = "amqp://guest:guest@127.0.0.1:5672//"
    default_queue: str = "cpu"
    queues: dict[str, str] = Field(default_factory=dict)  # pipeline -> queue name, e.g. {ct_pe: gpu}
    # A worker holds a job's row for lease_seconds, renewed every heartbeat_seconds; a row whose
    # lease ran out (its worker died or hangs) is queued again by the sweeper in ``ainode serve``.
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=15.0, gt=0)
    # Celery's limits on one job, below RabbitMQ's consumer_timeout (30 min by default).
    soft_time_limit: float = Field(default=1200.0, gt=0)
    time_limit: float = Field(default=1500.0, gt=0)

    @model_validator(mode="after")
    def _consistent_times(self) -> CelerySettings:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError(
                f"heartbeat_seconds ({self.heartbeat_seconds:g}) must be below lease_seconds ({self.lease_seconds:g}): "
                "a lease must be renewed before it runs out (e.g. lease_seconds: 60, heartbeat_seconds: 15)"
            )
        if self.soft_time_limit >= self.time_limit:
            raise ValueError(
                f"soft_time_limit ({self.soft_time_limit:g}) must be below time_limit ({self.time_limit:g}): "
                "the soft limit fails the job with a reason, the hard one kills its process"
            )
        return self


class PrioritySettings(_Strict):
    """How urgent a job is (``node.priority``): 0 urgent, 1 priority, 2 routine."""

    # Requested Procedure Priority (0040,1003) values that make a job urgent, and priority.
    urgent_procedure_priorities: list[str] = Field(default_factory=lambda: ["STAT"])
    high_procedure_priorities: list[str] = Field(default_factory=lambda: ["HIGH"])
    # Current Patient Location (0038,0300) regular expressions that make a job urgent (emergency department).
    urgent_locations: list[str] = Field(default_factory=lambda: [r"(?i)\b(ED|ER|A&E|emergency|resus)\b"])
    # A job waiting longer than this (seconds) goes before every other: routine work always finishes.
    promote_after: float = Field(default=900.0, gt=0)

    @field_validator("urgent_locations")
    @classmethod
    def _compilable(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return patterns


class StorageSettings(_Strict):
    """Where the spool (received instances) and the outbox (result objects) live (``node.storage``).

    ``posix``: folders under ``data_dir`` (or ``root``, e.g. a shared mount). ``s3``: an
    S3-compatible object store; an instance is acknowledged only once its PUT succeeded.
    """

    type: Literal["posix", "s3"] = "posix"
    root: Path | None = None  # posix: where spool/ and outbox/ are; default data_dir
    bucket: str | None = None
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_env: str | None = None  # default: boto3's own chain (AWS_ACCESS_KEY_ID, ...)
    secret_key_env: str | None = None
    verify_tls: bool = True

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, value: Path | None) -> Path | None:
        # Paths recorded in the database must not depend on the directory a command runs from.
        return value.expanduser().resolve() if value is not None else None

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> StorageSettings:
        if self.type == "s3" and not self.bucket:
            raise ValueError("type s3 needs a bucket (e.g. bucket: ainode)")
        return self


class Settings(_Strict):
    """All settings of one node. See ``config/node.yaml`` for the documented defaults."""

    ae_title: AETitle = "AINODE"
    host: str = "0.0.0.0"
    port: int | None = Field(default=11112, ge=0, le=65535)  # None: no plain (non-TLS) port
    tls: TlsSettings = Field(default_factory=TlsSettings)
    allowed_peers: list[AllowedPeerSettings] = Field(
        # Secure by default: only an Orthanc on this machine may store; a PACS is added by name (and address).
        default_factory=lambda: [AllowedPeerSettings(ae_title="ORTHANC", host="127.0.0.1")]
    )
    max_pdu: int = Field(default=262144, lt=2**32)
    max_associations: int = Field(default=32, ge=1)
    dicom_limits: DicomLimitsSettings = Field(default_factory=DicomLimitsSettings)
    data_dir: Path = Field(default=Path("var"), validate_default=True)
    database_url: str | None = None
    uid_root: str = "1.2.826.0.1.3680043.8.498.1"
    institution_name: str | None = None
    quiet_period: dict[str, float] = Field(default_factory=lambda: {"default": 10.0, "CR": 0.5, "DX": 0.5})
    workers: int = Field(default=2, ge=1, le=64)
    threads_per_model: int = Field(default=1, ge=1)
    # ONNX Runtime execution providers per device, first preferred (models.backends.providers); a
    # process serves one device: `device` (`ainode serve`), `ainode worker --device`. A provider this
    # onnxruntime build lacks is dropped with a warning (the CPU serves when none is left).
    devices: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "cpu": ["CPUExecutionProvider"],
            "gpu": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        }
    )
    device: str = "cpu"
    # A job the node died during this many times is failed: a series that crashes the process cannot stop it.
    job_max_restarts: int = Field(default=3, ge=1)
    # local: a pool of `workers` threads in `ainode serve`; celery: `ainode worker` processes over RabbitMQ.
    executor: Literal["local", "celery"] = "local"
    celery: CelerySettings = Field(default_factory=CelerySettings)
    priorities: PrioritySettings = Field(default_factory=PrioritySettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    # A series re-sent unchanged is never analysed again with the same models and settings; with
    # new weights or settings, true analyses it again on its next re-send (node.idempotency).
    reanalyse_on_change: bool = False
    models_dir: Path = DEFAULT_MODELS_DIR
    models_file: Path | None = DEFAULT_MODELS_FILE
    routing_file: Path = DEFAULT_ROUTING_FILE
    destinations: dict[str, Destination] = Field(default_factory=lambda: _default_destinations())
    # Where studies can be pulled from (``ainode pull``, ``node.pull``); none by default.
    sources: dict[str, Source] = Field(default_factory=dict)
    orthanc_watch: OrthancWatchSettings | None = None
    default_destinations: list[str] = Field(default_factory=lambda: ["pacs"])
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    storage_commitment: StorageCommitmentSettings = Field(default_factory=StorageCommitmentSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    result_series_number: int = Field(default=990, ge=1)
    cxr: CxrSettings = Field(default_factory=CxrSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    # Health and Prometheus metrics (node.http); localhost only unless configured otherwise.
    http_enabled: bool = True
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # Who may call the routes other than /healthz and /readyz (node.web.auth): nobody by default.
    http_tokens: list[HttpTokenSettings] = Field(default_factory=list)
    http_users: list[HttpUserSettings] = Field(default_factory=list)
    http_tls: HttpTlsSettings | None = None
    http_metrics_auth: bool = True  # /metrics needs a token, user or session; false opens it (loopback only)
    stow_max_request_size: int = Field(default=4 * 2**30, ge=1)  # bytes of one STOW-RS request body
    web: WebSettings = Field(default_factory=WebSettings)
    viewer: ViewerSettings = Field(default_factory=ViewerSettings)

    @field_validator("uid_root")
    @classmethod
    def _check_uid_root(cls, value: str) -> str:
        value = value.rstrip(".")
        if not _UID_ROOT.match(value) or len(value) > 53:
            raise ValueError(
                "must be digits separated by dots, no leading zeros, at most 53 characters "
                "(so that generated UIDs fit in 64)"
            )
        return value

    @field_validator("max_pdu")
    @classmethod
    def _check_max_pdu(cls, value: int) -> int:
        if value < 4096:
            raise ValueError(
                "must be 4096 to 4294967295 bytes; 0 ('unlimited' in PS3.8) is not accepted:"
                " a peer could then make the node allocate 4 GiB with one PDU header"
            )
        return value

    @field_validator("data_dir")
    @classmethod
    def _absolute_data_dir(cls, value: Path) -> Path:
        # Paths recorded in the database must not depend on the directory a command runs from.
        return value.expanduser().resolve()

    @field_validator("quiet_period")
    @classmethod
    def _check_quiet(cls, value: dict[str, float]) -> dict[str, float]:
        if "default" not in value:
            raise ValueError("needs a 'default' entry (seconds); other keys are modalities such as CR")
        if any(v < 0 for v in value.values()):
            raise ValueError("seconds must not be negative")
        return {k if k == "default" else k.upper(): float(v) for k, v in value.items()}

    @model_validator(mode="after")
    def _check_ports(self) -> Settings:
        if self.port is None and not self.tls.enabled:
            raise ValueError("port is null (no plain DICOM port) and tls is not enabled: the node would not listen")
        if self.tls.enabled and self.port is not None and self.port != 0 and self.port == self.tls.port:
            raise ValueError(f"port and tls.port are both {self.port}: the plain and the TLS port must differ")
        return self

    @model_validator(mode="after")
    def _check_destination_names(self) -> Settings:
        unknown = [d for d in self.default_destinations if d not in self.destinations]
        if unknown:
            raise ValueError(
                f"default_destinations names {unknown} but destinations defines only {sorted(self.destinations)}"
            )
        return self

    @model_validator(mode="after")
    def _check_http_names(self) -> Settings:
        names = [t.name for t in self.http_tokens] + [u.name for u in self.http_users]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"http_tokens and http_users name {twice} more than once: each caller needs its own name")
        return self

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        from models.backends.providers import check_provider_names
        from models.errors import ModelError

        if not value:
            raise ValueError("lists no device; e.g. cpu: [CPUExecutionProvider]")
        for device, providers in value.items():
            if not _DEVICE_NAME.match(device):
                raise ValueError(f"device name {device!r}: lower-case letters, digits, '-' and '_', e.g. cpu or gpu")
            try:
                check_provider_names(providers)
            except ModelError as exc:
                raise ValueError(f"device {device!r}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _check_device(self) -> Settings:
        if self.device not in self.devices:
            raise ValueError(f"device {self.device!r} is not one of devices ({', '.join(sorted(self.devices))})")
        return self

    def providers_for(self, device: str | None = None) -> list[str]:
        """The configured ONNX Runtime providers of ``device`` (default :attr:`device`), first preferred.

        Raises
        ------
        ConfigError
            When ``devices`` has no such device.
        """
        name = self.device if device is None else device
        if name not in self.devices:
            raise ConfigError(f"device {name!r} is not configured; devices: {', '.join(sorted(self.devices))}")
        return list(self.devices[name])

    @model_validator(mode="after")
    def _check_watch_source(self) -> Settings:
        watch = self.orthanc_watch
        if watch is not None and watch.source not in self.sources:
            raise ValueError(
                f"orthanc_watch.source names {watch.source!r} but sources defines only {sorted(self.sources)}"
            )
        return self

    # Derived locations -------------------------------------------------------------
    def quiet_seconds(self, modality: str | None) -> float:
        """Quiet period after the last instance before a series of this modality is analysed."""
        return self.quiet_period.get((modality or "").upper(), self.quiet_period["default"])

    @property
    def spool_dir(self) -> Path:
        """Received instances (posix storage), or their staging files until their rows are committed (s3)."""
        return (self.storage.root if self.storage.type == "posix" and self.storage.root else self.data_dir) / "spool"

    @property
    def outbox_dir(self) -> Path:
        return (self.storage.root if self.storage.type == "posix" and self.storage.root else self.data_dir) / "outbox"

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'ainode.db').resolve()}"


def _secret_variables(data: Mapping[str, Any]) -> set[str]:
    """Names of environment variables the file's destinations, sources, Orthanc watch and storage read secrets from."""
    entries: list[Any] = []
    for section in ("destinations", "sources"):
        named = data.get(section)
        if isinstance(named, Mapping):
            entries += named.values()
    entries.append(data.get("orthanc_watch"))
    if isinstance(data.get("http_tokens"), list):
        entries += data["http_tokens"]
    names = {str(d[k]) for d in entries if isinstance(d, Mapping) for k in ("password_env", "token_env") if d.get(k)}
    storage = data.get("storage")  # the object store's credentials (node.storage)
    if isinstance(storage, Mapping):
        names |= {str(storage[k]) for k in ("access_key_env", "secret_key_env") if storage.get(k)}
    return names


def _env_overrides(environ: Mapping[str, str], skip: AbstractSet[str] = frozenset()) -> dict[str, Any]:
    """Nested dict from ``AINODE_A__B=value`` variables (values parsed as YAML), except those in ``skip``."""
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS or name in skip:
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (int, float)) and keys[-1] in ("ae_title", "uid_root", "host", "url"):
            value = raw
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"Invalid configuration ({source}):"]
    for problem in problems(exc):
        # An unknown key's value is not shown (problem.input_shown): it may be a secret (AINODE_PASSWORD=... read
        # as a key).
        # Nor is a value given where a secret's hash belongs: it may be the password itself.
        secret = bool(problem.loc) and str(problem.loc[-1]) == "password_hash"
        got = f" (got {problem.input!r})" if problem.input_shown and not secret else ""
        example = EXAMPLES.get(str(problem.loc[0]) if problem.loc else "", "")
        hint = f". Example: {example}" if example else ""
        # These messages keep pydantic's own wording, "Value error, " included.
        msg = f"Value error, {problem.message}" if problem.type == "value_error" else problem.message
        if problem.type == "extra_forbidden":
            msg = "unknown key (check the spelling; see config/node.yaml for every key)"
        lines.append(f"  - {problem.key or '(top level)'}: {msg}{got}{hint}")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from a YAML file (optional) and the environment.

    Parameters
    ----------
    path : path, optional
        ``node.yaml``; defaults to ``$AINODE_CONFIG`` or the shipped ``config/node.yaml``.
    environ : mapping, optional
        Environment to read ``AINODE_*`` overrides from (defaults to ``os.environ``).

    Raises
    ------
    ConfigError
        With one line per problem: key, what is wrong, an example.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get("AINODE_CONFIG") or DEFAULT_CONFIG_FILE
    path = Path(path)
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of keys (e.g. 'port: 11112'), got {type(loaded).__name__}")
        data = loaded
    elif "AINODE_CONFIG" in environ or path != DEFAULT_CONFIG_FILE:
        raise ConfigError(f"configuration file {path} does not exist")
    # A secret kept in an AINODE_* variable (password_env: AINODE_PACS_PASSWORD) is not a setting.
    data = _merge(data, _env_overrides(environ, _secret_variables(data)))
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, f"{path}, environment {ENV_PREFIX}*")) from exc
