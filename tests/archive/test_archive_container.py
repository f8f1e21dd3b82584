"""The lossless container: bit-exact round trips of every BITPIX, real and simulated."""

from __future__ import annotations

import io
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from archive_rawfiles import RawMaker, raw_factory, raw_pixels, sim_header
from astropy.io import fits

from skydm.archive import codec_for, encode, restore_bytes
from skydm.errors import DataCorruptionError
from skydm_testing import require_executable


@pytest.fixture
def make_raw(tmp_path: Path) -> RawMaker:
    return raw_factory(tmp_path)


def _store(path: Path) -> bytes:
    container, _ = encode(path)
    return container


def _raw_arrays(data: bytes) -> list[np.ndarray]:
    """Every image HDU's stored values (no BZERO/BSCALE applied), as raw bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdul = fits.open(io.BytesIO(data), do_not_scale_image_data=True)
        out = []
        for h in hdul:
            if h.header.get("SKYDMRAW"):
                continue  # the container's byte map, not pixels
            if isinstance(h, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU) and (
                h.data is not None
            ):
                a = np.asarray(h.data)
                out.append(a.astype(a.dtype.newbyteorder(">")).view(np.uint8).copy())
        return out


def test_eso085_uint16_bzero_round_trip_is_bit_exact(data_dir: Path) -> None:
    files = sorted((data_dir / "eso085_null_pair").glob("*.fit"))
    assert len(files) == 2
    for path in files:
        source = path.read_bytes()
        stored = _store(path)
        assert restore_bytes(stored) == source
        # The compressed HDU itself holds the raw integers and BZERO exactly...
        (orig,) = _raw_arrays(source)
        (comp,) = _raw_arrays(stored)
        assert np.array_equal(orig, comp)
        with fits.open(io.BytesIO(stored)) as h:
            assert h[1].header["BZERO"] == 32768 and h[1].header["BITPIX"] == 16
            # ...so an ordinary reader gets the same uint16 values as from the source.
            assert np.array_equal(h[1].data, fits.getdata(path))
            assert h[1].data.dtype == np.uint16
        assert len(source) / len(stored) > 1.6  # Rice on real 16-bit CCD data


def test_bscale_bzero_and_invalid_cards_survive(data_dir: Path) -> None:
    path = data_dir / "ntt_single" / "image.fits"  # BITPIX 16, BSCALE 2.92, ESO-LOG cards
    stored = _store(path)
    assert restore_bytes(stored) == path.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fits.open(io.BytesIO(stored)) as h, fits.open(path) as o:
            assert np.array_equal(h[1].data, o[0].data)  # scaled floats agree exactly


@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32", "uint8", "float32", "float64"])
def test_simulated_raws_round_trip(make_raw: RawMaker, dtype: str) -> None:
    path = make_raw(f"raw_{dtype}.fits", dtype, shape=(256, 384))
    stored = _store(path)
    assert restore_bytes(stored) == path.read_bytes()
    assert [a.tobytes() for a in _raw_arrays(stored)] == [
        a.tobytes() for a in _raw_arrays(path.read_bytes())
    ]
    if dtype in ("uint16", "int16", "int32"):
        assert path.stat().st_size / len(stored) > 1.5  # noisy raws still compress


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_nan_payloads_negative_zero_and_inf_are_kept(tmp_path: Path, dtype: str) -> None:
    data = raw_pixels(3, (40, 50)).astype(dtype) - 1000.0  # negatives too
    bits = data.view(np.uint32 if dtype == "float32" else np.uint64)
    if dtype == "float32":
        bits[0, 0], bits[0, 1] = 0x7FC00123, 0xFFC00001  # NaNs with payloads, both signs
    else:
        bits[0, 0], bits[0, 1] = 0x7FF8000000000123, 0xFFF8000000000001
    data[1, 1], data[1, 2], data[1, 3] = -0.0, np.inf, -np.inf
    data[2, :] = np.nan
    path = tmp_path / "f.fits"
    fits.PrimaryHDU(data, header=sim_header()).writeto(path)
    stored = _store(path)
    assert restore_bytes(stored) == path.read_bytes()
    (orig,) = _raw_arrays(path.read_bytes())
    (comp,) = _raw_arrays(stored)
    assert np.array_equal(orig, comp)  # bit for bit, payloads and signs included
    with fits.open(io.BytesIO(stored)) as h:
        assert h[1].header.get("ZQUANTIZ") is None or h[1].header["ZQUANTIZ"] == "NONE"


def test_multi_extension_with_table_and_int64(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    primary = fits.PrimaryHDU(header=sim_header())
    img1 = fits.ImageHDU(rng.integers(-5000, 5000, (30, 40)).astype(np.int32), name="CCD1")
    img2 = fits.ImageHDU(rng.integers(-(2**40), 2**40, (20, 10)).astype(np.int64), name="CCD2")
    table = fits.BinTableHDU.from_columns(
        [fits.Column(name="x", format="D", array=rng.normal(size=7))], name="CAT"
    )
    cube = fits.ImageHDU(rng.normal(size=(3, 8, 9)).astype(np.float32), name="CUBE")
    path = tmp_path / "mef.fits"
    fits.HDUList([primary, img1, table, img2, cube]).writeto(path)
    _, info = encode(path)
    assert info.n_hdus == 5 and info.n_images == 3 and info.bitpix == (32, 64, -32)
    stored = _store(path)
    assert restore_bytes(stored) == path.read_bytes()
    with fits.open(io.BytesIO(stored)) as h:
        assert h[0].header["VISIT"] == 7  # source primary cards kept readable
        assert h[1].header["ZCMPTYPE"] == "RICE_1" if "ZCMPTYPE" in h[1].header else True
        assert np.array_equal(h["CCD2"].data, img2.data)


def test_codec_choice_keeps_floats_and_int64_lossless() -> None:
    assert codec_for(16) == "RICE_1" and codec_for(32) == "RICE_1" and codec_for(8) == "RICE_1"
    assert codec_for(-32) == "GZIP_2" and codec_for(-64) == "GZIP_2" and codec_for(64) == "GZIP_2"
    assert codec_for(-32, "RICE_1") == "GZIP_2"  # Rice on floats would quantize


def test_damaged_container_is_refused(make_raw: RawMaker) -> None:
    stored = bytearray(_store(make_raw("r.fits", "int32")))
    # Flip a byte inside the compressed pixels (after the primary header).
    stored[2880 * 3 + 100] ^= 0xFF
    with pytest.raises(DataCorruptionError):
        restore_bytes(bytes(stored))


def test_funpack_reads_the_container(data_dir: Path, tmp_path: Path) -> None:
    funpack = require_executable("funpack", "install Debian package libcfitsio-bin")
    source = data_dir / "eso085_null_pair" / "aligned_eso085-030-004.fit"
    stored = tmp_path / "stored.fits"
    stored.write_bytes(_store(source))
    out = tmp_path / "unpacked.fits"
    subprocess.run([funpack, "-O", str(out), str(stored)], check=True, capture_output=True)
    with fits.open(out) as h:
        images = [x for x in h if x.is_image and x.data is not None and x.data.ndim == 2]
        assert np.array_equal(images[0].data, fits.getdata(source))
