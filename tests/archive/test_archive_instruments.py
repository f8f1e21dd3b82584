"""Instrument definitions: header translation, derived visits, and the simulator's raws."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
from archive_rawfiles import sim_header
from astropy.io import fits

from skydm.archive import (
    InstrumentDefinition,
    builtin,
    get_instrument,
    ingest_files,
    instrument_for,
    restore_raw_bytes,
)
from skydm.archive.instruments import observation_mjd
from skydm.errors import BadFileError, BadValueError
from skydm.repo import DataId, Repository


def _digest(text: str = "pixels") -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def Generic() -> InstrumentDefinition:
    return builtin("generic")


def SkySim() -> InstrumentDefinition:
    return builtin("skysim")


def _translate(definition: InstrumentDefinition, header: fits.Header, pixels: str = "pixels"):  # type: ignore[no-untyped-def]
    return definition.translate(header, pixel_sha256=lambda: _digest(pixels), path="f.fits")


def test_skysim_translation() -> None:
    t = _translate(SkySim(), sim_header(visit=42, detector=5, band="i"))
    assert t.data_id == DataId("skysim", detector=5, visit=42, band="i")
    assert t.metadata["mjd"] == pytest.approx(60000.67) and t.metadata["exptime"] == 30.0


@pytest.mark.parametrize(
    ("card", "value", "problem"),
    [("VISIT", None, "needs a VISIT card"), ("VISIT", "first", "not a non-negative integer"),
     ("FILTER", None, "FILTER")],
)  # fmt: skip
def test_skysim_untranslatable_headers(card: str, value: object, problem: str) -> None:
    h = sim_header()
    if value is None:
        del h[card]
    else:
        h[card] = value
    with pytest.raises(BadFileError, match=problem) as info:
        _translate(SkySim(), h)
    assert info.value.path == "f.fits"


def test_generic_uses_exposure_number_detector_and_band() -> None:
    h = fits.Header({"EXPNUM": 123456, "CCDNUM": 37, "FILTER": "i DECam SDSS c0003",
                     "MJD-OBS": 58334.39})  # fmt: skip
    t = _translate(Generic(), h)
    assert t.data_id == DataId("generic", detector=37, visit=123456, band="i")
    h["FILTER"] = "g/r"
    assert _translate(Generic(), h).data_id.band == "g_r"  # made safe for file names


def test_generic_derived_visit_is_deterministic_and_dated() -> None:
    h = fits.Header({"DATE-OBS": "2015-12-27T06:26:24", "FILTER": "Clear"})
    a = _translate(Generic(), h, "one").data_id.visit
    assert a == _translate(Generic(), h, "one").data_id.visit  # same pixels, same visit
    b = _translate(Generic(), h, "two").data_id.visit
    assert a != b  # same header, other pixels: another exposure
    assert str(a).startswith("20151227") and len(str(a)) == 18
    assert a % 10**10 == int(_digest("one"), 16) % 10**10
    old = fits.Header({"DATE-OBS": "26/10/92"})  # pre-1997 FITS date form
    assert str(_translate(Generic(), old).data_id.visit).startswith("19921026")
    assert _translate(Generic(), old).data_id.band == "unknown"


def test_observation_time_cards() -> None:
    assert observation_mjd(fits.Header({"MJD-OBS": 60000.5})) == 60000.5
    assert observation_mjd(fits.Header({"JD": 2460001.0})) == pytest.approx(60000.5)
    h = fits.Header({"DATE-OBS": "2023-02-25", "TIME-OBS": "12:00:00"})
    assert observation_mjd(h) == pytest.approx(60000.5)
    assert math.isnan(observation_mjd(fits.Header({"DATE-OBS": "yesterday"})))
    assert math.isnan(observation_mjd(fits.Header({"FILTER": "V"})))


def test_instrument_choice() -> None:
    assert instrument_for(sim_header()).name == "skysim"
    assert instrument_for(fits.Header({"INSTRUME": "EMMI"})).name == "generic"
    assert instrument_for(sim_header(), "generic").name == "generic"
    with pytest.raises(BadValueError, match="generic, skysim|skysim, generic"):
        get_instrument("hubble")


@pytest.mark.parametrize("raw_dtype", ["uint16", "int32", "float32"])
def test_simulator_raws_ingest_bit_exact(tmp_path: Path, raw_dtype: str) -> None:
    sim = pytest.importorskip("skydm.sim")
    cfg = sim.SurveyConfig(
        seed=3, shape=(128, 160), n_visits=2, n_stars=40, n_galaxies=5, raw_dtype=raw_dtype,
        n_transients=0, n_variables=0, n_movers=0,
    )  # fmt: skip
    paths = sim.write_survey(sim.simulate_survey(cfg), tmp_path / "sim", clean=False)
    repo = Repository.open(tmp_path / "repo")
    report = ingest_files(repo, paths)
    assert report.ok, [r.line() for r in report.failed]
    for res in report.results:
        header = fits.getheader(res.path)
        expected = DataId("skysim", header.get("DETECTOR", 0), header["VISIT"], header["FILTER"])
        assert res.data_id == expected
        assert restore_raw_bytes(repo, expected) == Path(res.path).read_bytes()
    assert len({r.data_id for r in report.results}) == 2
