"""``skydm query`` against a repository and a running service, sync and async."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skydm.cli.main import main

from .conftest import Service

QUERY = "SELECT objectId FROM Object WHERE objectId <= 12"


def _ids_csv(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    assert lines[0] == "objectId"
    return sorted(int(x) for x in lines[1:])


@pytest.mark.parametrize("mode", [[], ["--async"]])
def test_query_remote(
    service: Service, tmp_path: Path, mode: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.csv"
    assert (
        main(["query", QUERY, "--url", service.url, "--format", "csv", "--out", str(out), *mode])
        == 0
    )
    assert _ids_csv(out) == list(range(1, 13))
    assert "written" in capsys.readouterr().err


def test_query_local_sync_and_async(catalog_repo: tuple[Path, pa.Table], tmp_path: Path) -> None:
    repo = catalog_repo[0]
    out = tmp_path / "r.parquet"
    assert (
        main(
            [
                "query",
                QUERY,
                "--repo",
                str(repo),
                "--format",
                "parquet",
                "--out",
                str(out),
                "--maxrec",
                "5",
            ]
        )
        == 0
    )
    table = pq.read_table(out)
    ids = table["objectId"].to_pylist()
    assert len(ids) == 5 and set(ids) <= set(range(1, 13))
    assert pq.read_metadata(out).metadata[b"QUERY_STATUS"] == b"OVERFLOW"
    out = tmp_path / "a.csv"
    assert (
        main(["query", QUERY, "--repo", str(repo), "--async", "--format", "csv", "--out", str(out)])
        == 0
    )
    assert _ids_csv(out) == list(range(1, 13))


def test_query_errors_are_one_line(service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "SELECT nothing FROM Object", "--url", service.url]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing" in err[0]
