"""``/hips/`` (the trees ``skydm hips`` built) and the portal at ``/``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from fastapi import FastAPI
from fastapi.testclient import TestClient

from skydm.image.hips import HipsSpec, build_tree
from skydm.image.hips.tiles import SourceImage
from skydm.services.images.hips import install_hips


def small_wcs(ra: float, dec: float, n: int) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [n / 2, n / 2]
    wcs.wcs.cd = np.array([[-1.0, 0.0], [0.0, 1.0]]) * (0.5 / 3600)
    return wcs


@pytest.fixture(scope="module")
def hips_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repo") / "hips"
    n = 128
    image = np.random.default_rng(5).normal(10.0, 1.0, (n, n)).astype(np.float32)
    source = SourceImage("a", image, small_wcs(30.0, -10.0, n))
    build_tree(root / "r", HipsSpec(name="r", title="band r"), [(source, "c")])
    (root.parent / "secret.txt").write_text("not for the web")
    return root


@pytest.fixture()
def client(hips_root: Path) -> TestClient:
    app = FastAPI()
    install_hips(app, hips_root)
    return TestClient(app)


def test_index_lists_the_trees(client: TestClient) -> None:
    page = client.get("/hips/")
    assert page.status_code == 200 and 'href="/hips/r/"' in page.text
    listed = client.get("/hips/?format=json").json()
    assert [t["name"] for t in listed] == ["r"]
    assert listed[0]["obs_title"] == "band r" and listed[0]["hips_tile_format"] == "fits png"
    props = client.get("/hips/r/properties")
    assert props.status_code == 200 and "hips_order" in props.text


def test_tiles_are_served(client: TestClient, hips_root: Path) -> None:
    tile = next((hips_root / "r").glob("Norder*/Dir*/Npix*.fits"))
    rel = tile.relative_to(hips_root / "r").as_posix()
    got = client.get(f"/hips/r/{rel}")
    assert got.status_code == 200 and got.headers["content-type"] == "application/fits"
    assert got.content == tile.read_bytes()
    png = client.get(f"/hips/r/{rel[:-5]}.png")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    allsky = client.get("/hips/r/Norder3/Allsky.fits")
    assert allsky.status_code == 200
    with fits.open(io.BytesIO(allsky.content)) as hdul:
        assert np.isfinite(hdul[0].data).any()
    assert client.get("/hips/r/Moc.fits").status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/hips/r/../secret.txt",
        "/hips/r/%2e%2e/%2e%2e/secret.txt",
        "/hips/..%2fsecret.txt/properties",
        "/hips/r/skydm-hips.json",
        "/hips/r/Norder3/Dir0/Npix99999.fits",
        "/hips/r/Norder3/Dir0/Npix0.exe",
        "/hips/nope/properties",
        "/hips/r/Norder3/../../../etc/passwd",
        "/hips/%2fetc/passwd",
    ],
)
def test_hostile_paths_get_nothing(client: TestClient, path: str) -> None:
    got = client.get(path)
    assert got.status_code == 404, path
    assert b"not for the web" not in got.content and b"root:" not in got.content
