"""S3 repositories from the command line: ``ingest --datastore``, ``transfer --to-datastore``.

Against moto's S3 server on 127.0.0.1 (real HTTP, real boto3), configured
only through the standard ``AWS_*`` variables, as a user would.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from skydm.archive.transfer import TransferConfig, transfer
from skydm.cli.main import main
from skydm.repo import DataId, Repository
from skydm.repo.s3datastore import MULTIPART_BYTES, s3_client
from skydm_testing import free_port, moto_s3_server

SRC = Path(__file__).resolve().parents[2] / "src"
_AWS = {
    "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}  # fmt: skip


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_s3_server() as url:
        yield url


@pytest.fixture
def aws(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The standard variables pointing at the moto server (no skydm-specific one)."""
    monkeypatch.delenv("SKYDM_S3_ENDPOINT_URL", raising=False)
    env = {**_AWS, "AWS_ENDPOINT_URL": endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _objects(bucket: str, prefix: str) -> list[str]:
    listing = s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _checksums(root: Path) -> dict[str, str]:
    with Repository.open(root, create=False) as repo:
        return {str(r.data_id): r.checksum for r in repo.query(dataset_type="raw")}


def test_ingest_creates_an_s3_repository(aws: dict[str, str], tmp_path: Path, capsys) -> None:
    from skydm.sim import SurveyConfig, simulate_survey, write_survey

    cfg = SurveyConfig(seed=3, shape=(96, 96), n_visits=2, n_stars=20, n_galaxies=2)
    raws = write_survey(simulate_survey(cfg), tmp_path / "raws", clean=False)
    root = tmp_path / "repo"
    url = "s3://new-bucket/archive/site"
    assert main(["ingest", *map(str, raws), "--repo", str(root), "--datastore", url, "-q"]) == 0
    keys = _objects("new-bucket", "archive/site/")
    assert len(keys) == 2 and all(k.startswith("archive/site/raw/skysim/") for k in keys)
    with Repository.open(root, create=False) as repo:
        refs = repo.query(dataset_type="raw")
        assert {f"archive/site/{r.path.relative_to(repo.datastore.abspath('')).as_posix()}"
                for r in refs} == set(keys)  # fmt: skip
        for ref in refs:  # the object is the file the registry describes
            body = s3_client().get_object(Bucket="new-bucket", Key=keys[0])["Body"].read()
            assert hashlib.sha256(body).hexdigest() in {r.checksum for r in refs}
            assert repo.get_bytes("raw", ref.data_id)
        assert repo.verify() == []
    # The datastore is recorded: a second ingest finds it without --datastore.
    assert main(["ingest", *map(str, raws), "--repo", str(root), "-q"]) == 0
    assert "present" in capsys.readouterr().out
    assert len(_objects("new-bucket", "archive/site/")) == 2


def _source_with_big_raws(root: Path, n: int) -> list[int]:
    """A directory repository with ``n`` incompressible 'raws' just over 1.5 multipart parts."""
    rng = np.random.default_rng(18)
    sizes = []
    with Repository.open(root) as repo:
        for k in range(n):
            blob = rng.integers(0, 256, MULTIPART_BYTES * 3 // 2, dtype=np.uint8).tobytes()
            repo.put_file(lambda fh, b=blob: fh.write(b), "raw", DataId("skysim", 1, k + 1, "r"))
            sizes.append(len(blob))
    return sizes


def test_transfer_to_an_s3_repository(aws: dict[str, str], tmp_path: Path, capsys) -> None:
    _source_with_big_raws(tmp_path / "summit", 2)
    dest = tmp_path / "archive"
    args = ["transfer", "--from", str(tmp_path / "summit"), "--to", str(dest), "--quiet"]
    assert main([*args, "--to-datastore", "s3://archive-bucket/raws"]) == 0
    assert "sent 2" in capsys.readouterr().out
    assert len(_objects("archive-bucket", "raws/raw/")) == 2
    assert _checksums(dest) == _checksums(tmp_path / "summit")
    with Repository.open(dest, create=False) as repo:
        assert repo.verify() == [] and repo.unregistered() == []
    assert main(args) == 0  # the recorded S3 datastore again: nothing to send
    assert "present 2" in capsys.readouterr().out


def test_kill_9_during_a_multipart_upload_registers_nothing_and_resends_nothing(
    aws: dict[str, str], tmp_path: Path
) -> None:
    sizes = _source_with_big_raws(tmp_path / "summit", 2)
    dest = tmp_path / "archive"
    env = {**os.environ, "PYTHONPATH": str(SRC), "SKYDM_TEST_PAUSE": "upload:1"}
    cmd = [sys.executable, "-m", "skydm", "transfer", "--from", str(tmp_path / "summit"),
           "--to", str(dest), "--to-datastore", "s3://kill-bucket/raws", "--streams", "1",
           "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    for line in proc.stderr:
        if "skydm-test-pause upload 1" in line:
            break
        assert time.monotonic() < deadline, "the transfer never reached the upload"
    os.kill(proc.pid, signal.SIGKILL)  # one part of the first file is up, the upload open
    proc.wait(timeout=30)
    assert _objects("kill-bucket", "raws/") == []  # no object until the upload completes
    uploads = s3_client().list_multipart_uploads(Bucket="kill-bucket").get("Uploads", [])
    assert len(uploads) == 1
    assert _checksums(dest) == {}  # and nothing registered
    with Repository.open(tmp_path / "summit") as src, Repository.open(dest) as repo:
        report = transfer(src, repo, TransferConfig(streams=1))
        assert report.ok
        # The received file came from its part journal: only the other file travelled.
        assert report.bytes_sent == sizes[1]
        assert repo.verify() == [] and repo.unregistered() == []
    assert _checksums(dest) == _checksums(tmp_path / "summit")
    assert len(_objects("kill-bucket", "raws/raw/")) == 2


def _ingest_error(tmp_path: Path, capsys, url: str) -> tuple[int, list[str]]:
    raw = tmp_path / "x.fits"
    from astropy.io import fits

    fits.PrimaryHDU(np.zeros((8, 8), np.uint16)).writeto(raw, overwrite=True)
    status = main(["ingest", str(raw), "--repo", str(tmp_path / "repo"), "--datastore", url])
    return status, capsys.readouterr().err.strip().splitlines()


def test_an_unreachable_endpoint_is_one_line_and_creates_nothing(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in _AWS.items():
        monkeypatch.setenv(key, value)
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.delenv("SKYDM_S3_ENDPOINT_URL", raising=False)
    status, err = _ingest_error(tmp_path, capsys, "s3://b/p")
    assert status == 1 and len(err) == 1
    assert "cannot reach the S3 endpoint" in err[0] and dead in err[0] and "s3://b/p" in err[0]
    assert not (tmp_path / "repo" / "skydm-repo.json").exists()


def test_a_bad_bucket_name_is_a_usage_error(aws: dict[str, str], tmp_path: Path, capsys) -> None:
    status, err = _ingest_error(tmp_path, capsys, "s3://b/p")
    assert status == 2 and len(err) == 1 and "bucket name" in err[0] and "s3://b/p" in err[0]


def test_missing_credentials_are_one_line(
    endpoint: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    status, err = _ingest_error(tmp_path, capsys, "s3://b/p")
    assert status == 1 and len(err) == 1 and "no S3 credentials" in err[0]
    assert "AWS_ACCESS_KEY_ID" in err[0]


def test_refused_credentials_are_one_line(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3

    # moto checks signatures against its IAM users once its first actions are spent.
    with moto_s3_server({"INITIAL_NO_AUTH_ACTION_COUNT": "4"}) as url:
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="x")  # fmt: skip
        iam.create_user(UserName="archivist")
        policy = ('{"Version": "2012-10-17", "Statement": '
                  '[{"Effect": "Allow", "Action": "*", "Resource": "*"}]}')  # fmt: skip
        iam.put_user_policy(UserName="archivist", PolicyName="all", PolicyDocument=policy)
        key = iam.create_access_key(UserName="archivist")["AccessKey"]
        monkeypatch.setenv("AWS_ENDPOINT_URL", url)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.delenv("SKYDM_S3_ENDPOINT_URL", raising=False)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        status, err = _ingest_error(tmp_path, capsys, "s3://auth-bucket/p")
        assert status == 1 and len(err) == 1
        assert "refused the credentials" in err[0] and "AWS_SECRET_ACCESS_KEY" in err[0]
        assert not (tmp_path / "repo" / "skydm-repo.json").exists()
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])  # the right ones
        _ingest_error(tmp_path, capsys, "s3://auth-bucket/p")  # (the file itself is no raw)
        assert (tmp_path / "repo" / "skydm-repo.json").exists()  # the store let us in
        assert "auth-bucket" in [b["Name"] for b in s3_client().list_buckets()["Buckets"]]
