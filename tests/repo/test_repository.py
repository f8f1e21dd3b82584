"""The repository: atomic, checksummed puts and gets, the layout, scrubbing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from skydm.errors import BadValueError, ConflictError, DataCorruptionError, UserError
from skydm.image import Exposure, GaussianPsf, VisitInfo
from skydm.repo import DataId, DatasetNotFoundError, Repository, relpath_for


def _exposure(seed: int = 0, shape: tuple[int, int] = (40, 50)) -> Exposure:
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 5.0, shape).astype(np.float32)
    return Exposure(image, psf=GaussianPsf(1.5), info=VisitInfo(gain=1.5, mjd=60000.5))


DID = DataId("skysim", detector=1, visit=12, band="r")


def test_put_get_exposure_round_trip(tmp_path: Path) -> None:
    repo = Repository.open(tmp_path / "repo")
    exp = _exposure()
    ref = repo.put_exposure(exp, "calexp", DID)
    assert ref.path.is_file() and ref.size == ref.path.stat().st_size
    assert ref.path == tmp_path / "repo" / relpath_for("calexp", DID, ref.checksum)
    assert ref.path.relative_to(repo.root).parts[:5] == ("calexp", "skysim", "r", "12",
                                                         ref.path.name)  # fmt: skip
    assert ref.path.name.startswith("calexp_skysim_r_12_1-")
    got = repo.get_exposure("calexp", DID)
    # calexps are written with the lossy16 recipe by default: within half a quantum (σ/16).
    assert np.abs(got.image - exp.image).max() <= 0.5 * 5.0 / 16 * 1.1
    # ...and the variance within half of its quantum, median(variance)/16².
    assert np.abs(got.var - exp.var).max() <= 0.5 * np.median(exp.var) / 16**2 * 1.01
    assert np.array_equal(got.msk, exp.msk)
    exact = repo.put_exposure(exp, "plainexp", DID)  # a type with no recipe: as it was
    got = repo.get_exposure("plainexp", DID)
    assert exact.path.name.startswith("plainexp_")
    assert np.array_equal(got.image, exp.image) and np.array_equal(got.var, exp.var)
    assert got.info.visit == 12 and got.info.band == "r" and got.info.detector == 1
    assert got.psf is not None and abs(got.psf.fwhm - exp.psf.fwhm) < 1e-6  # type: ignore[union-attr]
    assert repo.get_path("calexp", DID) == ref.path
    assert [r.data_id for r in repo.query(dataset_type="calexp")] == [DID]
    repo.close()


def test_skycell_layout(tmp_path: Path) -> None:
    repo = Repository.open(tmp_path)
    cell = DataId("skysim", band="g", skycell="t3,p7")
    ref = repo.put_exposure(_exposure(), "coadd", cell)
    rel = ref.path.relative_to(repo.root)
    assert rel.parts[:4] == ("coadd", "skysim", "g", "skycell-t3,p7")
    assert rel.name.startswith("coadd_skysim_g_t3,p7_0_0-")
    assert repo.query(skycell="t3,p7")[0].path == ref.path


def test_same_content_is_idempotent_and_different_content_is_refused(tmp_path: Path) -> None:
    repo = Repository.open(tmp_path)
    first = repo.put_exposure(_exposure(1), "calexp", DID)
    again = repo.put_exposure(_exposure(1), "calexp", DID)
    assert again.checksum == first.checksum and again.path == first.path
    with pytest.raises(ConflictError, match="replace"):
        repo.put_exposure(_exposure(2), "calexp", DID)
    assert repo.unregistered() == []  # the refused write left nothing behind
    new = repo.put_exposure(_exposure(2), "calexp", DID, replace=True)
    assert new.checksum != first.checksum
    assert not first.path.exists() and new.path.exists()
    assert len(repo.query()) == 1 and repo.verify() == []


def test_corrupted_byte_is_found_by_verify_and_by_read(tmp_path: Path) -> None:
    repo = Repository.open(tmp_path)
    ref = repo.put_exposure(_exposure(), "calexp", DID)
    other = repo.put_exposure(_exposure(3), "calexp", DataId("skysim", 1, 13, "r"))
    data = bytearray(ref.path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the pixels, size unchanged
    ref.path.write_bytes(bytes(data))
    problems = repo.verify()
    assert [(p.kind, p.ref.path) for p in problems] == [("damaged", ref.path)]
    assert "checksum" in problems[0].detail and str(ref.path) in str(problems[0])
    with pytest.raises(DataCorruptionError, match=ref.path.name):
        repo.get_exposure("calexp", DID)
    with pytest.raises(DataCorruptionError):
        repo.get_path("calexp", DID)
    with pytest.raises(DataCorruptionError):
        repo.get_bytes("calexp", DID)
    assert repo.get_path("calexp", other.data_id) == other.path  # the rest is fine
    # Putting the same content again repairs it.
    repo.put_exposure(_exposure(), "calexp", DID)
    assert repo.verify() == []


def test_missing_file_is_reported(tmp_path: Path) -> None:
    repo = Repository.open(tmp_path)
    ref = repo.put_exposure(_exposure(), "calexp", DID)
    ref.path.unlink()
    (problem,) = repo.verify()
    assert problem.kind == "missing" and problem.ref.path == ref.path
    with pytest.raises(DataCorruptionError, match="missing"):
        repo.get_exposure("calexp", DID)


def test_unregistered_files_are_not_damage(tmp_path: Path) -> None:
    repo = Repository.open(tmp_path)
    repo.put_exposure(_exposure(), "calexp", DID)
    orphan = tmp_path / "calexp" / "skysim" / "r" / "99" / "calexp_skysim_r_99_0-0123.fits"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"left by a killed writer")
    temp = orphan.parent / ".calexp-abc.tmp"
    temp.write_bytes(b"half")
    assert repo.verify() == []
    assert sorted(repo.unregistered()) == sorted([orphan, temp])
    assert sorted(repo.clean_unregistered()) == sorted([orphan, temp])
    assert not orphan.exists() and repo.unregistered() == []
    # The registry's own files are never listed.
    assert all("registry" not in p.name for p in repo.unregistered())


def test_files_beside_the_datastore_are_never_leftovers(tmp_path: Path) -> None:
    # A repository directory also holds an APDB, alert archives, catalogs...:
    # none of them may be listed as leftovers, or deleted by verify --clean.
    repo = Repository.open(tmp_path)
    repo.put_exposure(_exposure(), "calexp", DID)
    foreign = [
        tmp_path / "apdb.sqlite3",
        tmp_path / "alerts" / "alerts-visit0000000006-det000.avro",
        tmp_path / "catalog" / "DiaSource" / "part-0.parquet",
        tmp_path / "calexp" / "notes.txt",
    ]
    for path in foreign:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not the datastore's")
    assert repo.unregistered() == []
    assert repo.clean_unregistered() == []
    assert all(path.exists() for path in foreign)


def test_not_found_and_open_errors(tmp_path: Path) -> None:
    repo = Repository.open(tmp_path / "r")
    with pytest.raises(DatasetNotFoundError, match="no 'calexp' dataset"):
        repo.get_exposure("calexp", DID)
    with pytest.raises(DatasetNotFoundError):
        repo.remove("calexp", DID)
    with pytest.raises(UserError, match="no skydm repository"):
        Repository.open(tmp_path / "empty", create=False)
    repo.close()
    # An SQLite repository is never silently switched to another registry.
    with pytest.raises(UserError, match="SQLite file registry.sqlite3"):
        Repository.open(tmp_path / "r", registry_url="postgresql+psycopg://h/db")


def test_remove(tmp_path: Path) -> None:
    repo = Repository.open(tmp_path)
    ref = repo.put_exposure(_exposure(), "diff", DID)
    repo.remove("diff", DID)
    assert not ref.path.exists() and repo.query() == []


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"instrument": "my cam", "band": "r"}, "instrument"),
        ({"instrument": "skysim", "band": "r/i"}, "band"),
        ({"instrument": "skysim", "visit": -1}, "visit"),
        ({"instrument": "skysim", "detector": 1.5}, "detector"),
        ({"instrument": "skysim", "skycell": "../x"}, "skycell"),
    ],
)
def test_data_id_validation_names_the_part(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(BadValueError, match=name):
        DataId(**kwargs)  # type: ignore[arg-type]


def test_data_id_accepts_numpy_integers() -> None:
    d = DataId("skysim", np.int64(2), np.int32(7), "r")  # type: ignore[arg-type]
    assert d == DataId("skysim", 2, 7, "r") and type(d.visit) is int


def test_postgres_registry_is_recorded_and_found_again(
    tmp_path: Path, postgres_url: Callable[[str], str]
) -> None:
    url = postgres_url(f"repo_{uuid.uuid4().hex[:12]}")
    with Repository.open(tmp_path, registry_url=url) as repo:
        repo.put_exposure(_exposure(), "calexp", DID)
    assert json.loads((tmp_path / "skydm-repo.json").read_text())["registry_url"] == url
    assert not (tmp_path / "registry.sqlite3").exists()
    with Repository.open(tmp_path, create=False) as again:  # finds PostgreSQL by itself
        assert [r.data_id for r in again.query()] == [DID]
        assert again.verify() == []
    with pytest.raises(UserError, match="registry"):
        Repository.open(tmp_path, registry_url="sqlite:///elsewhere.db")
