"""The object-store datastore: the file datastore's layout and checksums on S3.

Datasets live under ``s3://bucket/prefix/`` with exactly the relative paths
of :func:`~skydm.repo.datastore.relpath_for` (so a repository can be copied
between a directory and a bucket as it is).  A write is:

1. :meth:`S3Datastore.stage` writes a local temporary file (in the
   repository's ``.s3-staging/``), fsyncs it and computes its SHA-256, as
   the file datastore does, so that codec checks run on a real file;
2. :meth:`S3StagedFile.commit` uploads it with boto3's managed transfer,
   multipart above 8 MB, the SHA-256 in the object's metadata.  S3 makes an
   object visible only when its upload completes (``CompleteMultipartUpload``),
   so a kill at any point leaves no partial object — at worst an abandoned
   multipart upload, which is not a file; the repository registers the
   dataset only after ``commit`` returns.

Reads download and check the SHA-256 against the registry's;
:meth:`S3Datastore.local_path` keeps a verified copy in the repository's
``.s3-cache/`` for readers that need a file (``read_exposure``).

It needs boto3 (the ``s3`` extra).  The endpoint comes from
``SKYDM_S3_ENDPOINT_URL`` (any S3-compatible store: MinIO, Ceph, moto's
server) and the credentials from boto3's usual sources.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePath, PurePosixPath
from typing import Any, BinaryIO

from skydm.errors import BadValueError, DataCorruptionError, require_extra
from skydm.repo.atomic import sha256_file
from skydm.repo.dataid import DataId, check_dataset_type
from skydm.repo.datastore import StoredFile, relpath_for

MULTIPART_BYTES = 8 << 20
STAGING = ".s3-staging"
CACHE = ".s3-cache"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``(bucket, prefix)`` (prefix without slashes at the ends)."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise BadValueError("datastore URL", url, "s3://BUCKET[/PREFIX]")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


def s3_client() -> Any:
    """A boto3 S3 client for ``SKYDM_S3_ENDPOINT_URL`` (or AWS when unset)."""
    boto3 = require_extra("boto3", "s3")
    endpoint = os.environ.get("SKYDM_S3_ENDPOINT_URL") or None
    return boto3.client("s3", endpoint_url=endpoint)


class S3StagedFile:
    """A staged local file waiting to be uploaded."""

    def __init__(
        self, store: S3Datastore, tmp: Path, dataset_type: str, data_id: DataId, checksum: str
    ) -> None:
        self.store, self.tmp = store, tmp
        self.checksum = checksum
        self.size = tmp.stat().st_size
        self.relpath = relpath_for(dataset_type, data_id, checksum)

    def commit(self) -> StoredFile:
        """Upload the file (multipart when large); the object appears only when complete."""
        boto3_s3 = require_extra("boto3.s3.transfer", "s3")
        config = boto3_s3.TransferConfig(
            multipart_threshold=MULTIPART_BYTES, multipart_chunksize=MULTIPART_BYTES
        )
        self.store.client.upload_file(
            str(self.tmp), self.store.bucket, self.store.key(self.relpath),
            ExtraArgs={"Metadata": {"sha256": self.checksum}}, Config=config,
        )  # fmt: skip
        self.discard()
        return StoredFile(self.relpath, self.checksum, self.size)

    def discard(self) -> None:
        """Delete the local temporary file."""
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class S3Datastore:
    """Dataset files in an S3 bucket, in the file datastore's layout.

    Parameters
    ----------
    url : str
        ``s3://bucket/prefix``.
    local : pathlib.Path
        The repository directory, for staging and the verified read cache.
    client : optional
        A boto3 S3 client (by default :func:`s3_client`).
    """

    def __init__(self, url: str, local: Path, *, client: Any = None) -> None:
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self.root = Path(local)
        self.client = client if client is not None else s3_client()

    def key(self, relpath: str | PurePath) -> str:
        """The object key of a relative path."""
        rel = PurePosixPath(PurePath(relpath).as_posix())
        return f"{self.prefix}/{rel}" if self.prefix else str(rel)

    def stage(
        self, dataset_type: str, data_id: DataId, write: Callable[[BinaryIO], None]
    ) -> S3StagedFile:
        """Write a local temporary file with ``write(fh)``, fsync it and checksum it."""
        check_dataset_type(dataset_type)
        folder = self.root / STAGING
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dataset_type}-", suffix=".tmp", dir=folder)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            checksum = sha256_file(tmp)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return S3StagedFile(self, tmp, dataset_type, data_id, checksum)

    def adopt(
        self, dataset_type: str, data_id: DataId, path: Path, checksum: str
    ) -> S3StagedFile:
        """Stage a complete local file (moved into the staging folder) with its known SHA-256."""
        check_dataset_type(dataset_type)
        folder = self.root / STAGING
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{dataset_type}-{path.name}.tmp"
        os.replace(path, tmp)
        return S3StagedFile(self, tmp, dataset_type, data_id, checksum)

    def abspath(self, relpath: str | PurePath) -> Path:
        """Where :meth:`local_path` keeps the verified copy of a stored file."""
        return self.root / CACHE / PurePath(relpath)

    def _get(self, relpath: str | PurePath) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(relpath))
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{self.url}/{PurePath(relpath).as_posix()}") from None
        return bytes(response["Body"].read())

    def read_range(self, relpath: str | PurePath, offset: int, length: int) -> bytes:
        """``length`` bytes of an object from ``offset`` (an HTTP range request)."""
        response = self.client.get_object(
            Bucket=self.bucket, Key=self.key(relpath), Range=f"bytes={offset}-{offset + length - 1}"
        )
        return bytes(response["Body"].read())

    def read_verified(self, relpath: str | PurePath, checksum: str) -> bytes:
        """The object's bytes after checking them against ``checksum``.

        Raises
        ------
        DataCorruptionError
            When the SHA-256 differs.
        FileNotFoundError
            When there is no such object.
        """
        data = self._get(relpath)
        actual = hashlib.sha256(data).hexdigest()
        if actual != checksum:
            raise DataCorruptionError(
                f"{self.url}/{PurePath(relpath).as_posix()}", checksum, actual
            )
        return data

    def local_path(self, relpath: str | PurePath, checksum: str, size: int) -> Path:
        """A verified local copy of the object (downloaded once, then reused)."""
        path = self.abspath(relpath)
        if path.is_file() and path.stat().st_size == size and sha256_file(path) == checksum:
            return path
        data = self.read_verified(relpath, checksum)
        path.parent.mkdir(parents=True, exist_ok=True)
        from skydm.repo.atomic import atomic_write_bytes

        atomic_write_bytes(path, data)
        return path

    def check(self, relpath: str | PurePath, checksum: str, size: int) -> str | None:
        """``None`` if the object is intact, else ``"missing"`` or ``"damaged: ..."``."""
        try:
            data = self._get(relpath)
        except FileNotFoundError:
            return "missing"
        if len(data) != size:
            return f"damaged: size {len(data)} bytes, recorded {size}"
        actual = hashlib.sha256(data).hexdigest()
        if actual != checksum:
            return f"damaged: checksum {actual}, recorded {checksum}"
        return None

    def remove(self, relpath: str | PurePath) -> None:
        """Delete a stored object and its cached copy (no error if gone)."""
        if PurePath(relpath).parts[0] == STAGING:  # a staged file of an interrupted write
            with contextlib.suppress(FileNotFoundError):
                (self.root / relpath).unlink()
            return
        self.client.delete_object(Bucket=self.bucket, Key=self.key(relpath))
        with contextlib.suppress(FileNotFoundError):
            self.abspath(relpath).unlink()

    def files(self) -> Iterator[PurePosixPath]:
        """Every object of the datastore's layout under the prefix."""
        paginator = self.client.get_paginator("list_objects_v2")
        start = f"{self.prefix}/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
            for item in page.get("Contents", []):
                rel = PurePosixPath(item["Key"][len(start) :])
                if len(rel.parts) > 1 and rel.name.startswith(f"{rel.parts[0]}_"):
                    yield rel

    def unregistered(self, registered: set[str]) -> list[PurePosixPath]:
        """Objects no dataset refers to, plus staged files of interrupted writes."""
        staged = [PurePosixPath(STAGING, p.name) for p in (self.root / STAGING).glob("*.tmp")]
        return sorted([p for p in self.files() if p.as_posix() not in registered] + staged)

    def clear_cache(self) -> None:
        """Delete the local read cache."""
        shutil.rmtree(self.root / CACHE, ignore_errors=True)
