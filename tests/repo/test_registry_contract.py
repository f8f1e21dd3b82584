"""One contract suite that every registry backend passes: SQLite file and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skydm.errors import BadValueError, ConflictError
from skydm.repo import DataId, DatasetRef, Registry, SqlRegistry


@pytest.fixture(params=["sqlite", "postgres"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Registry]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.sqlite3'}"
    else:
        make: Callable[[str], str] = request.getfixturevalue("postgres_url")
        url = make(f"registry_{uuid.uuid4().hex[:12]}")
    reg = SqlRegistry(url)
    yield reg
    reg.close()


def _ref(dataset_type: str, data_id: DataId, name: str = "a", size: int = 10) -> DatasetRef:
    return DatasetRef(
        dataset_type,
        data_id,
        Path(f"{dataset_type}/{name}.fits"),
        name * 64 if len(name) == 1 else name,
        size,
        meta={"source": name, "n": 3},
    )


def test_insert_find_round_trip(registry: Registry) -> None:
    d = DataId("skysim", detector=2, visit=12, band="r")
    registry.insert(_ref("raw", d))
    got = registry.find("raw", d)
    assert got is not None
    assert got.data_id == d and got.checksum == "a" * 64 and got.size == 10
    assert got.path == Path("raw/a.fits") and got.meta == {"source": "a", "n": 3}
    assert got.created is not None and got.created.tzinfo is not None
    assert registry.find("calexp", d) is None
    assert registry.find("raw", DataId("skysim", detector=2, visit=13, band="r")) is None


def test_duplicate_data_id_is_refused(registry: Registry) -> None:
    d = DataId("skysim", 0, 5, "g")
    registry.insert(_ref("raw", d, "a"))
    with pytest.raises(ConflictError, match="already registered"):
        registry.insert(_ref("raw", d, "b"))
    # The same data ID under another dataset type is a different dataset.
    registry.insert(_ref("calexp", d, "c"))
    assert len(registry.query()) == 2


def test_coadds_without_and_with_skycell_are_unique(registry: Registry) -> None:
    cell = DataId("skysim", band="r", skycell="t12,p5")
    registry.insert(_ref("coadd", cell, "a"))
    with pytest.raises(ConflictError):
        registry.insert(_ref("coadd", cell, "b"))
    plain = DataId("skysim", band="r")
    registry.insert(_ref("coadd", plain, "c"))
    # NULL-distinct semantics must not let a second no-skycell dataset in.
    with pytest.raises(ConflictError):
        registry.insert(_ref("coadd", plain, "d"))
    found = registry.find("coadd", cell)
    assert found is not None and found.data_id.skycell == "t12,p5"
    found_plain = registry.find("coadd", plain)
    assert found_plain is not None and found_plain.data_id.skycell is None


def test_replace_returns_the_old_ref(registry: Registry) -> None:
    d = DataId("generic", 0, 201512270000000001, "Clear")
    assert registry.replace(_ref("raw", d, "a")) is None
    old = registry.replace(_ref("raw", d, "b"))
    assert old is not None and old.checksum == "a" * 64
    now = registry.find("raw", d)
    assert now is not None and now.checksum == "b" * 64
    assert len(registry.query(dataset_type="raw")) == 1


def test_query_filters_and_order(registry: Registry) -> None:
    for visit in (3, 1, 2):
        for band in ("r", "g"):
            registry.insert(_ref("raw", DataId("skysim", 0, visit, band), f"{band}{visit}"))
    registry.insert(_ref("coadd", DataId("skysim", band="r", skycell="c1"), "coadd"))
    assert len(registry.query()) == 7
    r = registry.query(dataset_type="raw", band="r")
    assert [x.data_id.visit for x in r] == [1, 2, 3]
    assert [x.data_id.band for x in registry.query(visit=2)] == ["g", "r"]
    assert [x.dataset_type for x in registry.query(skycell="c1")] == ["coadd"]
    assert registry.query(instrument="generic") == []
    assert registry.query(dataset_type="raw", detector=1) == []


def test_remove_and_paths(registry: Registry) -> None:
    d1, d2 = DataId("skysim", 0, 1, "r"), DataId("skysim", 0, 2, "r")
    registry.insert(_ref("raw", d1, "a"))
    registry.insert(_ref("raw", d2, "b"))
    assert registry.paths() == {"raw/a.fits", "raw/b.fits"}
    removed = registry.remove("raw", d1)
    assert removed is not None and removed.path == Path("raw/a.fits")
    assert registry.remove("raw", d1) is None
    assert registry.paths() == {"raw/b.fits"}


def test_large_visit_ids_round_trip(registry: Registry) -> None:
    # generic visits are YYYYMMDD * 1e10 + hash: they need 64-bit columns.
    d = DataId("generic", 0, 209912319999999999, "i")
    registry.insert(_ref("raw", d))
    got = registry.find("raw", d)
    assert got is not None and got.data_id.visit == 209912319999999999


def test_bad_dataset_type_is_refused(registry: Registry) -> None:
    with pytest.raises(BadValueError, match="dataset_type"):
        registry.insert(_ref("Raw Data", DataId("skysim", 0, 1, "r")))
