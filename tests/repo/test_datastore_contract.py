"""One contract suite for every datastore backend: the directory and S3.

The S3 backend runs against moto's S3 server (``moto_server``, the
S3-compatible server that installs here with pip) on 127.0.0.1, through the
real boto3 client and HTTP: the same code talks to MinIO, Ceph or AWS.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest

from skydm.errors import BadValueError, DataCorruptionError
from skydm.image.exposure import Exposure
from skydm.image.psf import GaussianPsf
from skydm.image.visit import VisitInfo
from skydm.repo import DataId, Repository
from skydm.repo.datastore import FileDatastore, relpath_for
from skydm_testing import moto_s3_server

DID = DataId("skysim", detector=1, visit=12, band="r")


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL (env set for boto3)."""
    saved = {k: os.environ.get(k) for k in _ENV}
    with moto_s3_server() as endpoint:
        os.environ.update(
            SKYDM_S3_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
        )  # fmt: skip
        try:
            yield endpoint
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


_ENV = ("SKYDM_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
_BUCKETS = iter(range(10**6))


@pytest.fixture(params=["file", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """``{"store": datastore, "url": datastore_url or None, "corrupt": fn(relpath, bytes)}``."""
    if request.param == "file":
        store = FileDatastore(tmp_path)

        def corrupt(relpath: PurePosixPath, data: bytes) -> None:
            (tmp_path / relpath).write_bytes(data)

        return {"store": store, "url": None, "corrupt": corrupt, "root": tmp_path}
    request.getfixturevalue("s3_server")
    from skydm.repo.s3datastore import S3Datastore, s3_client

    client = s3_client()
    bucket = f"skydm-test-{next(_BUCKETS)}-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/some/prefix"
    store = S3Datastore(url, tmp_path, client=client)

    def corrupt_s3(relpath: PurePosixPath, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=store.key(relpath), Body=data)

    return {"store": store, "url": url, "corrupt": corrupt_s3, "root": tmp_path}


def _stage(store: Any, content: bytes, data_id: DataId = DID) -> Any:
    return store.stage("calexp", data_id, lambda fh: fh.write(content))


def test_layout_checksums_and_verified_reads(backend: dict[str, Any]) -> None:
    store = backend["store"]
    content = os.urandom(100_000)
    staged = _stage(store, content)
    assert staged.checksum == hashlib.sha256(content).hexdigest()
    stored = staged.commit()
    assert stored.relpath == relpath_for("calexp", DID, staged.checksum)  # one layout
    assert stored.size == len(content)
    assert store.read_verified(stored.relpath, stored.checksum) == content
    assert store.check(stored.relpath, stored.checksum, stored.size) is None
    assert store.local_path(stored.relpath, stored.checksum, stored.size).read_bytes() == content
    assert store.read_range(stored.relpath, 10, 100) == content[10:110]  # transfers' parts
    assert store.read_range(stored.relpath, 99_990, 100) == content[99_990:]
    assert list(store.files()) == [stored.relpath]
    assert store.unregistered({stored.relpath.as_posix()}) == []
    assert store.unregistered(set()) == [stored.relpath]


def test_large_files_go_up_in_parts_and_come_back_whole(backend: dict[str, Any]) -> None:
    store = backend["store"]
    content = os.urandom(20 << 20)  # above the 8 MB multipart threshold: 3 parts
    stored = _stage(store, content).commit()
    assert store.read_verified(stored.relpath, stored.checksum) == content


def test_a_failed_write_leaves_nothing(backend: dict[str, Any]) -> None:
    store = backend["store"]

    def broken(fh: Any) -> None:
        fh.write(b"half")
        raise OSError("disk went away")

    with pytest.raises(OSError, match="went away"):
        store.stage("calexp", DID, broken)
    assert list(store.files()) == [] and store.unregistered(set()) == []


def test_an_uncommitted_stage_is_never_visible(backend: dict[str, Any]) -> None:
    store = backend["store"]
    staged = _stage(store, b"x" * 1000)
    assert [p for p in store.files() if not FileDatastore.is_temporary(p)] == []
    staged.discard()
    assert store.unregistered(set()) == []


def test_damage_and_loss_are_found(backend: dict[str, Any]) -> None:
    store = backend["store"]
    content = os.urandom(5000)
    stored = _stage(store, content).commit()
    flipped = bytearray(content)
    flipped[2500] ^= 1
    backend["corrupt"](stored.relpath, bytes(flipped))
    assert "checksum" in store.check(stored.relpath, stored.checksum, stored.size)
    with pytest.raises(DataCorruptionError):
        store.read_verified(stored.relpath, stored.checksum)
    with pytest.raises(DataCorruptionError):
        store.local_path(stored.relpath, stored.checksum, stored.size)
    backend["corrupt"](stored.relpath, content[:100])
    assert "size" in store.check(stored.relpath, stored.checksum, stored.size)
    store.remove(stored.relpath)
    assert store.check(stored.relpath, stored.checksum, stored.size) == "missing"
    store.remove(stored.relpath)  # twice is fine
    assert list(store.files()) == []


def test_repository_on_either_backend(backend: dict[str, Any]) -> None:
    root = backend["root"] / "repo"
    repo = Repository.open(root, datastore_url=backend["url"])
    rng = np.random.default_rng(3)
    exposure = Exposure(
        rng.normal(100.0, 5.0, (60, 70)).astype(np.float32),
        psf=GaussianPsf(1.5), info=VisitInfo(gain=1.5, mjd=60000.5),
    )  # fmt: skip
    ref = repo.put_exposure(exposure, "calexp", DID)
    assert repo.put_exposure(exposure, "calexp", DID).checksum == ref.checksum  # idempotent
    back = repo.get_exposure("calexp", DID)
    assert np.abs(back.image - exposure.image).max() < 0.5 * 5.0 / 16 * 1.1  # lossy16
    assert repo.verify() == [] and repo.unregistered() == []
    raw_bytes = repo.get_bytes("calexp", DID)
    assert hashlib.sha256(raw_bytes).hexdigest() == ref.checksum
    # Reopening finds the datastore recorded in skydm-repo.json.
    repo.close()
    again = Repository.open(root)
    assert type(again.datastore) is type(repo.datastore)
    assert again.get_bytes("calexp", DID) == raw_bytes
    other = DataId("skysim", detector=2, visit=12, band="r")
    new = again.put_exposure(exposure, "calexp", other)
    again.remove("calexp", other)
    gone = again.datastore.check(relpath_for("calexp", other, new.checksum), new.checksum, new.size)
    assert gone == "missing"
    again.close()


def test_bad_datastore_urls_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadValueError, match="s3://BUCKET"):
        Repository.open(tmp_path / "r", datastore_url="http://bucket/x")
    assert not (tmp_path / "r").exists()
