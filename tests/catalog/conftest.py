"""A small catalog (all-sky plus dense patches at the poles and across RA = 0) and engines on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from skydm.catalog import CatalogEngine, load_table, open_engine

N_OBJECTS = 30_000


def make_objects(n: int = N_OBJECTS, seed: int = 7) -> pa.Table:
    """Objects: uniform on the sky, plus patches at both poles and straddling RA = 0."""
    rng = np.random.default_rng(seed)
    k = n // 4
    ra = np.concatenate(
        [
            rng.uniform(0, 360, n - 3 * k),
            rng.uniform(0, 360, 2 * k),  # polar caps
            np.mod(rng.normal(0, 0.05, k), 360.0),  # across RA = 0/360
        ]
    )
    dec = np.concatenate(
        [
            np.degrees(np.arcsin(rng.uniform(-1, 1, n - 3 * k))),
            90 - np.abs(rng.normal(0, 0.05, k)),
            -90 + np.abs(rng.normal(0, 0.05, k)),
            rng.normal(10, 0.05, k),
        ]
    )
    mags = {f"{b}_psfMag": rng.normal(22, 1, n).astype(np.float32) for b in "ugriz"}
    return pa.table({"objectId": np.arange(1, n + 1, dtype=np.int64), "ra": ra, "dec": dec, **mags})


def make_forced(objects: pa.Table, seed: int = 8) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = rng.choice(objects.column("objectId").to_numpy()[:2000], 6000)
    return pa.table(
        {
            "ra": objects.column("ra").to_numpy()[ids - 1],
            "dec": objects.column("dec").to_numpy()[ids - 1],
            "forcedSourceId": np.arange(len(ids), dtype=np.int64),
            "objectId": ids,
            "band": rng.choice(np.array(["g", "r", "i"]), len(ids)),
            "psfFlux": rng.normal(1000, 50, len(ids)),
            "midpointMjdTai": 60000 + rng.uniform(0, 100, len(ids)),
        }
    )


@pytest.fixture(scope="session")
def objects() -> pa.Table:
    return make_objects()


@pytest.fixture(scope="session")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory, objects: pa.Table) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    load_table(root, "Object", objects)
    load_table(root, "ForcedSource", make_forced(objects))
    return root


@pytest.fixture(scope="session", params=["duckdb", "postgresql"])
def engine(request: pytest.FixtureRequest, catalog_dir: Path) -> Iterator[CatalogEngine]:
    if request.param == "duckdb":
        eng = open_engine(catalog_dir)
    else:
        make = request.getfixturevalue("postgres_url")
        eng = open_engine(catalog_dir, make("skydm_catalog_contract"))
    yield eng
    eng.close()
