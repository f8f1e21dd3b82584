"""PLIO_1 is refused, with the reason, for data it cannot hold (issue 14, item 13)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skydm.archive.restore import restore_raw_bytes
from skydm.cli.main import main
from skydm.repo import Repository


def test_plio_refused_for_uint16_raws_with_bzero(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = data_dir / "eso085_null_pair" / "aligned_eso085-030-004.fit"  # uint16: BZERO 32768
    repo = tmp_path / "repo"
    assert main(["ingest", "-q", "--repo", str(repo), "--codec", "PLIO_1", str(raw)]) == 1
    err = capsys.readouterr().err
    assert str(raw) in err
    assert "PLIO_1 holds stored values from 0 to 16777215 only" in err
    assert "from -31618 to 32767 (pixels stored with BZERO = 32768" in err
    assert "use RICE_1" in err
    assert "please report" not in err and "unexpectedly" not in err
    with Repository.open(repo, create=False) as r:
        assert r.query() == []
    assert not list((repo).rglob("*.fits"))  # nothing half-written


def test_plio_still_used_where_it_fits(data_dir: Path, tmp_path: Path) -> None:
    raw = data_dir / "ntt_single" / "image.fits"  # int16, all values >= 0
    repo = tmp_path / "repo"
    assert main(["ingest", "-q", "--repo", str(repo), "--codec", "PLIO_1", str(raw)]) == 0
    with Repository.open(repo, create=False) as r:
        (ref,) = r.query()
        assert restore_raw_bytes(r, ref.data_id) == raw.read_bytes()
        assert b"PLIO_1" in r.datastore.abspath(ref.path).read_bytes()[:20_000]
