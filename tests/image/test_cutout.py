"""Cutouts: exact pixels, a WCS that still maps the sky, only the tiles needed read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from skydm.errors import BadValueError
from skydm.image import Exposure, read_exposure
from skydm.image.cutout import cutout_file
from skydm.image.mask import Mask
from skydm.image.regions import (
    Circle,
    NoOverlapError,
    Polygon,
    Range,
    Stamp,
    parse_polygon,
    parse_pos,
)
from skydm.image.tiled import open_tiled
from skydm_testing import DATA

DECAM = sorted((DATA / "decam_pair").glob("input_data__DEC-OBS*.fits"))


def tiled_exposure(path: Path, n: int, *, seed: int, tile: int = 64) -> Exposure:
    """A simulated n x n Exposure written with every plane tile-compressed (lossless)."""
    rng = np.random.default_rng(seed)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0 + seed, -5.0]
    wcs.wcs.crpix = [n / 2 + 0.3, n / 2 - 0.7]
    wcs.wcs.cd = np.array([[-0.2, 0.01], [0.01, 0.2]]) / 3600
    image = rng.normal(100, 5, (n, n)).astype(np.float32)
    variance = rng.uniform(20, 30, (n, n)).astype(np.float32)
    mask = rng.integers(0, 4, (n, n)).astype(np.uint32)
    exp = Exposure(image, variance, mask, wcs)
    hdul = exp.to_hdulist()
    out = [hdul[0]]
    for hdu in hdul[1:4]:
        data = hdu.data.astype(np.int32) if hdu.name == "MASK" else hdu.data
        out.append(
            fits.CompImageHDU(
                data,
                header=hdu.header,
                name=hdu.name,
                compression_type="RICE_1" if hdu.name == "MASK" else "GZIP_2",
                tile_shape=(tile, tile),
                quantize_level=0.0,
            )
        )
    fits.HDUList(out).writeto(path)
    return exp


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.shape == b.shape
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).astype(a.dtype).tobytes()
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_tiled_reads_equal_astropy(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "exp.fits"
    tiled_exposure(path, 300, seed=seed, tile=64)
    tiled = open_tiled(path)
    rng = np.random.default_rng(seed + 10)
    with fits.open(path) as hdul:
        full = {name: hdul[name].data for name in ("IMAGE", "VARIANCE", "MASK")}
    for _ in range(20):
        y0, x0 = rng.integers(0, 299, 2)
        y1, x1 = y0 + rng.integers(1, 120), x0 + rng.integers(1, 120)
        y1, x1 = min(y1, 300), min(x1, 300)
        for name, data in full.items():
            plane = tiled.plane(name)
            assert plane is not None and plane.tiles is not None
            got = tiled.read(plane, slice(y0, y1), slice(x0, x1))
            assert got.dtype == data.dtype
            assert same_bits(got, data[y0:y1, x0:x1])


def test_raw_container_cutout_is_bit_exact_real_decam(tmp_path: Path) -> None:
    """Real DECam stamps archived losslessly: cutouts equal the original's pixels bit for bit."""
    from skydm.archive import ingest_files
    from skydm.image.datasets import ImageIndex, cutout
    from skydm.repo import Repository

    with Repository.open(tmp_path / "repo") as repo:
        assert ingest_files(repo, DECAM[:3]).ok
        index = ImageIndex(repo)
        footprints = index.refresh()
        assert len(footprints) == 3
        rng = np.random.default_rng(7)
        for fp in footprints:
            source = _source_of(fp.ref.meta, DECAM)
            original = fits.getdata(source)
            with fits.open(source) as hdul:
                owcs = WCS(hdul[0].header).celestial
            for _ in range(3):
                x, y = rng.uniform(40, 210, 2)
                ra, dec = (float(v) for v in owcs.all_pix2world([[x, y]], 0)[0])
                radius = float(rng.uniform(2, 10)) / 3600
                c = cutout(repo, "raw", fp.ref.data_id, Circle(ra, dec, radius))
                b = c.box
                assert same_bits(c.planes[0].data, original[b.y0 : b.y1, b.x0 : b.x1])
                cw = WCS(c.planes[0].header)
                cx, cy = cw.all_world2pix([[ra, dec]], 0)[0]
                assert abs(cx + b.x0 - x) < 0.01 and abs(cy + b.y0 - y) < 0.01
                # The box holds the whole circle: 0.263"/pixel DECam.
                half = radius * 3600 / 0.27
                assert b.x1 - b.x0 >= 2 * half - 2 and b.x1 - b.x0 <= 2 * half / 0.9 + 3


def _source_of(meta: object, candidates: list[Path]) -> Path:
    """The ingested file a raw dataset came from (by its recorded SHA-256)."""
    import hashlib

    want = dict(meta).get("source_sha256") or dict(meta).get("sha256")  # type: ignore[call-overload]
    for p in candidates:
        if hashlib.sha256(p.read_bytes()).hexdigest() == want:
            return p
    raise AssertionError(f"no source with sha {want}: {meta}")


def test_exposure_cutout_planes_wcs_and_valid_fits(tmp_path: Path) -> None:
    path = tmp_path / "exp.fits"
    exp = tiled_exposure(path, 256, seed=3)
    ra, dec = (float(v) for v in exp.wcs.all_pix2world([[100.2, 140.7]], 0)[0])
    c = cutout_file(path, Circle(ra, dec, 4 / 3600))
    assert [p.name for p in c.planes] == ["IMAGE", "VARIANCE", "MASK"]
    b = c.box
    assert same_bits(c.planes[0].data, exp.image[b.y0 : b.y1, b.x0 : b.x1])
    assert same_bits(c.planes[1].data, exp.var[b.y0 : b.y1, b.x0 : b.x1])
    assert np.array_equal(c.planes[2].data, exp.msk[b.y0 : b.y1, b.x0 : b.x1])
    out = tmp_path / "cut.fits"
    out.write_bytes(c.to_bytes())
    with fits.open(out) as hdul:
        hdul.verify("exception")
    back = read_exposure(out)
    assert back.wcs is not None and back.shape == (b.y1 - b.y0, b.x1 - b.x0)
    x, y = back.wcs.all_world2pix([[ra, dec]], 0)[0]
    assert abs(x + b.x0 - 100.2) < 0.01 and abs(y + b.y0 - 140.7) < 0.01
    assert c.primary_header["SKYDMEXP"] is True and c.primary_header["CUTX0"] == b.x0


def test_only_needed_tiles_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.fits"
    exp = tiled_exposure(path, 1024, seed=4, tile=64)
    open_tiled(path)  # parse the structure first; count only the pixel reads
    read: list[int] = []
    real_pread = os.pread

    def counting(fd: int, n: int, offset: int) -> bytes:
        read.append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr("skydm.image.tiled.os.pread", counting)
    ra, dec = (float(v) for v in exp.wcs.all_pix2world([[500.0, 500.0]], 0)[0])
    c = cutout_file(path, Stamp(ra, dec, 51))
    assert c.planes[0].data.shape == (51, 51)
    # 51x51 around (500, 500) touches 4 tiles of 64x64 per plane, out of 256.
    assert len(read) == 3 * 4
    assert sum(read) < 0.03 * path.stat().st_size


def test_stamp_at_the_edge_is_padded_with_no_data(tmp_path: Path) -> None:
    path = tmp_path / "exp.fits"
    exp = tiled_exposure(path, 128, seed=5)
    ra, dec = (float(v) for v in exp.wcs.all_pix2world([[2.0, 120.0]], 0)[0])
    c = cutout_file(path, Stamp(ra, dec, 21))
    image, var, mask = (p.data for p in c.planes)
    assert image.shape == (21, 21)
    assert np.isnan(image[:, :8]).all() and np.isfinite(image[:, 8:][:9]).all()
    assert (mask[:, :8] == Mask.NO_DATA).all() and np.isinf(var[:, :8]).all()
    assert np.isnan(image[-2:]).all()  # rows 129, 130 do not exist
    assert same_bits(image[:9, 8:], exp.image[110:119, 0:13])


def test_bad_regions_are_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "exp.fits"
    exp = tiled_exposure(path, 128, seed=6)
    for bad in (0.0, -1.0, 5.0, float("nan")):
        with pytest.raises(BadValueError, match="CIRCLE radius"):
            Circle(10, 20, bad)
    with pytest.raises(BadValueError, match="dec"):
        Circle(10, 95, 0.01)
    for text in ("1 2 3 4", "1 2 3 4 5", "a b c d e f", "10 20 10.001 20 10.002 20"):
        with pytest.raises(BadValueError, match="POLYGON"):
            parse_polygon(text)
    with pytest.raises(BadValueError, match="POS"):
        parse_pos("BOX 1 2 3 4")
    with pytest.raises(BadValueError, match="RANGE"):
        Range(10, 9, 0, 1)
    far = Circle(float(exp.wcs.wcs.crval[0]) + 1, -5, 0.01)
    with pytest.raises(NoOverlapError, match="does not"):
        cutout_file(path, far)
    poly = parse_pos(
        "POLYGON "
        + " ".join(f"{a} {d}" for a, d in exp.wcs.all_pix2world([[10, 10], [40, 12], [30, 50]], 0))
    )
    assert isinstance(poly, Polygon)
    c = cutout_file(path, poly)
    assert (c.box.x0, c.box.y0, c.box.x1, c.box.y1) == (10, 10, 41, 51)


def test_cli_cutout_same_as_library(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from skydm.archive import ingest_files
    from skydm.cli.main import main
    from skydm.image.datasets import ImageIndex, cutout
    from skydm.repo import Repository

    with Repository.open(tmp_path / "repo") as repo:
        assert ingest_files(repo, DECAM[3:4]).ok
        (fp,) = ImageIndex(repo).refresh()
        region = Circle(fp.ra, fp.dec, 5 / 3600)
        expected = cutout(repo, "raw", fp.ref.data_id, region).planes[0].data
    out = tmp_path / "cut.fits"
    argv = ["cutout", "--repo", str(tmp_path / "repo"), "--id", fp.id, "--out", str(out)]
    assert main([*argv, "--circle", str(fp.ra), str(fp.dec), str(5 / 3600)]) == 0
    assert "pixels of" in capsys.readouterr().out
    assert same_bits(fits.getdata(out, "IMAGE"), expected)
    assert main([*argv, "--circle", str(fp.ra + 10), str(fp.dec), "0.001"]) != 0
    err = capsys.readouterr().err
    assert "does not overlap" in err and len(err.strip().splitlines()) == 1
    argv[argv.index(fp.id)] = "ivo://skydm/raw?../../../etc/passwd"
    assert main([*argv, "--circle", "1", "2", "0.001"]) != 0
    assert "--id 'ivo://skydm/raw?../../../etc/passwd' is not allowed" in capsys.readouterr().err
