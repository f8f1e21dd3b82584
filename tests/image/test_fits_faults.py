"""One FITS reader, one message per fault (issue 14, item 19), and the readers fuzzed.

The fuzz cases start from the real files in ``../shared/data/real`` and cut
them short, flip bits, or replace header cards with hostile ones; every
reader must then either read the file or raise a skydm error, never anything
else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.wcs import WCS
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import budget
from skydm.archive.container import encode
from skydm.coadd.stack import WarpStack
from skydm.errors import BadFileError, SkydmError
from skydm.image import Exposure, read_exposure
from skydm_testing import DATA

REAL = [
    DATA / "ntt_single" / "image.fits",
    DATA / "decam_pair" / "input_data__DEC-OBS04a.mini.fits",
    DATA / "eso085_null_pair" / "aligned_eso085-030-004.fit",
]
pytestmark = pytest.mark.skipif(not REAL[0].exists(), reason="no shared test data")

READERS = {
    "read_exposure": read_exposure,
    "ingest (encode)": lambda p: encode(p),
    "coadd (WarpStack)": lambda p: WarpStack([p]),
}


def _faults(tmp: Path) -> dict[str, tuple[Path, str]]:
    real = REAL[1].read_bytes()
    cut = tmp / "cut.fits"
    cut.write_bytes(real[:80_000])
    text = tmp / "notes.fits"
    text.write_text("ra dec\n1 2\n")
    damaged = tmp / "damaged.fits"
    damaged.write_bytes(b"SIMPLE  = " + b"\0" * 3000)
    return {
        "truncated": (
            cut,
            f"{cut}: is truncated: HDU 0 needs {len(real)} bytes but the file has 80000; "
            "copy it again from its source",
        ),
        "missing": (tmp / "nope.fits", f"{tmp / 'nope.fits'}: no such file; check the path"),
        "not FITS": (
            text,
            f"{text}: is not a FITS file (it does not start with SIMPLE =); give a FITS image",
        ),
        "damaged header": (damaged, f"{damaged}: is not a readable FITS file ("),
    }


@pytest.mark.parametrize("fault", ["truncated", "missing", "not FITS", "damaged header"])
def test_every_reader_gives_the_same_message(fault: str, tmp_path: Path) -> None:
    path, message = _faults(tmp_path)[fault]
    seen = set()
    for reader in READERS.values():
        with pytest.raises(BadFileError) as info:
            reader(path)
        seen.add(str(info.value))
        assert str(info.value).startswith(message)
        assert "\n" not in str(info.value)
        assert "ignore_missing_simple" not in str(info.value)
        assert "reshape" not in str(info.value)
    assert len(seen) == 1, seen


def test_commands_report_a_truncated_file_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from skydm.cli.main import main

    path, message = _faults(tmp_path)["truncated"]
    assert main(["ingest", "-q", "--repo", str(tmp_path / "repo"), str(path)]) == 1
    assert main(["coadd", str(path), "--out", str(tmp_path / "c.fits")]) == 1
    err = capsys.readouterr().err
    assert err.count(message) == 2
    assert not (tmp_path / "c.fits").exists()


def _warp(path: Path, crval: tuple[float, float], shape: tuple[int, int] = (64, 64)) -> Path:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = crval
    wcs.wcs.crpix = [shape[1] / 2, shape[0] / 2]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    rng = np.random.default_rng(1)
    Exposure(image=rng.normal(0, 1, shape).astype(np.float32), wcs=wcs).write(path)
    return path


def test_wcs_mismatch_says_how_far_apart(tmp_path: Path) -> None:
    a = _warp(tmp_path / "a.fits", (10.0, 20.0))
    b = _warp(tmp_path / "b.fits", (10.0, 20.0 + 3 * 0.2 / 3600))  # 3 pixels north
    c = _warp(tmp_path / "c.fits", (10.0, 20.0), shape=(64, 32))
    with pytest.raises(BadFileError) as info:
        WarpStack([a, b])
    text = str(info.value)
    assert text.startswith(f"{b}: is not on the same pixel grid as {a}")
    assert "same size, but its WCS puts the same pixels up to 3.00 pixels apart" in text
    assert "warp every visit onto one sky cell's grid" in text
    with pytest.raises(BadFileError, match=r"it is 32x64 pixels, .*a\.fits is 64x64"):
        WarpStack([a, c])


# -- fuzzing ---------------------------------------------------------------------------

HOSTILE_CARDS = [
    "NAXIS1  = 999999999",
    "NAXIS1  = 0",
    "NAXIS   = 3",
    "NAXIS   = -1",
    "NAXIS2  = 'abc'",
    "BITPIX  = 7",
    "BITPIX  = 64",
    "BITPIX  = -32",
    "BZERO   = 'x'",
    "BSCALE  = 0",
    "BSCALE  = 1E400",
    "END",
    "SIMPLE  = F",
    "EXTEND  = T",
    "XTENSION= 'BINTABLE'",
    "PCOUNT  = -5",
    "GCOUNT  = 2",
    "CTYPE1  = 'RA---XYZ'",
    "CTYPE2  = 'DEC--TAN'",
    "CD1_1   = 'nan'",
    "CRVAL1  = 1E400",
    "CRPIX1  = -1E300",
    "CDELT1  = 0",
    "PC1_1   = 0",
    "EXPTIME = -1",
    "GAIN    = 'x'",
    "GAIN    = 0",
    "RDNOISE = -3",
    "SATURATE= 'high'",
    "MJD-OBS = 'yesterday'",
    "DATE-OBS= '2020-13-45T99:99:99'",
    "SKYDMEXP= T",
    "ZP      = 'nan'",
    "AIRMASS = 1E308",
    "CONTINUE  'x'",
    "HIERARCH ESO DET OUT1 GAIN = 'bad'",
]

_sources = {path: path.read_bytes() for path in REAL if path.exists()}


def _header_cards(data: bytes) -> int:
    end = data.find(b"END" + b" " * 77)
    return max(1, end // 80) if end >= 0 else 36


mutations = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0.0, 1.0)),
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 7)), min_size=1, max_size=8),
        st.booleans(),  # in the header only, or anywhere
    ),
    st.tuples(
        st.just("card"),
        st.integers(0, 400),
        st.one_of(
            st.sampled_from(HOSTILE_CARDS),
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
        ),
    ),
)


def _mutate(data: bytes, mutation: tuple) -> bytes:  # type: ignore[type-arg]
    kind = mutation[0]
    if kind == "truncate":
        return data[: int(mutation[1] * len(data))]
    buf = bytearray(data)
    if kind == "flip":
        span = _header_cards(data) * 80 if mutation[2] else len(buf)
        for where, bit in mutation[1]:
            buf[min(int(where * span), len(buf) - 1)] ^= 1 << bit
        return bytes(buf)
    index = min(mutation[1], _header_cards(data) - 1)
    card = mutation[2].encode("ascii").ljust(80)[:80]
    buf[index * 80 : index * 80 + 80] = card
    return bytes(buf)


@budget(120)
@given(source=st.sampled_from(sorted(_sources)), mutation=mutations)
def test_fuzz_fits_readers_raise_only_skydm_errors(
    source: Path,
    mutation: tuple,
    tmp_path_factory: pytest.TempPathFactory,  # type: ignore[type-arg]
) -> None:
    data = _mutate(_sources[source], mutation)
    path = tmp_path_factory.mktemp("fuzz") / "case.fits"
    path.write_bytes(data)
    for name, reader in READERS.items():
        try:
            reader(path)
        except SkydmError as exc:
            assert str(exc).strip(), name
        except MemoryError:  # pragma: no cover - would be a finding
            pytest.fail(f"{name}: ran out of memory on {mutation}")


def test_regression_nul_byte_in_a_card_value(tmp_path: Path) -> None:
    """Fuzz finding: a NUL in a card value made ``HDUList.fileinfo`` raise ValueError."""
    data = bytearray(REAL[1].read_bytes())
    at = data.find(b"WTMAP   = ")
    assert at >= 0
    data[at + 79] = 0
    path = tmp_path / "nul.fits"
    path.write_bytes(bytes(data))
    exposure = read_exposure(path)
    assert exposure.shape == (256, 256)
    assert encode(path)[1] is not None
