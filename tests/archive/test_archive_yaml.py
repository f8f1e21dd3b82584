"""Instrument definitions from YAML: the real DECam conventions, a made-up camera, validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from skydm.archive import (
    builtin,
    ingest_files,
    load_instrument,
    parse_instrument,
    read_raw,
    restore_raw_bytes,
    retrieve,
)
from skydm.cli.main import main
from skydm.errors import BadFileError
from skydm.repo import DataId, Repository

HERE = Path(__file__).parent
DECAM_YAML = HERE / "data" / "decam.yaml"
DECAM = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real" / "decam_pair"

FAKECAM = """
format: skydm-instrument/1
name: fakecam
description: a made-up two-amplifier camera with overscan, one extension per CCD
match: {INSTRUME: [FAKECAM, FAKECAM-2]}
data_id:
  visit: {cards: [FRAMENUM], required: true}
  detector: {cards: [EXTVER], required: true}
  band: {cards: [FILT], values: {SDSS-R: r, SDSS-I: i}, required: true}
time: {cards: [DATE-OBS], required: true}
metadata: {exptime: [EXPOSED], airmass: [SECZ]}
amplifiers:
  - {name: L, data_section: "[1:40,1:64]", bias_section: BSECL, gain: GAINL,
     read_noise: RONL, saturation: 30000}
  - {name: R, data_section: DSECR, bias_section: "[51:60,1:64]", gain: {cards: [GAINR], value: 2.0},
     read_noise: RONR, saturation: SATR}
geometry: {shape: [64, 100], pixel_scale: 0.4}
"""


def _decam_files() -> list[Path]:
    files = sorted(DECAM.glob("input_data__DEC-OBS*.mini.fits"))
    if not files:
        pytest.skip(f"real DECam stamps not found in {DECAM}")
    return files


def test_builtins_are_yaml_loaded_by_the_same_code() -> None:
    generic, skysim = builtin("generic"), builtin("skysim")
    assert generic.source.endswith("generic.yaml") and skysim.source.endswith("skysim.yaml")
    assert dict(skysim.match) == {"INSTRUME": ("SKYSIM",)} and not generic.match


def test_decam_conventions_give_data_ids_and_per_amplifier_values(tmp_path: Path) -> None:
    files = _decam_files()
    decam = load_instrument(DECAM_YAML)
    repo = Repository.open(tmp_path / "repo")
    report = ingest_files(repo, files, instrument=decam)
    assert report.ok, [r.line() for r in report.failed]
    for res in report.results:
        header = fits.getheader(res.path)
        assert res.data_id is not None and res.ref is not None
        assert res.data_id.instrument == "decam"
        assert res.data_id.detector == header["CCDNUM"] == 37
        assert res.data_id.band == "i"  # first word of 'i DECam SDSS c0003 7835.0 1470.0'
        assert str(res.data_id.visit).startswith("20180804")  # no EXPNUM: night + pixels
        amps = {a["name"]: a for a in res.ref.meta["amplifiers"]}
        for amp in "AB":
            assert amps[amp]["gain"] == header[f"GAIN{amp}"]
            assert amps[amp]["read_noise"] == header[f"RDNOISE{amp}"]
            assert amps[amp]["saturation"] == header[f"SATURAT{amp}"]
            assert amps[amp]["data_section"] is None  # the stamps are cut-outs: no DATASECn
        assert res.ref.meta["focal_plane_section"] == header["DETSEC"]
        assert res.ref.meta["pixel_scale"] == 0.263
        # The visit metadata reaches the Exposure that calibration reads.
        exp = read_raw(repo, res.data_id)
        assert exp.info.gain == pytest.approx((header["GAINA"] + header["GAINB"]) / 2)
        assert exp.info.saturation == min(header["SATURATA"], header["SATURATB"])
        assert exp.info.read_noise == pytest.approx((header["RDNOISEA"] + header["RDNOISEB"]) / 2)
        assert exp.info.exptime == header["EXPTIME"] and exp.info.mjd == header["MJD-OBS"]
        assert (exp.info.detector, exp.info.visit) == (37, res.data_id.visit)
        assert exp.meta["AMP2NAME"] == "B" and exp.meta["AMP2GAIN"] == header["GAINB"]
        assert restore_raw_bytes(repo, res.data_id) == res.path.read_bytes()
    assert len({r.data_id for r in report.results}) == len(files)  # distinct exposures


def _fakecam_exposure(path: Path, *, frame: int, band: str = "SDSS-R", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    primary = fits.PrimaryHDU()
    h = primary.header
    h["INSTRUME"], h["FRAMENUM"], h["FILT"] = "FAKECAM", frame, band
    h["DATE-OBS"], h["EXPOSED"], h["SECZ"] = "2024-03-01T03:04:05", 45.0, 1.21
    hdus: list[fits.PrimaryHDU | fits.ImageHDU | fits.BinTableHDU] = [primary]
    for ccd in (1, 2, 3):
        pixels = rng.poisson(500.0, (64, 100)).astype(np.uint16)
        ext = fits.ImageHDU(pixels, name="CCD", ver=ccd)
        ext.header["GAINL"], ext.header["GAINR"] = 1.1 * ccd, 1.3 * ccd
        ext.header["RONL"], ext.header["RONR"], ext.header["SATR"] = 4.0, 4.5, 28000.0
        ext.header["BSECL"], ext.header["DSECR"] = "[41:50,1:64]", "[61:100,1:64]"
        hdus.append(ext)
    # A table extension between detectors (as some cameras add) must survive too.
    hdus.insert(2, fits.BinTableHDU.from_columns([fits.Column("T", "E", array=[1.5, 2.5])]))
    fits.HDUList(hdus).writeto(path)
    return path


def test_made_up_camera_registered_in_the_repository(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    yaml_file = tmp_path / "fakecam.yaml"
    yaml_file.write_text(FAKECAM)
    raws = [_fakecam_exposure(tmp_path / f"fake{f}.fits", frame=f, seed=f) for f in (7, 8)]
    repo_dir = tmp_path / "repo"
    Repository.open(repo_dir).close()
    assert main(["instrument", "register", "--repo", str(repo_dir), str(yaml_file)]) == 0
    # No --instrument: the registered definition claims the files by their INSTRUME card.
    assert main(["ingest", "--repo", str(repo_dir), "-q", *map(str, raws)]) == 0
    out = capsys.readouterr().out
    assert out.count("ingested:") == 6 and "[HDU 3]" in out
    with Repository.open(repo_dir, create=False) as repo:
        refs = repo.query(dataset_type="raw")
        assert {(r.data_id.visit, r.data_id.detector) for r in refs} == {
            (f, d) for f in (7, 8) for d in (1, 2, 3)
        }
        for ref in refs:
            d = ref.data_id
            assert d.instrument == "fakecam" and d.band == "r"
            left, right = ref.meta["amplifiers"]
            assert left["gain"] == pytest.approx(1.1 * d.detector)
            assert right["gain"] == pytest.approx(1.3 * d.detector)
            assert (left["data_section"], left["bias_section"]) == ("[1:40,1:64]", "[41:50,1:64]")
            assert (right["data_section"], right["bias_section"]) == (
                "[61:100,1:64]",
                "[51:60,1:64]",
            )
            assert (left["saturation"], right["saturation"]) == (30000.0, 28000.0)
            assert ref.meta["exptime"] == 45.0 and ref.meta["airmass"] == 1.21
            exp = read_raw(repo, d)
            assert exp.image.shape == (64, 100)
            assert exp.info.gain == pytest.approx(1.2 * d.detector)
            assert math.isclose(exp.info.saturation, 28000.0)
        # Every detector asked: the original files come back byte for byte.
        report = retrieve(repo, tmp_path / "out")
        for raw in raws:
            assert (tmp_path / "out" / raw.name).read_bytes() == raw.read_bytes()
        assert {item.kind for _, item in report.written} == {"mef"}


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (("name: fakecam", "name: Fake Cam"), "name"),
        (("geometry:", "geometery:"), "geometery"),
        (("bias_section: BSECL", "bias_section: '[0:3,1:4]'"), "amplifiers[0].bias_section"),
        (("cards: [EXTVER]", "cards: [EXT VER NUMBER]"), "data_id.detector.cards"),
        (("saturation: 30000", "saturation: -1"), "amplifiers[0].saturation"),
        (("required: true}\n  band", "required: maybe}\n  band"), "data_id.detector.required"),
        (("derive", "derive"), None),
    ],
)
def test_bad_definitions_name_the_file_and_key(
    tmp_path: Path, change: tuple[str, str], key: str | None
) -> None:
    path = tmp_path / "cam.yaml"
    text = FAKECAM.replace(*change)
    if key is None:  # derive is only for the visit
        text = text.replace("{cards: [EXTVER], required: true}", "{derive: night_pixels}")
        key = "data_id.detector.derive"
    assert text != FAKECAM
    path.write_text(text)
    with pytest.raises(BadFileError) as info:
        load_instrument(path)
    assert info.value.path == str(path) and f"key {key!r}" in str(info.value)


def test_bad_yaml_and_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(BadFileError, match="not valid YAML"):
        parse_instrument("name: [unclosed", source="x.yaml")
    with pytest.raises(BadFileError, match="must be a YAML mapping"):
        parse_instrument("- a\n- b\n", source="x.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(FAKECAM.replace("data_id:", "dataid:"))
    raw = _fakecam_exposure(tmp_path / "f.fits", frame=1)
    code = main(["ingest", "--repo", str(tmp_path / "r"), "--instrument-file", str(bad), str(raw)])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "key 'dataid'" in err and str(bad) in err
    assert not (tmp_path / "r").exists()  # refused before any work


def test_header_a_definition_cannot_read_is_named(tmp_path: Path) -> None:
    definition = parse_instrument(FAKECAM, source="fakecam.yaml")
    raw = _fakecam_exposure(tmp_path / "f.fits", frame=3)
    with fits.open(raw, mode="update") as hdul:
        hdul[1].header["DSECR"] = "[61:140,1:64]"  # beyond the 100 columns
    report = ingest_files(Repository.open(tmp_path / "repo"), [raw], instrument=definition)
    assert not report.ok and len(report.results) == 1  # nothing of the file is archived
    message = report.results[0].message
    assert "amplifier R data_section [61:140,1:64]" in message and "DSECR" in message
    assert Repository.open(tmp_path / "repo").query() == []


def test_duplicate_detectors_in_one_file_are_refused(tmp_path: Path) -> None:
    raw = _fakecam_exposure(tmp_path / "f.fits", frame=4)
    text = FAKECAM.replace("cards: [EXTVER]", "cards: [NOSUCH], default: 0")
    text = text.replace("required: true}\n  band", "required: false}\n  band", 1)
    definition = parse_instrument(text, source="cam.yaml")
    report = ingest_files(Repository.open(tmp_path / "repo"), [raw], instrument=definition)
    assert not report.ok
    assert "both translate to data ID" in report.results[0].message
    assert "data_id.detector.cards" in report.results[0].message


def test_decam_definition_gets_visit_from_expnum_when_present() -> None:
    decam = load_instrument(DECAM_YAML)
    h = fits.Header({"INSTRUME": "DECam", "EXPNUM": 765432, "CCDNUM": 5, "FILTER": "g DECam",
                     "MJD-OBS": 58000.5, "DATASECA": "[1025:2048,1:4096]",
                     "BIASSECA": "[2049:2098,1:4096]", "GAINA": 4.1})  # fmt: skip
    assert decam.matches(h)
    t = decam.translate(h, pixel_sha256=lambda: "0" * 64, path="x.fits", shape=(4096, 2160))
    assert t.data_id == DataId("decam", detector=5, visit=765432, band="g")
    amp_a = t.metadata["amplifiers"][0]
    assert (amp_a["data_section"], amp_a["bias_section"]) == (
        "[1025:2048,1:4096]",
        "[2049:2098,1:4096]",
    )
    assert t.metadata["gain"] == 4.1  # amplifier B has no gain card: the mean of the known


def test_instrument_register_list_and_conflicts(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    repo_dir = tmp_path / "repo"
    Repository.open(repo_dir).close()
    cam = tmp_path / "fakecam.yaml"
    cam.write_text(FAKECAM)
    assert main(["instrument", "check", str(cam)]) == 0
    assert main(["instrument", "register", "--repo", str(repo_dir), str(cam)]) == 0
    assert main(["instrument", "register", "--repo", str(repo_dir), str(cam)]) == 0  # same: fine
    capsys.readouterr()
    cam.write_text(FAKECAM.replace("pixel_scale: 0.4", "pixel_scale: 0.5"))
    assert main(["instrument", "register", "--repo", str(repo_dir), str(cam)]) == 1
    assert "--replace" in capsys.readouterr().err
    assert main(["instrument", "register", "--repo", str(repo_dir), "--replace", str(cam)]) == 0
    stored = repo_dir / "instruments" / "fakecam.yaml"
    assert stored.read_text() == cam.read_text()
    shadow = tmp_path / "generic.yaml"
    shadow.write_text(FAKECAM.replace("name: fakecam", "name: generic"))
    assert main(["instrument", "register", "--repo", str(repo_dir), str(shadow)]) == 1
    assert "built-in" in capsys.readouterr().err
    assert main(["instrument", "list", "--repo", str(repo_dir)]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["fakecam", "skysim", "generic"]
    # The registered definition is also found by name.
    raw = _fakecam_exposure(tmp_path / "f.fits", frame=5)
    with fits.open(raw, mode="update") as hdul:
        hdul[0].header["INSTRUME"] = "OTHER"  # no longer matched by its cards
    argv = ["ingest", "--repo", str(repo_dir), "-q", "--instrument", "fakecam", str(raw)]
    assert main(argv) == 0
    with Repository.open(repo_dir, create=False) as repo:
        assert {r.data_id.instrument for r in repo.query()} == {"fakecam"}


def test_camera_added_by_yaml_alone_calibrates(tmp_path: Path) -> None:
    from skydm.image.psf import PixelPsf
    from skydm.pipeline.calibrate import calibrate_raw

    stamp = _decam_files()[0]
    repo = Repository.open(tmp_path / "repo")
    report = ingest_files(repo, [stamp], instrument=load_instrument(DECAM_YAML))
    assert report.ok
    header = fits.getheader(stamp)
    calexp = calibrate_raw(read_raw(repo, report.results[0].data_id))
    gain = (header["GAINA"] + header["GAINB"]) / 2
    assert calexp.info.gain == pytest.approx(gain) and calexp.info.instrument == "decam"
    assert isinstance(calexp.psf, PixelPsf)  # measured from the stamp's own stars
    # The variance plane follows the CCD equation with the definition's gain
    # (sky-limited: median variance ~ (image + sky) / gain).
    sky_plus_image = np.nanmedian(calexp.image + calexp.info.sky)
    assert np.nanmedian(calexp.variance) == pytest.approx(sky_plus_image / gain, rel=0.1)


def test_ingest_command_with_instrument_file(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    stamps = _decam_files()[:2]
    argv = ["ingest", "--repo", str(tmp_path / "repo"), "-q", "--instrument-file", str(DECAM_YAML)]
    assert main([*argv, *map(str, stamps)]) == 0
    out = capsys.readouterr().out
    assert out.count("ingested:") == 2 and out.count("instrument=decam") == 2
    assert main([*argv, "--instrument", "generic", str(stamps[0])]) == 2  # a usage error
    assert "not both" in capsys.readouterr().err
