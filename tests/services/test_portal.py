"""``/hips/`` (the trees ``skydm hips`` built) and the portal at ``/``."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import httpx
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


# --- the portal in headless Chromium ---------------------------------------------------

CENTRE = (10.0, 20.0)


def portal_repo(root: Path) -> dict[str, int]:
    """A repository with g, r, i coadds at CENTRE, their trees, and catalogs on them."""
    import pyarrow as pa

    from skydm.catalog import load_table
    from skydm.image import Exposure
    from skydm.image.hips import build_repository_hips
    from skydm.repo import DataId, Repository

    n = 256
    wcs = small_wcs(*CENTRE, n)
    rng = np.random.default_rng(21)
    xs, ys = rng.uniform(20, n - 20, 30), rng.uniform(20, n - 20, 30)
    ra, dec = wcs.all_pix2world(xs, ys, 0)
    yy, xx = np.mgrid[:n, :n]
    with Repository.open(root) as repo:
        for k, band in enumerate("gri"):
            image = rng.normal(100.0, 3.0, (n, n))
            for x0, y0 in zip(xs, ys, strict=True):
                image += (200 + 100 * k) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 6)
            exp = Exposure(
                image.astype(np.float32),
                np.full((n, n), 9.0, dtype=np.float32),
                np.zeros((n, n), dtype=np.uint32),
                wcs,
            )
            repo.put_exposure(exp, "coadd", DataId("skysim", 0, 0, band, skycell="c1"))
        build_repository_hips(repo, root / "hips")
    objects = pa.table({"objectId": np.arange(1, 31, dtype=np.int64), "ra": ra, "dec": dec})
    load_table(root / "catalog", "Object", objects)
    dia = pa.table(
        {"diaObjectId": np.arange(100, 105, dtype=np.int64), "ra": ra[:5], "dec": dec[:5]}
    )
    load_table(root / "catalog", "DiaObject", dia)
    sources = pa.table(
        {
            "diaSourceId": np.arange(1000, 1010, dtype=np.int64),
            "diaObjectId": np.repeat(np.arange(100, 105, dtype=np.int64), 2),
            "ra": np.repeat(ra[:5], 2),
            "dec": np.repeat(dec[:5], 2),
            "midpointMjdTai": 60000.0 + np.arange(10.0),
            "psfFlux": rng.uniform(100, 1000, 10),
        }
    )
    load_table(root / "catalog", "DiaSource", sources)
    return {"objects": 30, "dia": 5}


def chromium_driver():  # type: ignore[no-untyped-def]
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver")
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/test does)")
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1000,700",
        "--use-gl=angle",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--ignore-gpu-blocklist",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=DriverService(driver))


def test_portal_shows_the_hips_and_the_catalogs(tmp_path: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from skydm.services.portal import find_aladin

    if find_aladin() is None:
        pytest.skip("Aladin Lite is not installed (npm install aladin-lite; scripts/test does)")
    from tests.services.conftest import Service

    root = tmp_path / "repo"
    truth = portal_repo(root)
    service = Service(root).start()
    driver = chromium_driver()
    try:
        base = service.url.rsplit("/tap", 1)[0]
        driver.get(f"{base}/")
        state: dict[str, Any] = {}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            state = driver.execute_script("return window.portal") or {}
            if state.get("ready") or state.get("errors"):
                break
            time.sleep(0.5)
        assert state.get("ready"), state
        assert state["errors"] == []
        assert state["survey"] == "color"
        assert {t["name"] for t in state["trees"]} == {"g", "r", "i", "color"}
        assert state["objects"] == truth["objects"] and state["diaObjects"] == truth["dia"]
        # Overlays off: what is left over the coverage is the HiPS alone.
        driver.find_element(By.ID, "show-objects").click()
        driver.find_element(By.ID, "show-dia").click()
        view = driver.find_element(By.ID, "aladin-lite-div")
        shot = tmp_path / "portal.png"

        def look() -> tuple[np.ndarray, bool, float]:
            """The view's pixels; whether the HiPS covers its centre; the bright pixels'
            median distance to the nearest Object (where the view puts it now)."""
            xy = driver.execute_script(
                "return window.portal.objectRows.map("
                "r => window.portalAladin.world2pix(r[0], r[1]));"
            )
            view.screenshot(str(shot))
            with Image.open(shot) as picture:
                pixels = np.asarray(picture.convert("RGB")).astype(float)
            height, width = pixels.shape[:2]
            box = pixels[height // 2 - 60 : height // 2 + 60, width // 2 - 60 : width // 2 + 60]
            inner = pixels[60:-60, 60:-60].sum(axis=2)  # off the buttons at the view's edges
            bright = np.argwhere(inner > np.percentile(inner, 99.5)) + 60
            near = [
                min(np.hypot(x - bx, y - by) for x, y in xy if x is not None) for by, bx in bright
            ]
            return pixels, bool(box.std() > 5 and box.max() > 100), float(np.median(near))

        # Tiles arrive and are drawn (coarse orders first): look again until the
        # view shows the HiPS with its stars in place, not after a fixed wait.
        deadline = time.monotonic() + 60
        pixels, covered, median_near = look()
        while not (covered and median_near < 6) and time.monotonic() < deadline:
            time.sleep(0.5)
            pixels, covered, median_near = look()
        assert covered, "the HiPS is not drawn over its coverage"
        # The brightest pixels lie near an Object.
        assert median_near < 6
        height, width = pixels.shape[:2]
        # A click on a DiaObject opens its cutouts and light curve.
        driver.find_element(By.ID, "show-dia").click()
        x, y = driver.execute_script(
            "const r = window.portal.diaRows[0]; return window.portalAladin.world2pix(r[0], r[1]);"
        )
        ActionChains(driver).move_to_element_with_offset(
            view, int(x - width / 2), int(y - height / 2)
        ).click().perform()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = driver.execute_script("return window.portal")
            if state.get("cutouts") is not None and driver.find_elements(By.ID, "lightcurve"):
                break
            time.sleep(0.5)
        assert state["selected"]["table"] == "DiaObject"
        assert state["cutouts"] >= 3  # the g, r, i coadds under it
        curve = driver.find_element(By.ID, "lightcurve")
        assert len(curve.find_elements(By.TAG_NAME, "circle")) == 2
        link = driver.find_element(By.CSS_SELECTOR, "a.cutout").get_attribute("href")
        got = httpx.get(link, timeout=30)
        assert got.status_code == 200 and got.content.startswith(b"SIMPLE")
    finally:
        driver.quit()
        service.stop()
