"""Where the spool and the outbox live: one storage interface, two backends.

The roles (``ainode serve``, ``ainode worker``) get their spool and outbox here
(:func:`open_spool`, :func:`open_outbox`), so the backend (``storage:`` in node.yaml) is
chosen in one place. Every stored object is named by a *ref*, the string kept in
``Instance.path`` and ``Result.path``:

``posix`` (the default)
    Folders ``spool/`` and ``outbox/`` under ``data_dir`` (or ``storage.root``, e.g. a mount
    shared by several machines). A ref is the file's absolute path; files are fsynced and
    renamed into place (:mod:`node.spool`), exactly as before this module had a second backend:
    no extra copy, call or system call per instance.

``s3``
    An S3-compatible object store (boto3, imported only when configured). A ref is
    ``s3://<bucket>/<key>``, with keys ``<prefix>spool/<study>/<series>/<sop>.dcm`` and
    ``<prefix>outbox/<study>/<source series>/<sop>.dcm``. A worker reads instances and writes
    results through refs only, so it needs no access to any receiver's data folder. A ref is
    read through :meth:`S3Files.fetch`: the objects are downloaded into a private folder under
    the role's own ``data_dir/tmp`` and removed when the job or delivery is done.

Durability with S3. A C-STORE (or a STOW-RS part) is acknowledged only once its PUT
succeeded; a failed PUT raises :class:`~node.errors.StorageError` and the receiver answers
0xA700 (out of resources, "cannot store now", as for a full disk) and keeps nothing. The
received file is PUT from the SCP's temporary file, *then* kept locally as a staging copy in
``data_dir/spool`` (fsync, rename: the posix path, no copy) until the receiver has committed its
database row (:meth:`S3Spool.release`). A crash between the PUT and the row's commit leaves
the staging file, and :meth:`node.receiver.Receiver.recover_spool` records it at the next start
by the same code as a posix spool file; it then removes the staging files whose rows exist.
This was chosen over listing the bucket at start-up because (1) the staging folder holds only
the instances whose rows are pending, a few at most, while a bucket holds every instance of
every receiver; (2) several receivers share a bucket, and a listing would record another
receiver's objects whose rows that receiver is still about to commit; (3) the receiver reads
the routing header and the re-send digest from the local file, as in posix mode, instead of
downloading what it has just uploaded. A crash after the PUT but before the staging rename
(never acknowledged) leaves an object without a row: the sender sends again under the same
key, and nothing references the orphan meanwhile.

An outage is bounded: connect and read time-outs of a few seconds and two attempts
(:data:`CONNECT_TIMEOUT`, :data:`READ_TIMEOUT`, :data:`MAX_ATTEMPTS`), so an association
waits seconds, not minutes, before its 0xA700. A missing or forbidden bucket stops the node at
start-up with one line (:class:`~node.errors.ConfigError`); an unreachable server does not (the
node serves meanwhile and answers 0xA700 until it is back).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from node.errors import ConfigError, StorageError
from node.settings import Settings, StorageSettings
from node.spool import POSIX_FILES, Files, Outbox, Spool, keep_durable, make_dirs_durable, write_durable

log = logging.getLogger("ainode.storage")

#: Scheme of object-store refs.
S3_SCHEME = "s3://"
#: Seconds to open a connection to the object store, and to wait for an answer, per attempt.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
#: Attempts per request (the first and one retry): an outage answers 0xA700 within seconds.
MAX_ATTEMPTS = 2
#: Parallel downloads when a job fetches a series.
FETCH_THREADS = 8
#: Prefix of each process's download folder in ``tmp_dir`` (followed by its process id).
_CACHE_PREFIX = "s3-cache-"

__all__ = [
    "S3Files",
    "S3Outbox",
    "S3Spool",
    "is_s3_ref",
    "open_files",
    "open_outbox",
    "open_spool",
]


def is_s3_ref(ref: str) -> bool:
    """Whether ``ref`` names an object in an object store (not a file path)."""
    return ref.startswith(S3_SCHEME)


def _short(exc: BaseException) -> str:
    """One line for a boto3/botocore error (its code and message, never a traceback)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        code = error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{code}: {error.get('Message') or exc}".splitlines()[0]
    return (str(exc) or type(exc).__name__).splitlines()[0]


def _missing(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound") or response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404


class S3Files:
    """Objects of one bucket: PUT, download for reading, stat, delete; every failure a :class:`StorageError`.

    Parameters
    ----------
    config
        The ``storage:`` settings (bucket, prefix, endpoint, region, credentials' variables, TLS).
    tmp_dir
        The role's own temporary folder: downloads go to ``<tmp_dir>/s3-cache-<pid>/``.
    """

    def __init__(self, config: StorageSettings, tmp_dir: Path) -> None:
        if not config.bucket:
            raise ConfigError("storage.bucket is required with storage.type: s3 (e.g. bucket: ainode)")
        self.config = config
        self.bucket = config.bucket
        self.prefix = config.prefix
        self.cache_dir = tmp_dir / f"{_CACHE_PREFIX}{os.getpid()}"
        self._client: Any = None
        self._lock = threading.Lock()

    # -- the client ---------------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 client, made at first use (boto3 is an optional extra, imported only here)."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:
            raise ConfigError(
                "storage.type: s3 needs boto3: install the node with its 'distributed' extra "
                "(pip install 'ainode[distributed]')"
            ) from exc
        config = self.config
        keys: dict[str, str] = {}
        for name, variable in (
            ("aws_access_key_id", config.access_key_env),
            ("aws_secret_access_key", config.secret_key_env),
        ):
            if variable is None:
                continue
            value = os.environ.get(variable)
            if not value:
                option = "access_key_env" if name == "aws_access_key_id" else "secret_key_env"
                raise ConfigError(f"storage.{option} names the environment variable {variable}, which is not set")
            keys[name] = value
        return boto3.session.Session().client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region,
            verify=config.verify_tls,
            config=Config(
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
                # Path-style (http://host/bucket/key): what MinIO, Ceph and moto serve without DNS per bucket.
                s3={"addressing_style": "path"},
            ),
            **keys,
        )

    def check(self) -> None:
        """The bucket exists and may be used; else :class:`ConfigError`. An unreachable server is only logged.

        Raises
        ------
        ConfigError
            The bucket does not exist, or the credentials may not use it (one line with the fix).
        """
        from botocore.exceptions import BotoCoreError, ClientError

        where = self.config.endpoint_url or "the default AWS endpoint"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _missing(exc):
                raise ConfigError(
                    f"storage.bucket {self.bucket!r} does not exist at {where}: create it, or fix storage.bucket"
                ) from exc
            raise ConfigError(
                f"storage.bucket {self.bucket!r} at {where} cannot be used ({_short(exc)}): "
                "check the credentials (storage.access_key_env, storage.secret_key_env) and the bucket's policy"
            ) from exc
        except BotoCoreError as exc:
            log.warning(
                "object storage %s unreachable at start-up (%s): instances are refused (0xA700) until it answers",
                where,
                _short(exc),
            )

    # -- refs and keys ------------------------------------------------------------------------------------------

    def ref(self, key: str) -> str:
        return f"{S3_SCHEME}{self.bucket}/{key}"

    def key_of(self, ref: str) -> str:
        """The key of ``ref``, an object of this bucket; else :class:`StorageError`."""
        head = f"{S3_SCHEME}{self.bucket}/"
        if not ref.startswith(head):
            raise StorageError(f"{ref[:120]!r} is not an object of the configured bucket {self.bucket!r}")
        return ref[len(head) :]

    def area_ref(self, area: str) -> str:
        """The ref every object of ``area`` (``spool``, ``outbox``) starts with."""
        return self.ref(f"{self.prefix}{area}/")

    # -- operations ---------------------------------------------------------------------------------------------

    def _call(self, what: str, key: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(Bucket=self.bucket, Key=key, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"object storage {what} of {key} failed: {_short(exc)}") from exc

    def put_file(self, key: str, path: Path) -> str:
        """PUT the file ``path`` as ``key`` (returns once the store has it); its ref."""
        try:
            with open(path, "rb") as body:
                self._call("PUT", key, "put_object", Body=body)
        except OSError as exc:
            raise StorageError(f"cannot read {path.name} to store it: {exc.strerror or exc}") from exc
        return self.ref(key)

    def put_bytes(self, key: str, data: bytes) -> str:
        """PUT ``data`` as ``key``; its ref."""
        self._call("PUT", key, "put_object", Body=data)
        return self.ref(key)

    def stat(self, ref: str) -> tuple[int, float] | None:
        """Size and modification time (epoch seconds) of ``ref``, or None when it does not exist."""
        from botocore.exceptions import ClientError

        if not is_s3_ref(ref):  # a file recorded before the node moved to object storage
            return POSIX_FILES.stat(ref)
        key = self.key_of(ref)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise StorageError(f"object storage HEAD of {key} failed: {_short(exc)}") from exc
        except Exception as exc:  # botocore's connection errors
            raise StorageError(f"object storage HEAD of {key} failed: {_short(exc)}") from exc
        return int(head["ContentLength"]), head["LastModified"].timestamp()

    def exists(self, ref: str) -> bool:
        return self.stat(ref) is not None

    def delete(self, ref: str) -> None:
        """Delete ``ref`` (no error when it is already gone)."""
        if not is_s3_ref(ref):
            POSIX_FILES.delete(ref)
            return
        self._call("DELETE", self.key_of(ref), "delete_object")

    def download(self, ref: str, target: Path) -> None:
        """Copy the object ``ref`` into the file ``target``."""
        key = self.key_of(ref)
        answer = self._call("GET", key, "get_object")
        try:
            with open(target, "wb") as fh:
                shutil.copyfileobj(answer["Body"], fh, 1 << 20)
        except OSError as exc:
            raise StorageError(f"cannot write the downloaded {key}: {exc.strerror or exc}") from exc
        except Exception as exc:  # the connection broke while reading the body
            raise StorageError(f"object storage GET of {key} failed: {_short(exc)}") from exc

    @contextlib.contextmanager
    def fetch(self, refs: Sequence[str]) -> Iterator[list[Path]]:
        """Local files holding ``refs`` (in order), removed when the block ends.

        Each object goes to ``<cache>/<n>/<name>``, so a file keeps its object's name (log lines
        quote it) and two refs never share a file. Objects are downloaded in parallel. A ref that
        is a file path (recorded before the node moved to object storage) is read in place.

        Raises
        ------
        StorageError
            An object could not be downloaded (store unreachable, object missing).
        """
        objects = [ref for ref in refs if is_s3_ref(ref)]
        if not objects:
            yield [Path(ref) for ref in refs]
            return
        make_dirs_durable(self.cache_dir)
        folder = Path(tempfile.mkdtemp(prefix="fetch-", dir=self.cache_dir))
        try:
            paths = [
                folder / str(index) / ref.rsplit("/", 1)[-1] if is_s3_ref(ref) else Path(ref)
                for index, ref in enumerate(refs)
            ]
            targets = [path for ref, path in zip(refs, paths, strict=True) if is_s3_ref(ref)]
            for path in targets:
                path.parent.mkdir()
            if len(objects) == 1:
                self.download(objects[0], targets[0])
            else:
                with ThreadPoolExecutor(min(FETCH_THREADS, len(objects)), thread_name_prefix="ainode-fetch") as pool:
                    for done in pool.map(self.download, objects, targets):
                        del done
            yield paths
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def clean_cache(self) -> int:
        """Remove download folders left by processes that no longer run (crashed mid-job); returns how many."""
        removed = 0
        for folder in self.cache_dir.parent.glob(f"{_CACHE_PREFIX}*"):
            pid = folder.name[len(_CACHE_PREFIX) :]
            if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class S3Spool(Spool):
    """Received instances as objects ``<prefix>spool/<study>/<series>/<sop>.dcm``; see the module's description.

    ``root`` is the local staging folder: a kept instance stays there until its row is committed.
    """

    area = "spool"

    def __init__(self, root: Path, tmp_dir: Path, objects: S3Files) -> None:
        super().__init__(root, tmp_dir)
        self.objects = objects

    @property
    def files(self) -> Files:
        return self.objects

    def _key(self, path: Path) -> str:
        return f"{self.objects.prefix}{self.area}/{path.relative_to(self.root).as_posix()}"

    def ref(self, path: Path) -> str:
        """The object's ref of the staging file ``path``."""
        return self.objects.ref(self._key(path))

    def keep(self, source: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """PUT the received file ``source``, then keep it as the staging file (returned) until :meth:`release`."""
        path = self.path_for(study_uid, series_uid, sop_uid)
        self.objects.put_file(self._key(path), source)
        keep_durable(source, path, self.tmp_dir)
        return path

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> Path:
        """PUT ``data``, then write the staging file (returned) until :meth:`release`."""
        path = self.path_for(study_uid, series_uid, sop_uid)
        self.objects.put_bytes(self._key(path), data)
        write_durable(path, data, self.tmp_dir)
        return path

    def put(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> str:
        """PUT ``data`` (no staging file: the caller records its row itself); its ref."""
        return self.objects.put_bytes(self._key(self.path_for(study_uid, series_uid, sop_uid)), data)

    def digest(self, path: Path) -> str | None:
        """SHA-256 of the staging file, taken now (0.3 ms per 0.5 MB, against a PUT's milliseconds): once its
        row is committed the file is gone, and the assembler would download the object to take it."""
        try:
            with open(path, "rb") as fh:
                return hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError:
            return None  # the assembler takes it from the object

    def release(self, paths: Iterable[Path]) -> None:
        """The rows of ``paths`` are committed: their staging files go (the objects stay)."""
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # removed at the next start by recover_spool
                log.warning("staging file %s not removed: %s", path.name, exc)

    def clean_tmp(self) -> int:
        return super().clean_tmp() + self.objects.clean_cache()


class S3Outbox(S3Spool, Outbox):
    """Result objects ``<prefix>outbox/<study>/<source series>/<sop>.dcm``."""

    area = "outbox"


_stores: dict[tuple[str, Path], S3Files] = {}
_stores_lock = threading.Lock()


def _s3(settings: Settings) -> S3Files:
    """The process's client for ``settings.storage`` (one per configuration: a client costs tens of ms)."""
    key = (settings.storage.model_dump_json(), settings.tmp_dir)
    with _stores_lock:
        store = _stores.get(key)
        if store is None:
            store = S3Files(settings.storage, settings.tmp_dir)
            store.check()
            _stores[key] = store
        return store


def open_files(settings: Settings) -> Files:
    """The reader of refs for ``settings`` (the dispatcher, the assembler and retention read and delete by ref)."""
    if settings.storage.type == "s3":
        return _s3(settings)
    return POSIX_FILES


def open_spool(settings: Settings) -> Spool:
    """The spool of received instances for ``settings``.

    Raises
    ------
    ConfigError
        ``storage.type: s3`` with a missing or unusable bucket, boto3 missing, or a credentials
        variable unset.
    """
    if settings.storage.type == "s3":
        return S3Spool(settings.data_dir / "spool", settings.tmp_dir, _s3(settings))
    return Spool(settings.spool_dir, settings.tmp_dir)


def open_outbox(settings: Settings) -> Outbox:
    """The outbox of result objects for ``settings`` (see :func:`open_spool`)."""
    if settings.storage.type == "s3":
        return S3Outbox(settings.data_dir / "outbox", settings.tmp_dir, _s3(settings))
    return Outbox(settings.outbox_dir, settings.tmp_dir)
