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
``SKYDM_S3_ENDPOINT_URL``, else the standard ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (any S3-compatible store: MinIO, Ceph, moto's server;
AWS itself when none is set), and the credentials from boto3's usual
sources (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``...).
Every call to the store goes through :func:`s3_errors`, so an unreachable
endpoint, missing or refused credentials, or a missing bucket is one line
naming the URL, the endpoint and what to do, not a traceback.
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

from skydm.errors import BadValueError, DataCorruptionError, SkydmError, UserError, require_extra
from skydm.repo.atomic import sha256_file
from skydm.repo.dataid import DataId, check_dataset_type
from skydm.repo.datastore import StoredFile, _pause_point, relpath_for

MULTIPART_BYTES = 8 << 20
STAGING = ".s3-staging"
CACHE = ".s3-cache"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``(bucket, prefix)`` (prefix without slashes at the ends)."""
    if not url.startswith("s3://") or not url[5:].split("/", 1)[0]:
        raise BadValueError("datastore URL", url, "s3://BUCKET[/PREFIX]")
    bucket, _, prefix = url[5:].partition("/")
    return bucket, prefix.strip("/")


ENDPOINT_VARIABLES = ("SKYDM_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def s3_endpoint() -> str | None:
    """The endpoint URL from the first of :data:`ENDPOINT_VARIABLES` set (``None``: AWS)."""
    return next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), None)


def s3_client() -> Any:
    """A boto3 S3 client for :func:`s3_endpoint` (AWS when none is set).

    Connections time out after 10 s and are retried twice, so that an
    endpoint that is down is reported in seconds, not minutes.
    """
    boto3 = require_extra("boto3", "s3")
    botocore_config = require_extra("botocore.config", "s3")
    config = botocore_config.Config(
        connect_timeout=10, read_timeout=120, retries={"max_attempts": 3, "mode": "standard"}
    )
    # A session of its own: boto3's default one caches the credentials it found first.
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=s3_endpoint(), config=config)


_REFUSED = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
    "InvalidToken", "ExpiredToken",
}  # fmt: skip


@contextlib.contextmanager
def s3_errors(url: str) -> Iterator[None]:
    """Turn boto3's errors about reaching or using the store into one-line skydm errors.

    Raises
    ------
    UserError
        Missing or refused credentials, a missing bucket.
    SkydmError
        The endpoint cannot be reached.
    """
    botocore = require_extra("botocore.exceptions", "s3")
    endpoint = s3_endpoint() or "AWS (no AWS_ENDPOINT_URL set)"
    try:
        yield
    except botocore.NoCredentialsError:
        raise UserError(
            f"{url}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(or AWS_PROFILE)"
        ) from None
    except (botocore.EndpointConnectionError, botocore.ConnectTimeoutError) as exc:
        raise SkydmError(
            f"{url}: cannot reach the S3 endpoint {endpoint} ({exc}); check AWS_ENDPOINT_URL "
            "and that the server is running"
        ) from None
    except botocore.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _REFUSED:
            raise UserError(
                f"{url}: the S3 endpoint {endpoint} refused the credentials ({code}); check "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ) from None
        if code in ("NoSuchBucket", "404"):
            raise UserError(
                f"{url}: the bucket does not exist at {endpoint}; create it "
                "(e.g. aws s3 mb s3://BUCKET) or fix the datastore URL"
            ) from None
        if code == "InvalidBucketName":
            raise BadValueError(
                "datastore URL", url, "a valid bucket name (3-63 lowercase letters, digits, -.)"
            ) from None
        if code == "NoSuchKey":
            raise  # a missing object: the caller's FileNotFoundError
        message = " ".join(str(error.get("Message", exc)).split())
        raise SkydmError(f"{url}: the S3 endpoint {endpoint} answered {code}: {message}") from None


def _multipart_upload(
    client: Any, bucket: str, key: str, fh: BinaryIO, meta: dict[str, str]
) -> None:
    """``CreateMultipartUpload``, the parts, ``CompleteMultipartUpload`` (aborted on error).

    Until the last call returns there is no object under ``key``: a reader,
    a listing or the registry never sees part of a file.
    """
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, Metadata=meta)
    upload_id = upload["UploadId"]
    parts = []
    try:
        for number in range(1, 10_001):  # S3 allows 10,000 parts
            chunk = fh.read(MULTIPART_BYTES)
            if not chunk:
                break
            sent = client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=chunk
            )
            parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            _pause_point("upload")
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        with contextlib.suppress(Exception):
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


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
        """Upload the file (in parts when large); the object appears only when complete."""
        store, key = self.store, self.store.key(self.relpath)
        client, meta = store.client, {"sha256": self.checksum}
        with s3_errors(store.url), open(self.tmp, "rb") as fh:
            if self.size <= MULTIPART_BYTES:
                client.put_object(Bucket=store.bucket, Key=key, Body=fh.read(), Metadata=meta)
            else:
                _multipart_upload(client, store.bucket, key, fh, meta)
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

    def connect(self, *, create: bool = False) -> None:
        """Check that the store answers and the bucket exists (creating it if ``create``).

        Raises
        ------
        UserError, SkydmError
            One line naming the URL, the endpoint and what to do (:func:`s3_errors`).
        """
        botocore = require_extra("botocore.exceptions", "s3")
        with s3_errors(self.url):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except botocore.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if not (create and code in ("404", "NoSuchBucket")):
                    raise
                self.client.create_bucket(Bucket=self.bucket)

    def key(self, relpath: str | PurePath) -> str:
        """The object key of a relative path (or of an :meth:`abspath`, as files allow)."""
        path = PurePath(relpath)
        if path.is_absolute():
            path = path.relative_to(self.root / CACHE)
        rel = PurePosixPath(path.as_posix())
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

    def adopt(self, dataset_type: str, data_id: DataId, path: Path, checksum: str) -> S3StagedFile:
        """Stage a complete local file with its known SHA-256, where it is.

        It is uploaded from its place and deleted once the object exists; a
        kill before that leaves it to its writer (a transfer's part journal),
        so that nothing received is received twice.
        """
        check_dataset_type(dataset_type)
        return S3StagedFile(self, path, dataset_type, data_id, checksum)

    def abspath(self, relpath: str | PurePath) -> Path:
        """Where :meth:`local_path` keeps the verified copy of a stored file."""
        return self.root / CACHE / PurePath(relpath)

    def _get(self, relpath: str | PurePath) -> bytes:
        try:
            with s3_errors(self.url):
                response = self.client.get_object(Bucket=self.bucket, Key=self.key(relpath))
                return bytes(response["Body"].read())
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{self.url}/{PurePath(relpath).as_posix()}") from None

    def read_range(self, relpath: str | PurePath, offset: int, length: int) -> bytes:
        """``length`` bytes of an object from ``offset`` (an HTTP range request)."""
        with s3_errors(self.url):
            response = self.client.get_object(
                Bucket=self.bucket, Key=self.key(relpath),
                Range=f"bytes={offset}-{offset + length - 1}",
            )  # fmt: skip
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
        with s3_errors(self.url):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(relpath))
        with contextlib.suppress(FileNotFoundError):
            self.abspath(relpath).unlink()

    def files(self) -> Iterator[PurePosixPath]:
        """Every object of the datastore's layout under the prefix."""
        paginator = self.client.get_paginator("list_objects_v2")
        start = f"{self.prefix}/" if self.prefix else ""
        with s3_errors(self.url):
            pages = list(paginator.paginate(Bucket=self.bucket, Prefix=start))
        for page in pages:
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
