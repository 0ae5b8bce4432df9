"""Storage backends (node.storage): posix folders as before, S3 objects against a real moto server.

Posix: refs are file paths, read in place; ``storage.root`` moves the spool and the outbox.
S3: an instance is acknowledged only once its PUT succeeded, kept as a local staging file until
its row is committed (then removed), recovered from that file after a crash; jobs read instances
and the dispatcher reads results through refs, from downloads removed afterwards; an outage
answers 0xA700 and stores no row; a missing bucket is one line at start-up.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from core import status
from node import dispatcher as dispatch
from node.assembler import Assembler
from node.db import Base, Database, Instance, Job, JobState, Result
from node.errors import ConfigError, StorageError
from node.fakes import FakeDestination
from node.receiver import Receiver
from node.router import load_routing, routing_tags
from node.settings import Settings, load_settings
from node.spool import POSIX_FILES, Outbox, Spool
from node.storage import S3Files, S3Outbox, S3Spool, is_s3_ref, open_files, open_outbox, open_spool
from tests.helpers.s3 import MotoServer
from tests.node.test_flow import ROUTING, TinyPipeline, _instance, _run_all_jobs, _sent


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    Base.metadata.drop_all(db.engine)
    db.create_schema()
    yield db
    db.dispose()


# -- posix -------------------------------------------------------------------------------------------------------


def test_posix_refs_are_the_files_themselves(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    spool, outbox = open_spool(settings), open_outbox(settings)
    assert type(spool) is Spool and type(outbox) is Outbox
    assert spool.files is POSIX_FILES and open_files(settings) is POSIX_FILES
    ref = outbox.put("1.2", "1.3", "1.4", b"result")
    assert ref == str(settings.outbox_dir / "1.2" / "1.3" / "1.4.dcm")
    assert spool.ref(Path(ref)) == ref
    with outbox.files.fetch([ref]) as (path,):
        assert path == Path(ref)  # read in place: nothing copied
    assert path.read_bytes() == b"result"  # and nothing removed after the block
    size, _ = POSIX_FILES.stat(ref) or (0, 0.0)
    assert size == 6 and POSIX_FILES.exists(ref)
    POSIX_FILES.delete(ref)
    POSIX_FILES.delete(ref)  # already gone: no error
    assert POSIX_FILES.stat(ref) is None and not POSIX_FILES.exists(ref)


def test_posix_root_moves_spool_and_outbox_but_not_the_temporary_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", storage={"root": tmp_path / "shared"})
    assert settings.spool_dir == tmp_path / "shared" / "spool"
    assert settings.outbox_dir == tmp_path / "shared" / "outbox"
    assert settings.tmp_dir == tmp_path / "data" / "tmp"  # per node: its leftovers are cleaned at its start
    spool = open_spool(settings)
    path = spool.store("1.2", "1.3", "1.4", b"x")
    assert path.is_relative_to(tmp_path / "shared" / "spool")


def test_posix_stat_errors_other_than_missing_are_storage_errors(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "f").write_bytes(b"x")
    locked.chmod(0)
    try:
        if os.access(locked / "f", os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(StorageError, match="cannot read f"):
            POSIX_FILES.stat(str(locked / "f"))
    finally:
        locked.chmod(0o700)


def test_s3_needs_a_bucket() -> None:
    with pytest.raises(ValueError, match="type s3 needs a bucket"):
        Settings(storage={"type": "s3"})


# -- S3 (moto's server) ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_settings(tmp_path: Path, moto: MotoServer) -> Settings:
    if not moto.running:  # a test stopped it
        moto.start()
    bucket = f"b-{generate_uid()[-12:].replace('.', '')}"
    moto.create_bucket(bucket)
    return Settings(
        data_dir=tmp_path / "data",
        quiet_period={"default": 0.0},
        storage={**moto.storage_settings, "bucket": bucket, "prefix": "site1/"},
    )


def _receiver(settings: Settings, db: Database, spool: Spool) -> Receiver:
    routing = settings.data_dir.parent / "routing.yaml"
    routing.write_text(ROUTING)
    return Receiver(settings, db, spool, header_tags=routing_tags(load_routing(routing)))


@pytest.mark.integration
def test_s3_keep_puts_the_object_and_stages_the_file_until_release(s3_settings: Settings, moto: MotoServer) -> None:
    spool = open_spool(s3_settings)
    assert isinstance(spool, S3Spool)
    request = _instance("1.2.3", "1.2.4")
    path = spool.keep(request.path, "1.2.4", "1.2.3", request.sop_instance_uid)
    bucket = s3_settings.storage.bucket
    key = f"site1/spool/1.2.4/1.2.3/{request.sop_instance_uid}.dcm"
    assert moto.keys(str(bucket)) == [key]
    assert spool.ref(path) == f"s3://{bucket}/{key}" and is_s3_ref(spool.ref(path))
    assert path.read_bytes() == _sent(request)  # the staging file, until the row is committed
    spool.release([path])
    assert not path.exists()
    with spool.files.fetch([f"s3://{bucket}/{key}"]) as (copy,):
        assert copy.read_bytes() == _sent(request)
        assert copy.name == path.name
    assert not copy.exists() and not copy.parent.exists()  # downloads go when the block ends


@pytest.mark.integration
def test_s3_outbox_put_stat_delete_and_fetch_in_order(s3_settings: Settings) -> None:
    outbox = open_outbox(s3_settings)
    assert isinstance(outbox, S3Outbox)
    refs = [outbox.put("1.2", "1.3", f"1.4.{n}", f"result {n}".encode()) for n in range(12)]
    assert refs[0] == f"s3://{s3_settings.storage.bucket}/site1/outbox/1.2/1.3/1.4.0.dcm"
    assert not (s3_settings.data_dir / "outbox" / "1.2").exists()  # no local copy of a result
    with outbox.files.fetch(refs) as paths:  # downloaded in parallel, returned in order
        assert [p.read_bytes() for p in paths] == [f"result {n}".encode() for n in range(12)]
    size, _ = outbox.files.stat(refs[3]) or (0, 0.0)
    assert size == len(b"result 3")
    # A file recorded before the node moved to object storage is read in place, and never removed by a fetch.
    old = s3_settings.data_dir / "before.dcm"
    old.write_bytes(b"posix")
    with outbox.files.fetch([str(old), refs[0]]) as (kept, fetched):
        assert kept == old and fetched.read_bytes() == b"result 0"
    assert old.exists() and outbox.files.stat(str(old)) is not None
    outbox.files.delete(refs[3])
    outbox.files.delete(refs[3])  # already gone: no error
    assert outbox.files.stat(refs[3]) is None and not outbox.files.exists(refs[3])
    with pytest.raises(StorageError, match="GET of site1/outbox/1.2/1.3/1.4.3.dcm failed"), outbox.files.fetch(refs):
        pass
    with pytest.raises(StorageError, match="not an object of the configured bucket"):
        outbox.files.stat("s3://another-bucket/x.dcm")


@pytest.mark.integration
def test_s3_missing_bucket_or_credentials_is_one_config_line(tmp_path: Path, moto: MotoServer) -> None:
    settings = Settings(data_dir=tmp_path / "data", storage={**moto.storage_settings, "bucket": "no-such-bucket"})
    with pytest.raises(ConfigError, match="storage.bucket 'no-such-bucket' does not exist at http://127.0.0.1"):
        open_spool(settings)
    unset = Settings(
        data_dir=tmp_path / "data",
        storage={**moto.storage_settings, "bucket": "x", "access_key_env": "TEST_S3_UNSET_VARIABLE"},
    )
    with pytest.raises(ConfigError, match="TEST_S3_UNSET_VARIABLE, which is not set"):
        open_spool(unset)


@pytest.mark.integration
def test_s3_series_is_received_analysed_and_delivered_through_refs(
    s3_settings: Settings, moto: MotoServer, database: Database
) -> None:
    spool, outbox = open_spool(s3_settings), open_outbox(s3_settings)
    receiver = _receiver(s3_settings, database, spool)
    study, series = generate_uid(), generate_uid()
    requests = [_instance(series, study) for _ in range(3)]
    assert [receiver(r) for r in requests] == [status.SUCCESS] * 3
    bucket = str(s3_settings.storage.bucket)
    with database.session() as s:
        refs = sorted(s.scalars(select(Instance.path)))
    assert refs == sorted(f"s3://{bucket}/site1/spool/{study}/{series}/{r.sop_instance_uid}.dcm" for r in requests)
    assert not list((s3_settings.data_dir / "spool").rglob("*.dcm"))  # rows committed: staging files gone
    # Digests were taken from the staging files at receive; one without (a recovered instance's) is taken
    # by the assembler from its object.
    digests = {r.sop_instance_uid: hashlib.sha256(_sent(r)).hexdigest() for r in requests}
    with database.session() as s:
        assert {uid: d for uid, d in s.execute(select(Instance.sop_uid, Instance.digest))} == digests
        s.execute(update(Instance).where(Instance.sop_uid == requests[1].sop_instance_uid).values(digest=None))
    assembler = Assembler(database, load_routing(s3_settings.data_dir.parent / "routing.yaml"), {"fake"}, {}, ["pacs"])
    assembler.files = spool.files
    assert assembler.run_once() is not None
    with database.session() as s:
        assert {uid: d for uid, d in s.execute(select(Instance.sop_uid, Instance.digest))} == digests
    pipeline = TinyPipeline()
    assert _run_all_jobs(database, outbox, pipeline) == 1
    assert pipeline.calls[0][:2] == (series, 3)  # the job read the three instances from the bucket
    with database.session() as s:
        result = s.scalars(select(Result.path)).one()
        assert s.scalars(select(Job.state)).one() == JobState.DONE
    assert result.startswith(f"s3://{bucket}/site1/outbox/{study}/{series}/")
    assert [k for k in moto.keys(bucket, "site1/outbox/")] == [result.removeprefix(f"s3://{bucket}/")]
    destination = FakeDestination()
    dispatcher = dispatch.Dispatcher(s3_settings, database, {"pacs": destination})
    dispatcher.run_once()
    assert list(destination.received.values()) == [1]
    cache = s3_settings.tmp_dir / f"s3-cache-{os.getpid()}"
    assert not any(cache.iterdir())  # the job's and the delivery's downloads are gone


@pytest.mark.integration
def test_s3_down_answers_out_of_resources_and_keeps_nothing(
    s3_settings: Settings, moto: MotoServer, database: Database
) -> None:
    spool = open_spool(s3_settings)
    receiver = _receiver(s3_settings, database, spool)
    moto.stop()
    request = _instance("1.2.3", "1.2.4")
    assert receiver(request) == status.OUT_OF_RESOURCES
    assert request.path.exists()  # left to its writer (the SCP removes it); nothing staged
    assert not list((s3_settings.data_dir / "spool").rglob("*.dcm"))
    with database.session() as s:
        assert s.scalars(select(Instance.id)).all() == []
    moto.start()  # an empty server: the bucket is made again, and the sender's retry is kept
    moto.create_bucket(str(s3_settings.storage.bucket))
    again = _instance("1.2.3", "1.2.4")
    assert receiver(again) == status.SUCCESS
    assert moto.keys(str(s3_settings.storage.bucket)) == [f"site1/spool/1.2.4/1.2.3/{again.sop_instance_uid}.dcm"]


@pytest.mark.integration
def test_s3_staging_files_without_rows_are_recovered_at_start(
    s3_settings: Settings, moto: MotoServer, database: Database
) -> None:
    spool = open_spool(s3_settings)
    receiver = _receiver(s3_settings, database, spool)
    recorded = _instance("1.2.3", "1.2.4")
    assert receiver(recorded) == status.SUCCESS
    # A crash between the PUT and the row's commit: the staging file is there, the row is not.
    lost = _instance("1.2.3", "1.2.4")
    staged = spool.keep(lost.path, "1.2.4", "1.2.3", lost.sop_instance_uid)
    # And one whose row was committed but whose staging file was not removed yet.
    kept = _instance("1.2.3", "1.2.4")
    leftover = spool.keep(kept.path, "1.2.4", "1.2.3", kept.sop_instance_uid)
    assert receiver._record([receiver._recovered(leftover)]) == 1
    leftover.write_bytes(_sent(kept))  # _record released it; as if the crash came before
    assert receiver.recover_spool() == 1
    with database.session() as s:
        refs = set(s.scalars(select(Instance.path)))
    assert spool.ref(staged) in refs and len(refs) == 3
    assert not staged.exists() and not leftover.exists()


@pytest.mark.integration
def test_s3_read_failure_fails_the_job_with_one_line(
    s3_settings: Settings, moto: MotoServer, database: Database
) -> None:
    spool, outbox = open_spool(s3_settings), open_outbox(s3_settings)
    receiver = _receiver(s3_settings, database, spool)
    assert receiver(_instance("1.2.3", "1.2.4", Modality="CT")) == status.SUCCESS
    assembler = Assembler(database, load_routing(s3_settings.data_dir.parent / "routing.yaml"), {"fake"}, {}, ["pacs"])
    assembler.files = spool.files
    assembler.run_once()
    for key in moto.keys(str(s3_settings.storage.bucket)):
        moto.client().delete_object(Bucket=s3_settings.storage.bucket, Key=key)
    assert _run_all_jobs(database, outbox, TinyPipeline()) == 1
    with database.session() as s:
        job = s.scalars(select(Job)).one()
        assert job.state == JobState.FAILED
        assert job.error.startswith("the series could not be read from storage: object storage GET of site1/spool/")


def test_s3_client_is_made_only_when_used(tmp_path: Path) -> None:
    """boto3 is an optional extra: nothing imports it until an S3 backend makes its client."""
    files = S3Files(Settings(storage={"type": "s3", "bucket": "b"}).storage, tmp_path)
    assert files._client is None
    assert files.ref("spool/1.2/1.3/1.4.dcm") == "s3://b/spool/1.2/1.3/1.4.dcm"
    assert files.key_of("s3://b/spool/1.2/1.3/1.4.dcm") == "spool/1.2/1.3/1.4.dcm"
    assert files.area_ref("outbox") == "s3://b/outbox/"


def test_storage_credential_variables_are_not_read_as_settings(tmp_path: Path) -> None:
    """``AINODE_S3_KEY`` named by ``access_key_env`` holds a secret, not an ``s3_key`` setting."""
    config = tmp_path / "node.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'data'}\n"
        "storage: {type: s3, bucket: b, access_key_env: AINODE_S3_KEY, secret_key_env: AINODE_S3_SECRET}\n"
    )
    settings = load_settings(config, {"AINODE_S3_KEY": "key", "AINODE_S3_SECRET": "secret"})
    assert settings.storage.access_key_env == "AINODE_S3_KEY"
    plain = tmp_path / "plain.yaml"  # without storage naming it, the variable is a (misspelt) setting
    plain.write_text(f"data_dir: {tmp_path / 'data'}\n")
    with pytest.raises(ConfigError, match="s3_key: unknown key"):
        load_settings(plain, {"AINODE_S3_KEY": "key"})
