"""HiPS trees of coadds: equal to reproject's HiPS, valid properties, incremental builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from skydm.cli.main import main
from skydm.errors import BadValueError, UserError
from skydm.image import Exposure
from skydm.image.hips import HipsSpec, build_repository_hips, build_tree, read_properties
from skydm.image.hips.geometry import choose_order, pixel_scale_deg, tile_pixel_deg
from skydm.image.hips.tiles import SourceImage, tile_path
from skydm.repo import DataId, Repository

PIXEL_DEG = 0.5 / 3600


def coadd_wcs(n: int, ra: float, dec: float, angle_deg: float) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [n / 2 + 0.3, n / 2 - 0.2]
    a = np.radians(angle_deg)
    wcs.wcs.cd = PIXEL_DEG * np.array([[-np.cos(a), np.sin(a)], [np.sin(a), np.cos(a)]])
    return wcs


def coadd_image(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 5.0, (n, n)).astype(np.float32)
    yy, xx = np.mgrid[:n, :n]
    for _ in range(5):  # a few stars, so that resampling has structure to get wrong
        x0, y0 = rng.uniform(10, n - 10, 2)
        image += (500 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 8)).astype(np.float32)
    return image


def put_coadd(repo: Repository, band: str, cell: str, seed: int, ra: float, dec: float) -> None:
    n = 256
    image = coadd_image(seed, n)
    exp = Exposure(
        image,
        np.full((n, n), 25.0, dtype=np.float32),
        np.zeros((n, n), dtype=np.uint32),
        coadd_wcs(n, ra, dec, 10.0 * seed),
    )
    repo.put_exposure(exp, "coadd", DataId("skysim", 0, 0, band, skycell=cell))


@pytest.mark.parametrize("seed", [1, 2])
def test_tiles_equal_reprojects_hips(tmp_path: Path, seed: int) -> None:
    from reproject import reproject_interp
    from reproject.hips import reproject_to_hips

    rng = np.random.default_rng(seed)
    ra, dec = float(rng.uniform(0, 360)), float(rng.uniform(-60, 60))
    n = 200
    wcs = coadd_wcs(n, ra, dec, 25.0 * seed)
    image = coadd_image(seed, n)
    order = choose_order(pixel_scale_deg(wcs))
    assert tile_pixel_deg(order, 512) <= PIXEL_DEG < tile_pixel_deg(order - 1, 512)
    ours = tmp_path / "ours"
    spec = HipsSpec(name="r", title="test")
    report = build_tree(ours, spec, [(SourceImage("a", image, wcs), "x")], workers=seed)
    theirs = tmp_path / "theirs"
    reproject_to_hips(
        (image, wcs),
        coord_system_out="equatorial",
        reproject_function=reproject_interp,
        output_directory=str(theirs),
        level=order,
        order="bilinear",
        progress_bar=lambda x: x,
    )
    expected = sorted(int(p.stem[4:]) for p in theirs.glob(f"Norder{order}/*/Npix*.fits"))
    assert report.order == order
    assert sorted(report.rebuilt_tiles) == expected and expected
    for index in expected:
        want = fits.getdata(tile_path(theirs, order, index, "fits")).astype(np.float64)
        got = fits.getdata(tile_path(ours, order, index, "fits")).astype(np.float64)
        assert got.shape == (512, 512)
        assert np.array_equal(np.isfinite(got), np.isfinite(want))
        both = np.isfinite(want)
        assert np.max(np.abs(got[both] - want[both]) / np.abs(want[both])) < 1e-5


@pytest.fixture()
def repo3(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    with Repository.open(root) as repo:
        for i, band in enumerate("gri"):
            put_coadd(repo, band, "c1", 3 + i, 150.0, 2.2)
    return root


def check_tree(tree: Path, formats: set[str]) -> dict[str, str]:
    """The HiPS 1.0 rules a client relies on, checked on a tree; returns its properties."""
    from mocpy import MOC

    props = read_properties(tree / "properties")
    for key in (
        "creator_did",
        "obs_title",
        "dataproduct_type",
        "hips_version",
        "hips_release_date",
        "hips_status",
        "hips_tile_format",
        "hips_tile_width",
        "hips_order",
        "hips_frame",
        "hips_initial_ra",
        "hips_initial_dec",
        "hips_initial_fov",
    ):
        assert props.get(key), key
    assert props["creator_did"].startswith("ivo://")
    assert props["dataproduct_type"] == "image" and props["hips_frame"] == "equatorial"
    assert set(props["hips_tile_format"].split()) == formats
    order = int(props["hips_order"])
    assert int(props["hips_tile_width"]) == 512
    ext = {"fits": "fits", "png": "png", "jpeg": "jpg"}
    for k in range(0, order + 1):
        for f in formats:
            assert list(tree.glob(f"Norder{k}/Dir*/Npix*.{ext[f]}")), (k, f)
    for f in formats:
        assert (tree / "Norder3" / f"Allsky.{ext[f]}").exists()
    moc = MOC.from_fits(str(tree / "Moc.fits"))
    ra, dec = float(props["hips_initial_ra"]), float(props["hips_initial_dec"])
    import astropy.units as u

    assert moc.contains_lonlat(ra * u.deg, dec * u.deg)[0]
    assert 0 < float(props["hips_initial_fov"]) < 1
    return props


def test_cli_builds_band_and_colour_trees(repo3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hips", "--repo", str(repo3), "--quiet"]) == 0
    out = repo3 / "hips"
    for band in "gri":
        props = check_tree(out / band, {"fits", "png"})
        assert props["hips_pixel_bitpix"] == "-32"
    check_tree(out / "color", {"png", "jpeg"})
    from PIL import Image

    order = int(read_properties(out / "r" / "properties")["hips_order"])
    tile = next((out / "color").glob(f"Norder{order}/Dir*/*.png"))
    with Image.open(tile) as picture:
        assert picture.size == (512, 512) and picture.mode == "RGBA"
        pixels = np.asarray(picture)
    covered = pixels[..., 3] > 0
    assert covered.any() and pixels[covered, :3].std() > 1  # not blank where there is data
    with fits.open(out / "r" / "Norder3" / "Allsky.fits") as hdul:
        assert hdul[0].data.shape == (29 * 64, 27 * 64)
        assert np.isfinite(hdul[0].data).any()
    assert "color" in capsys.readouterr().out


def tree_files(tree: Path) -> dict[str, float]:
    return {str(p.relative_to(tree)): p.stat().st_mtime_ns for p in tree.rglob("Npix*")}


def test_incremental_rebuilds_only_touched_tiles(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    with Repository.open(root) as repo:
        put_coadd(repo, "r", "c1", 7, 150.0, 2.2)
        first = build_repository_hips(repo, root / "hips")
        before = tree_files(root / "hips" / "r")
        reads: list[str | None] = []
        real_get = repo.get_exposure

        def counted(dataset_type: str, data_id: DataId) -> Exposure:
            reads.append(data_id.skycell)
            return real_get(dataset_type, data_id)

        repo.get_exposure = counted  # type: ignore[method-assign]
        again = build_repository_hips(repo, root / "hips")
        assert again.bands["r"].tiles_written == 0 and tree_files(root / "hips" / "r") == before
        assert reads == []  # nothing to redo: no coadd's pixels are read
        put_coadd(repo, "r", "c2", 8, 150.3, 2.2)  # a new coadd elsewhere
        second = build_repository_hips(repo, root / "hips")
        assert reads == ["c2"]  # only the new coadd's pixels
    new = second.bands["r"]
    old_tiles = set(first.bands["r"].rebuilt_tiles)
    assert new.rebuilt_tiles and not old_tiles & set(new.rebuilt_tiles)
    assert new.tiles_total == len(old_tiles) + len(new.rebuilt_tiles)
    after = tree_files(root / "hips" / "r")
    order = new.order
    for name, mtime in before.items():
        if name.startswith(f"Norder{order}/"):
            assert after[name] == mtime, name  # the first coadd's tiles untouched
    # And the incremental tree equals one built from scratch.
    scratch = tmp_path / "scratch"
    with Repository.open(root, create=False) as repo:
        build_repository_hips(repo, scratch)
    for p in (scratch / "r").rglob("Npix*.fits"):
        a = fits.getdata(p)
        b = fits.getdata(root / "hips" / "r" / p.relative_to(scratch / "r"))
        assert np.array_equal(a, b, equal_nan=True), p
    assert set(tree_files(scratch / "r")) == set(after)


def test_removed_coadd_removes_its_tiles(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    with Repository.open(root) as repo:
        put_coadd(repo, "r", "c1", 9, 150.0, 2.2)
        put_coadd(repo, "r", "c2", 10, 151.0, 2.2)
        first = build_repository_hips(repo, root / "hips")
        repo.remove("coadd", DataId("skysim", 0, 0, "r", skycell="c2"))
        second = build_repository_hips(repo, root / "hips")
    assert second.bands["r"].tiles_removed > 0
    assert second.bands["r"].tiles_total < first.bands["r"].tiles_total
    order = second.bands["r"].order
    left = {int(p.stem[4:]) for p in (root / "hips" / "r").glob(f"Norder{order}/*/Npix*.fits")}
    assert len(left) == second.bands["r"].tiles_total


def test_bad_input_is_named(
    repo3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["hips", "--repo", str(repo3), "--workers", "0", "--quiet"]) != 0
    assert "--workers" in capsys.readouterr().err
    assert main(["hips", "--repo", str(repo3), "--band", "z", "--quiet"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--band" in err[0] and "z" in err[0] and "g, i, r" in err[0]
    assert not (repo3 / "hips").exists()
    empty = tmp_path / "empty"
    Repository.open(empty).close()
    assert main(["hips", "--repo", str(empty), "--quiet"]) != 0
    assert "skydm coadd" in capsys.readouterr().err
    with Repository.open(empty) as repo, pytest.raises(UserError):
        build_repository_hips(repo, tmp_path / "h")
    for name in ("../x", "", "a/b", ".hidden"):
        with pytest.raises(BadValueError):
            HipsSpec(name=name, title="t")
    with pytest.raises(BadValueError):
        HipsSpec(name="r", title="t", width=500)
    assert not (tmp_path / "h").exists()  # nothing half-written


@pytest.mark.parametrize("seed", [11, 12])
def test_grey_tiles_are_the_lupton_stretch(seed: int) -> None:
    from skydm.image.color import color_from_planes, lupton_params
    from skydm.image.hips.tree import picture

    tile = coadd_image(seed, 512)
    tile[:3] = np.nan
    params = lupton_params((tile[3:], tile[3:], tile[3:]))
    want = color_from_planes((tile, tile, tile), params)
    got, alpha = picture(tile, params)
    assert np.abs(want[3:].astype(int) - got[3:]).max() <= 1  # table vs direct: rounding
    assert (alpha[:3] == 0).all() and (alpha[3:] == 255).all()


def test_colour_tree_redoes_only_what_a_band_changed(repo3: Path) -> None:
    with Repository.open(repo3, create=False) as repo:
        first = build_repository_hips(repo, repo3 / "hips")
        idle = build_repository_hips(repo, repo3 / "hips")
        put_coadd(repo, "g", "c2", 13, 150.3, 2.2)  # one band, elsewhere
        second = build_repository_hips(repo, repo3 / "hips")
    assert first.color_bands == ("i", "r", "g") and first.color_tiles > 0
    assert idle.color_tiles == 0
    changed = sum(len(v) for v in second.bands["g"].changed.values())
    assert 0 < second.color_tiles <= changed
    order = second.bands["g"].order
    for index in second.bands["g"].rebuilt_tiles:  # the new coadd's tiles are in colour too
        assert tile_path(repo3 / "hips" / "color", order, index, "png").exists()
        assert tile_path(repo3 / "hips" / "color", order, index, "jpg").exists()


@pytest.mark.parametrize("name", ["sfft_stack_2016-08-18.fits", "sfft_stack_2018-08-04.fits"])
def test_real_stack_tiles_equal_reprojects_hips(tmp_path: Path, data_dir: Path, name: str) -> None:
    """A real DECam stack (its own WCS and noise): the same tiles as reproject's HiPS.

    Both interpolate in float32, so values differ by float32 rounding: relative
    to the value, except where the interpolation crosses zero, hence the floor
    at the image's typical level.
    """
    from reproject import reproject_interp
    from reproject.hips import reproject_to_hips

    with fits.open(data_dir / "decam_pair" / name) as hdul:
        image = np.asarray(hdul[0].data, dtype=np.float32)
        wcs = WCS(hdul[0].header)
    level = float(np.median(np.abs(image[np.isfinite(image)])))
    report = build_tree(
        tmp_path / "ours", HipsSpec(name="x", title="real"), [(SourceImage("a", image, wcs), "c")]
    )
    reproject_to_hips(
        (image, wcs),
        coord_system_out="equatorial",
        reproject_function=reproject_interp,
        output_directory=str(tmp_path / "theirs"),
        level=report.order,
        order="bilinear",
        progress_bar=lambda x: x,
    )
    theirs = tmp_path / "theirs"
    expected = sorted(int(p.stem[4:]) for p in theirs.glob(f"Norder{report.order}/*/Npix*.fits"))
    assert report.rebuilt_tiles == expected and expected
    for index in expected:
        want = fits.getdata(tile_path(theirs, report.order, index, "fits")).astype(np.float64)
        got = fits.getdata(tile_path(tmp_path / "ours", report.order, index, "fits"))
        assert np.array_equal(np.isfinite(got), np.isfinite(want))
        both = np.isfinite(want)
        scale = np.maximum(np.abs(want[both]), level)
        assert np.max(np.abs(got[both] - want[both]) / scale) < 1e-5
