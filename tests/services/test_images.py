"""Image services through HTTP and pyvo: SIA -> DataLink -> SODA, stamps, async, errors."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import astropy.units as u
import httpx
import numpy as np
import pytest
import pyvo
from astropy.io import fits
from astropy.wcs import WCS

from skydm_testing import require_executable

from .conftest import Service, ingest_sim_raws, make_catalog

CALEXP = "ivo://skydm/calexp?skysim/g/1/0"


@pytest.fixture(scope="module")
def image_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four raws, their calexps, a 'coadd' with recorded inputs, and a small catalog."""
    from skydm.pipeline.calibrate import calibrate_raw
    from skydm.repo import DataId, Repository

    repo = tmp_path_factory.mktemp("imagerepo")
    ingest_sim_raws(repo, tmp_path_factory.mktemp("imageraws"))
    with Repository.open(repo) as r:
        refs = r.query("raw")
        for ref in refs:
            r.put_exposure(calibrate_raw(r.get_exposure("raw", ref.data_id)), "calexp", ref.data_id)
        first = refs[0].data_id
        inputs = [{"dataset_type": "calexp", **x.data_id.as_dict()} for x in refs]
        coadd = r.get_exposure("calexp", first)
        cell = DataId("skysim", band=first.band, skycell="c0")
        r.put_exposure(coadd, "coadd", cell, meta={"inputs": inputs})
    make_catalog(repo)
    return repo


@pytest.fixture(scope="module")
def images(image_repo: Path) -> Iterator[Service]:
    svc = Service(image_repo).start()
    try:
        yield svc
    finally:
        svc.stop()


def root(svc: Service) -> str:
    return svc.url.removesuffix("/tap")


def calexp_truth(repo: Path, image_id: str = CALEXP) -> tuple[fits.HDUList, WCS]:
    from skydm.image.datasets import parse_dataset_id
    from skydm.repo import Repository

    kind, data_id = parse_dataset_id(image_id)
    with Repository.open(repo) as r:
        hdul = r.get_hdulist(kind, data_id)
    return hdul, WCS(hdul["IMAGE"].header)


def dali_error(response: httpx.Response, status: int, *words: str) -> str:
    """The message of a DALI error document, checked."""
    from astropy.io.votable import parse

    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/x-votable+xml")
    table = parse(io.BytesIO(response.content))
    (info,) = [i for i in table.resources[0].infos if i.name == "QUERY_STATUS"]
    assert info.value == "ERROR"
    message = str(info.content)
    for word in words:
        assert word in message, message
    return message


def test_pyvo_sia_datalink_soda_round_trip(images: Service, image_repo: Path) -> None:
    sia = pyvo.dal.SIA2Service(f"{root(images)}/sia")
    found = sia.search(pos=(10 * u.deg, 20 * u.deg, 0.002 * u.deg), calib_level=2)
    ids = {str(r.obs_publisher_did) for r in found}
    assert ids == {f"ivo://skydm/calexp?skysim/{b}/{v}/0" for b, v in ("g1", "r2", "g3", "r4")}
    rec = next(r for r in found if str(r.obs_publisher_did) == CALEXP)
    links = rec.getdatalink()
    semantics = {str(r.semantics) for r in links}
    assert {"#this", "#cutout", "#preview"} <= semantics
    full = next(links.bysemantics("#this", include_narrower=False))
    assert httpx.get(full.access_url).content == (
        next(p for p in image_repo.rglob("calexp_skysim_g_1_0-*.fits")).read_bytes()
    )
    proc = links.get_first_proc()
    hdul, wcs = calexp_truth(image_repo)
    x, y = 70.3, 50.8
    ra, dec = (float(v) for v in wcs.all_pix2world([[x, y]], 0)[0])
    data = proc.processed(circle=(ra * u.deg, dec * u.deg, 2 * u.arcsec)).read()
    cut = fits.open(io.BytesIO(data))
    cut.verify("exception")
    x0, y0 = cut[0].header["CUTX0"], cut[0].header["CUTY0"]
    for plane in ("IMAGE", "VARIANCE", "MASK"):
        got = cut[plane].data
        want = hdul[plane].data[y0 : y0 + got.shape[0], x0 : x0 + got.shape[1]]
        assert got.tobytes() == want.astype(got.dtype).tobytes()
    cx, cy = WCS(cut["IMAGE"].header).all_world2pix([[ra, dec]], 0)[0]
    assert abs(cx + x0 - x) < 0.01 and abs(cy + y0 - y) < 0.01
    assert cut[0].header["VISIT"] == 1 and cut[0].header["CUTSRC"] == CALEXP


def test_sia_constraints(images: Service) -> None:
    sia = pyvo.dal.SIA2Service(f"{root(images)}/sia")
    g_band = (450e-9, 500e-9)  # metres, inside g only
    found = sia.search(pos=(10 * u.deg, 20 * u.deg, 0.01 * u.deg), band=g_band, calib_level=2)
    assert {str(r.obs_publisher_did) for r in found} == {
        CALEXP,
        "ivo://skydm/calexp?skysim/g/3/0",
    }
    far = sia.search(pos=(50 * u.deg, -20 * u.deg, 0.01 * u.deg))
    assert len(far) == 0
    assert len(sia.search(collection="skydm/raw")) == 4
    assert len(sia.search(calib_level=3)) == 1  # the coadd
    first = sia.search(collection="skydm/calexp", maxrec=2)
    assert len(first) == 2
    from astropy.time import Time

    mjds = sorted(r.t_min.mjd for r in sia.search(collection="skydm/calexp"))
    window = Time([mjds[0] - 0.01, mjds[1] + 0.001], format="mjd")
    early = sia.search(collection="skydm/calexp", time=(window[0], window[1]))
    assert len(early) == 2


def test_datalink_coadd_lists_its_inputs_and_bad_ids_get_error_rows(images: Service) -> None:
    url = f"{root(images)}/datalink/links"
    cell = "ivo://skydm/coadd?skysim/g/0/0/c0"
    links = pyvo.dal.adhoc.DatalinkResults.from_result_url(f"{url}?ID={cell}")
    progenitors = [
        str(r.access_url) for r in links.bysemantics("#progenitor", include_narrower=False)
    ]
    assert len(progenitors) == 4 and all("datalink/links?ID=" in p for p in progenitors)
    calexp = pyvo.dal.adhoc.DatalinkResults.from_result_url(f"{url}?ID={CALEXP}")
    (raw,) = [str(r.access_url) for r in calexp.bysemantics("#progenitor", include_narrower=False)]
    assert raw.endswith("ID=ivo%3A%2F%2Fskydm%2Fraw%3Fskysim%2Fg%2F1%2F0")
    bad = httpx.get(url, params=[("ID", CALEXP), ("ID", "ivo://skydm/calexp?skysim/g/99/0")])
    assert bad.status_code == 200
    assert b"NotFoundFault" in bad.content and b"#cutout" in bad.content
    assert dali_error(httpx.get(url), 400, "UsageFault", "ID")


def test_soda_several_ids_and_positions_in_one_file_or_zip(images: Service) -> None:
    url = f"{root(images)}/soda/sync"
    ids = [CALEXP, "ivo://skydm/calexp?skysim/r/2/0"]
    params = [("ID", i) for i in ids] + [
        ("CIRCLE", "10 20 0.0008"),
        ("POS", "RANGE 9.9995 10.0005 19.9995 20.0005"),
        ("POLYGON", "9.999 19.999 10.001 19.999 10.0 20.001"),
    ]
    mef = fits.open(io.BytesIO(httpx.get(url, params=params).content))
    assert mef[0].header["NCUTOUT"] == 6
    assert sorted({h.ver for h in mef[1:]}) == [1, 2, 3, 4, 5, 6]
    assert {h.name for h in mef[1:]} == {"IMAGE", "VARIANCE", "MASK"}
    assert mef["IMAGE", 1].header["CUTSRC"] == CALEXP and mef["IMAGE", 4].header["BAND"] == "r"
    zipped = httpx.post(url, data={"RESPONSEFORMAT": "application/zip"}, params=params)
    assert zipped.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
        names = zf.namelist()
        assert len(names) == 6
        first = fits.open(io.BytesIO(zf.read(names[0])))
    assert np.array_equal(first["IMAGE"].data, mef["IMAGE", 1].data)
    band = httpx.get(url, params=[("ID", CALEXP), ("CIRCLE", "10 20 0.001"), ("BAND", "6e-7 7e-7")])
    dali_error(band, 400, "BAND")


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ([("ID", CALEXP), ("CIRCLE", "50 -20 0.001")], 400, ("does not",)),
        ([("ID", CALEXP), ("CIRCLE", "10 20 0")], 400, ("CIRCLE radius",)),
        ([("ID", CALEXP), ("CIRCLE", "10 20 -1")], 400, ("CIRCLE radius",)),
        ([("ID", CALEXP), ("CIRCLE", "10 20 30")], 400, ("CIRCLE radius",)),
        ([("ID", CALEXP), ("CIRCLE", "10 20")], 400, ("CIRCLE",)),
        ([("ID", CALEXP), ("POLYGON", "10 20 10.001 20")], 400, ("POLYGON",)),
        ([("ID", CALEXP), ("POLYGON", "10 20 10.001 20 x 20")], 400, ("POLYGON",)),
        ([("ID", CALEXP), ("POLYGON", "10 20 10.001 20 10.002 20")], 400, ("POLYGON",)),
        ([("ID", CALEXP), ("POS", "BOX 10 20 1 1")], 400, ("POS",)),
        ([("ID", CALEXP)], 400, ("CIRCLE/POLYGON/POS",)),
        ([("CIRCLE", "10 20 0.001")], 400, ("ID",)),
        ([("ID", "ivo://skydm/calexp?skysim/g/77/0"), ("CIRCLE", "10 20 0.001")], 404, ()),
        ([("ID", "ivo://skydm/calexp?../../../registry.sqlite3"), ("CIRCLE", "10 20 1e-3")],
         400, ("ID",)),
        ([("ID", "../../../../etc/passwd"), ("CIRCLE", "10 20 0.001")], 400, ("ID",)),
        ([("ID", "ivo://skydm/calexp?skysim/g/1/0/../../../x"), ("CIRCLE", "10 20 0.001")],
         400, ("ID",)),
        ([("ID", "/etc/passwd"), ("CIRCLE", "10 20 0.001")], 400, ("ID",)),
        ([("ID", "ivo://skydm/registry?skysim/g/1/0"), ("CIRCLE", "10 20 0.001")], 400, ()),
        ([("ID", CALEXP + "\x00"), ("CIRCLE", "10 20 0.001")], 400, ("ID",)),
    ],
)  # fmt: skip
def test_soda_bad_input_gets_a_dali_error(
    images: Service, params: list[tuple[str, str]], status: int, words: tuple[str, ...]
) -> None:
    response = httpx.get(f"{root(images)}/soda/sync", params=params)
    dali_error(response, status, *words)
    assert b"SQLite" not in response.content and b"root:" not in response.content


def test_files_and_preview_refuse_anything_but_registered_ids(images: Service) -> None:
    base = root(images)
    for hostile in ("../../registry.sqlite3", "/etc/passwd", "ivo://skydm/calexp?../x/1/0"):
        for path in ("/images/files", "/images/preview"):
            r = httpx.get(f"{base}{path}", params={"ID": hostile})
            dali_error(r, 400, "ID")
    png = httpx.get(f"{base}/images/preview", params={"ID": CALEXP})
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")


def test_stamps_every_epoch_in_one_request(images: Service, image_repo: Path) -> None:
    base = root(images)
    r = httpx.get(f"{base}/images/stamps", params={"POS": "10 20", "SIZE": "25"})
    assert r.status_code == 200
    mef = fits.open(io.BytesIO(r.content))
    assert mef[0].header["NCUTOUT"] == 4
    mjds = [mef["IMAGE", k].header["MJD-OBS"] for k in range(1, 5)]
    assert mjds == sorted(mjds)
    for k in range(1, 5):
        assert mef["IMAGE", k].data.shape == (25, 25)
        image_id = mef["IMAGE", k].header["CUTSRC"]
        _, wcs = calexp_truth(image_repo, image_id)
        x, y = wcs.all_world2pix([[10.0, 20.0]], 0)[0]
        x0, y0 = mef["IMAGE", k].header["CUTX0"], mef["IMAGE", k].header["CUTY0"]
        assert (x0, y0) == (round(x) - 12, round(y) - 12)
    zipped = httpx.get(f"{base}/images/stamps", params={"POS": "10 20", "FORMAT": "zip"})
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as zf:
        assert len(zf.namelist()) == 4
    g_only = httpx.get(f"{base}/images/stamps", params={"POS": "10 20", "BAND": "g"})
    assert fits.open(io.BytesIO(g_only.content))[0].header["NCUTOUT"] == 2
    dali_error(httpx.get(f"{base}/images/stamps", params={"POS": "50 -20"}), 400, "no calexp")
    dali_error(httpx.get(f"{base}/images/stamps", params={"POS": "10 95"}), 400, "POS")


def test_soda_async_uws(images: Service) -> None:
    base = f"{root(images)}/soda/async"
    params = {"ID": CALEXP, "CIRCLE": "10 20 0.001", "PHASE": "RUN"}
    created = httpx.post(base, data=params, follow_redirects=False)
    assert created.status_code == 303
    job_url = created.headers["location"]
    deadline = time.monotonic() + 30
    while (phase := httpx.get(f"{job_url}/phase").text) not in ("COMPLETED", "ERROR"):
        assert time.monotonic() < deadline, phase
        time.sleep(0.1)
    assert phase == "COMPLETED"
    doc = httpx.get(job_url).text
    assert "<uws:phase>COMPLETED</uws:phase>" in doc and "results/result" in doc
    result = httpx.get(f"{job_url}/results/result").content
    sync = httpx.get(f"{root(images)}/soda/sync", params={k: params[k] for k in ("ID", "CIRCLE")})
    assert result == sync.content
    bad = httpx.post(base, data={"ID": CALEXP, "CIRCLE": "10 20 0"})
    dali_error(bad, 400, "CIRCLE radius")
    missing = httpx.post(base, data={"ID": "ivo://skydm/calexp?skysim/g/5/0", "CIRCLE": "1 2 1e-3"})
    error_url = missing.headers["location"]
    httpx.post(f"{error_url}/phase", data={"PHASE": "RUN"})
    deadline = time.monotonic() + 30
    while httpx.get(f"{error_url}/phase").text != "ERROR":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert "no such image" in httpx.get(error_url).text
    assert httpx.delete(job_url, follow_redirects=False).status_code == 303
    dali_error(httpx.get(job_url), 404, "NotFoundFault")


def test_obscore_in_tap(images: Service) -> None:
    tap = pyvo.dal.TAPService(images.url)
    rows = tap.run_sync(
        "SELECT obs_publisher_did, dataproduct_subtype, calib_level, access_url, s_xel1 "
        "FROM ivoa.ObsCore ORDER BY obs_publisher_did"
    )
    assert len(rows) == 9  # 4 raws, 4 calexps, 1 coadd
    assert sorted(set(rows["dataproduct_subtype"])) == ["calexp", "coadd", "raw"]
    assert set(rows["s_xel1"].tolist()) == {128}
    url = str(rows["access_url"][0])
    assert url.startswith(root(images) + "/datalink/links?ID=")
    assert httpx.get(url).status_code == 200


def test_votlint_and_taplint_obscore_clean(images: Service) -> None:
    stilts = require_executable("stilts", "install the Debian package stilts")
    base = root(images)
    documents = {
        "sia": httpx.get(f"{base}/sia/query", params={"POS": "CIRCLE 10 20 0.01"}).content,
        "datalink": httpx.get(
            f"{base}/datalink/links", params=[("ID", CALEXP), ("ID", "nonsense")]
        ).content,
        "error": httpx.get(f"{base}/soda/sync", params={"ID": "x", "CIRCLE": "1 2 0"}).content,
    }
    for name, content in documents.items():
        run = subprocess.run(
            [stilts, "votlint", "-"], input=content, capture_output=True, timeout=120, check=False
        )
        out = (run.stdout + run.stderr).decode()
        assert run.returncode == 0 and "ERROR" not in out and "WARNING" not in out, (name, out)
    run = subprocess.run(
        [stilts, "taplint", f"tapurl={images.url}", "stages=CAP TME TMV TMS OBS", "report=EFW"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "Section OBS" in run.stdout, run.stdout
    bad = [line for line in run.stdout.splitlines() if line.startswith(("E-", "F-", "W-OBS"))]
    assert not bad, "\n".join(bad)
    assert shutil.which("stilts")
