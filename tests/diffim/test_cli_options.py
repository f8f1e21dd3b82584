"""``skydm diffim`` options: PSFs, zero points, config, output checks and bad input.

Every bad input ends in one line naming the file or option, exit status 1
(2 for argparse usage errors), and no output file.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table
from diffim_helpers import DECAM, read

from skydm.cli.main import build_parser, main
from skydm.diffim import DiffimConfig
from skydm.image import read_exposure
from skydm.sim.pair import simulate_pair


def _options() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {s for a in sub.choices["diffim"]._actions for s in a.option_strings}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def sim_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A simulated pair as plain FITS images (no GAIN, no SKY cards), PSFs as files."""
    root = tmp_path_factory.mktemp("simpair")
    science, template, truth = simulate_pair(
        57, shape=(256, 256), n_stars=150, n_transients=3, transient_mags=(19.5, 20.0)
    )
    out: dict[str, Path] = {}
    for name, exp in (("science", science), ("template", template)):
        path = root / f"{name}.fits"
        fits.PrimaryHDU(exp.image).writeto(path)
        out[name] = path
        out[f"{name}_exp"] = root / f"{name}_exp.fits"
        exp.write(out[f"{name}_exp"])
    assert science.psf is not None and template.psf is not None
    # A skydm PSF (PSF extension) and a plain PSF image.
    fits.HDUList([fits.PrimaryHDU(), science.psf.to_hdu()]).writeto(root / "psf_science.fits")
    fits.PrimaryHDU(template.psf.kernel()).writeto(root / "psf_template.fits")
    out["psf_science"], out["psf_template"] = root / "psf_science.fits", root / "psf_template.fits"
    # 63x63 cutouts around the first transient, as skydm Exposures without PSF.
    x, y = float(truth["x"][0]), float(truth["y"][0])
    x, y = float(np.clip(x, 40, 215)), float(np.clip(y, 40, 215))
    for name, exp in (("science", science), ("template", template)):
        cut = exp.cutout(x, y, 63)
        cut.psf = None
        out[f"{name}_cut"] = root / f"{name}_cut.fits"
        cut.write(out[f"{name}_cut"])
    t = Table({"x": [x], "y": [y]})
    t.write(root / "centre.ecsv")
    out["truth"] = root / "truth.ecsv"
    truth_xy = Table({"x": truth["x"], "y": truth["y"]})
    truth_xy.write(out["truth"])
    out["centre"] = root / "centre.ecsv"
    return out


def test_show_config_round_trips(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["diffim", "--show-config"]) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    assert set(data) == {"al", "zogy", "noise", "detection"}
    assert DiffimConfig.from_dict(data) == DiffimConfig()
    assert data["al"]["min_snr"] == 20.0 and data["noise"]["correlated"] is True


def test_config_file_fields_and_errors(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "diffim",
        str(data_dir / DECAM.format("04a")),
        str(data_dir / DECAM.format("18a")),
        "--quiet",
    ]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("detection:\n  threshold: 7\nal:\n  degrees: [3, 2, 1]\n")
    out, src = tmp_path / "d.fits", tmp_path / "s.ecsv"
    assert main([*args, "--config", str(cfg), "--out", str(out), "--sources", str(src)]) == 0
    assert Table.read(src).meta["threshold"] == 7.0
    # --threshold wins over the file.
    assert main([*args, "--config", str(cfg), "--threshold", "6", "--out", str(out)]) == 0
    capsys.readouterr()
    for text, expected in (
        ("detection:\n  treshold: 7\n", r"unknown field\(s\) treshold in section 'detection'"),
        ("noise:\n  radius: 0\n", r"noise.radius=0 is not allowed"),
        ("zogy: [1, 2]\n", r"section 'zogy' must be a mapping"),
        ("al:\n  min_snr: fast\n", r"al.min_snr must be a number"),
        ("detection: {threshold: [\n", r"is not valid YAML"),
    ):
        cfg.write_text(text)
        new_out = tmp_path / "never.fits"
        assert main([*args, "--config", str(cfg), "--out", str(new_out)]) == 1
        line = _one_error_line(capsys.readouterr().err)
        assert re.search(expected, line), line
        assert not new_out.exists()


@pytest.mark.parametrize(
    ("out", "sources", "expected"),
    [
        ("d.fits", "s.xyz", "unknown table format '.xyz'"),
        ("DIR", None, "names a directory"),
        ("/proc/d.fits", None, "cannot write there"),
        ("missing/sub/d.fits", None, "does not exist; create it first"),
        ("d.png", None, "--out must be a FITS file"),
    ],
)
def test_outputs_checked_before_work(
    sim_files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    out: str,
    sources: str | None,
    expected: str,
) -> None:
    target = tmp_path if out == "DIR" else (Path(out) if out.startswith("/") else tmp_path / out)
    argv = ["diffim", str(sim_files["science_exp"]), str(sim_files["template_exp"])]
    argv += ["--out", str(target), "--quiet"]
    if sources:
        argv += ["--sources", str(tmp_path / sources)]
    before = set(tmp_path.rglob("*"))
    assert main(argv) == 1
    assert expected in _one_error_line(capsys.readouterr().err)
    assert set(tmp_path.rglob("*")) == before  # nothing written, not even d.fits


@pytest.mark.parametrize("option", ["--threshold", "--gain", "--fwhm"])
def test_numeric_options_one_rule_one_message(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    messages = []
    for value in ("-3", "0", "nan", "abc"):
        with pytest.raises(SystemExit) as exc:
            main(["diffim", "s.fits", "t.fits", "--out", "d.fits", option, value])
        assert exc.value.code == 2
        line = _one_error_line(capsys.readouterr().err)
        messages.append(line.replace(repr(value), "V"))
    assert len(set(messages)) == 1
    assert option in messages[0] and "> 0" in messages[0]


def test_gain_without_sky_on_sky_subtracted_image(
    sim_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "d.fits"
    argv = ["diffim", str(sim_files["science"]), str(sim_files["template"]), "--out", str(out)]
    assert main([*argv, "--gain", "1.5", "--quiet"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "science.fits" in line and "--sky" in line and "sky-subtracted" in line
    assert not out.exists()
    # With the subtracted sky given, the CCD equation is right and it runs.
    assert main([*argv, "--gain", "1.5", "--read-noise", "5", "--sky", "1000", "--quiet"]) == 0
    assert out.exists()


def test_bad_images_one_message_no_output(
    sim_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    science = read_exposure(sim_files["science_exp"])
    out = tmp_path / "d.fits"
    # Non-positive variance.
    bad_var = science.copy()
    bad_var.variance = science.var.copy()
    bad_var.variance[100:103, 50] = -1.0
    bad_var.write(tmp_path / "badvar.fits")
    # Inverted (flux ratio <= 0) and unrelated images.
    inverted = science.copy()
    inverted.image = -science.image
    inverted.write(tmp_path / "inverted.fits")
    _, other, _ = simulate_pair(1234, shape=(256, 256), n_stars=150)
    other.wcs = science.wcs
    other.write(tmp_path / "other.fits")
    template = str(sim_files["template_exp"])
    for sci, expected in (
        ("badvar.fits", "variance plane is zero, negative or NaN on 3"),
        ("inverted.fits", "not positive"),
        ("other.fits", "unrelated"),
    ):
        for method in ("al", "zogy"):
            argv = ["diffim", str(tmp_path / sci), template, "--out", str(out)]
            assert main([*argv, "--method", method, "--quiet"]) == 1
            line = _one_error_line(capsys.readouterr().err)
            assert sci in line and expected in line, line
            if expected != "variance plane is zero, negative or NaN on 3":
                assert "template_exp.fits" in line  # both images named
            assert not out.exists()


def test_sentinels_in_a_template_file(
    sim_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fits.open(sim_files["template"]) as hdul:
        data = hdul[0].data.copy()
    data[100:110, 100:110] = -3.4e38
    data[30, 200] = 1e31
    fits.PrimaryHDU(data).writeto(tmp_path / "sentinel.fits")
    out = tmp_path / "d.fits"
    argv = ["diffim", str(sim_files["science"]), str(tmp_path / "sentinel.fits")]
    assert main([*argv, "--out", str(out), "--method", "zogy", "--quiet"]) == 0
    assert "101 NaN or sentinel" in capsys.readouterr().err
    diff = read_exposure(out)
    finite = np.isfinite(diff.image)
    assert finite.mean() > 0.9  # not the whole difference turned NaN


def test_cutouts_63_from_simulation_with_psf_files(
    sim_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, src = tmp_path / "d.fits", tmp_path / "s.ecsv"
    argv = [
        "diffim",
        str(sim_files["science_cut"]),
        str(sim_files["template_cut"]),
        "--out", str(out),
        "--sources", str(src),
        "--psf", str(sim_files["psf_science"]),
        "--template-psf", str(sim_files["psf_template"]),
        "--method", "zogy",
        "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    table = Table.read(src)
    # The transient sits at the cutout's centre (31, 31).
    hit = table[np.hypot(table["x"] - 31, table["y"] - 31) < 3]
    assert len(hit) == 1 and hit["snr"][0] >= 10
    assert np.count_nonzero(~table["flagged"]) <= 2
    assert read_exposure(out).shape == (63, 63)


def test_cutouts_63_from_decam_with_fwhm_and_zp(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for epoch in ("04a", "18a"):
        cut = read(data_dir / DECAM.format(epoch)).cutout(130, 128, 63)
        path = tmp_path / f"cut{epoch}.fits"
        cut.write(path)
        paths.append(path)
    out, src = tmp_path / "d.fits", tmp_path / "s.ecsv"
    argv = [
        "diffim", str(paths[0]), str(paths[1]),
        "--out", str(out), "--sources", str(src),
        "--fwhm", "5.2", "--template-fwhm", "3.9",
        "--zp", "30.0", "--template-zp", "30.0",
        "--method", "zogy", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    table = Table.read(src)
    hit = table[np.hypot(table["x"] - 31, table["y"] - 31) < 4]
    assert len(hit) == 1 and hit["snr"][0] >= 10
    assert np.count_nonzero(~table["flagged"]) <= 3
    diff = read_exposure(out)
    assert diff.zero_point == pytest.approx(30.0)  # carried for alerts produce
    # AL on 63x63: too few stars; the message names options that exist.
    assert main([*argv[:-3], "--method", "al", "--quiet"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    named = set(re.findall(r"--[a-z][a-z-]+", line))
    assert named and named <= _options()
    assert "--config" in named


def test_difference_zero_point_feeds_alerts_produce(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sci, tmp = str(data_dir / DECAM.format("04a")), str(data_dir / DECAM.format("18a"))
    out, src = tmp_path / "d.fits", tmp_path / "s.ecsv"
    argv = ["diffim", sci, tmp, "--out", str(out), "--sources", str(src), "--quiet"]
    assert main([*argv, "--zp", "31.2", "--template-zp", "31.2"]) == 0
    assert read_exposure(out).zero_point == pytest.approx(31.2)
    rc = main(
        [
            "alerts", "produce",
            "--diff", str(out), "--sources", str(src),
            "--science", sci, "--template", tmp,
            "--archive-dir", str(tmp_path / "alerts"),
        ]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err


def test_psf_file_errors(
    sim_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "flat.fits"
    fits.PrimaryHDU(np.zeros((5, 5))).writeto(bad)
    out = tmp_path / "d.fits"
    argv = ["diffim", str(sim_files["science_exp"]), str(sim_files["template_exp"])]
    assert main([*argv, "--out", str(out), "--psf", str(bad), "--quiet"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "flat.fits" in line and "--psf" in line
    assert main([*argv, "--out", str(out), "--psf", str(tmp_path / "none.fits")]) == 1
    assert "none.fits" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_exposure_psf_option_is_used(sim_files: dict[str, Path]) -> None:
    """``--psf`` of a skydm PSF file gives back the simulator's PSF."""
    from skydm.cli.diffim import read_psf

    psf = read_psf(sim_files["psf_science"], "--psf")
    truth = read_exposure(sim_files["science_exp"]).psf
    assert truth is not None
    assert psf.fwhm == pytest.approx(truth.fwhm, rel=0.02)
    img = read_psf(sim_files["psf_template"], "--template-psf")
    assert isinstance(img.kernel(), np.ndarray) and img.kernel().shape[0] % 2 == 1


def test_saturation_option_masks_bright_pixels(sim_files: dict[str, Path], tmp_path: Path) -> None:
    from skydm.image import Mask

    science = read_exposure(sim_files["science_exp"])
    level = float(np.percentile(science.image, 99.9))
    out = tmp_path / "d.fits"
    argv = ["diffim", str(sim_files["science"]), str(sim_files["template"]), "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    before = np.count_nonzero(read_exposure(out).msk & np.uint32(Mask.SAT))
    assert main([*argv, "--saturation", f"{level:.1f}", "--quiet"]) == 0
    sat = read_exposure(out).msk & np.uint32(Mask.SAT)
    # At least the pixels above the level (grown by the kernel) are SAT now.
    assert np.count_nonzero(sat) > before + np.count_nonzero(science.image >= level)


def test_every_option_named_in_a_message_exists() -> None:
    """Options named anywhere in diffim's messages are options of ``skydm diffim``."""
    import skydm.cli.diffim
    import skydm.diffim

    roots = [Path(skydm.diffim.__file__).parent, Path(skydm.cli.diffim.__file__)]
    files = [f for root in roots for f in (root.glob("*.py") if root.is_dir() else [root])]
    named = set()
    for f in files:
        named |= set(re.findall(r"(?<![\w-])--[a-z][a-z-]*[a-z]", f.read_text()))
    assert {"--psf", "--zp", "--config", "--sky"} <= named  # the scan sees them
    assert named <= _options() | {"--help"}, named - _options()
