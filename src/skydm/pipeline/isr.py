"""Instrument signature removal per amplifier: overscan, gain, saturation, trimming.

A raw is read out through one or more amplifiers, each with its own data
section, overscan (bias) section, gain, read noise and saturation level, as
the instrument definition describes them (``amplifiers`` in the YAML,
translated at ingest and carried as ``AMPn...`` cards by
:func:`skydm.archive.read_raw`).  :func:`remove_signature` subtracts each
amplifier's overscan row by row (Rubin's ``MEDIAN_PER_ROW``), flags its
saturated pixels at its own level, brings every amplifier to one common gain
(the mean of the amplifiers', so that the counts keep the scale of the
instrument's nominal zero point) and trims the overscan away.  The read
noise stays per amplifier in a map, for the variance plane.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from skydm.archive.instruments import Amplifier, Section, instrument_for
from skydm.errors import BadFileError
from skydm.image import Exposure, Mask


@dataclass(frozen=True)
class IsrProduct:
    """What :func:`remove_signature` makes of a raw.

    Attributes
    ----------
    exposure : Exposure
        The trimmed, bias-subtracted image (``float32``) in counts of the
        common ``gain``, SAT flagged, ``info.gain``, ``info.read_noise``
        (mean) and ``info.saturation`` (lowest, in these counts) updated.
    read_noise : numpy.ndarray
        Read noise in electrons at every pixel (its amplifier's).
    gain : float
        The common gain, electrons per count.
    n_amplifiers : int
        Amplifiers the raw was read through.
    """

    exposure: Exposure
    read_noise: np.ndarray
    gain: float
    n_amplifiers: int


def amplifiers_of(raw: Exposure) -> list[Amplifier]:
    """The amplifiers of a raw: from its ``AMPn...`` cards, else its instrument definition.

    :func:`skydm.archive.read_raw` sets the cards from what the instrument
    definition read at ingest; a raw read straight from a file is given to
    the built-in definition that claims its header.  Empty when neither
    describes any amplifier.

    Raises
    ------
    BadFileError
        When a section is malformed or outside the image.
    """
    if any(k.startswith("AMP1") for k in raw.meta):
        return _from_cards(raw)
    definition = instrument_for(raw.meta)
    return definition.read_amplifiers(raw.meta, path=raw.source or "raw", shape=raw.shape)


def _from_cards(raw: Exposure) -> list[Amplifier]:
    where = raw.source or "raw"
    amps = []
    n = 1
    while any(k.startswith(f"AMP{n}") for k in raw.meta):
        sections: list[Section | None] = []
        for key in (f"AMP{n}DSEC", f"AMP{n}BSEC"):
            text = raw.meta.get(key)
            if text is None:
                sections.append(None)
                continue
            try:
                section = Section.parse(str(text))
            except ValueError as exc:
                raise BadFileError(where, f"{key}: {exc}; re-ingest the raw") from None
            if not section.fits_in(raw.shape):
                raise BadFileError(
                    where, f"{key} = {text} lies outside the {raw.shape} image; re-ingest the raw"
                )
            sections.append(section)
        amps.append(
            Amplifier(
                str(raw.meta.get(f"AMP{n}NAME", n)),
                sections[0],
                sections[1],
                _number(raw.meta, f"AMP{n}GAIN"),
                _number(raw.meta, f"AMP{n}RDN"),
                _number(raw.meta, f"AMP{n}SAT"),
            )
        )
        n += 1
    return amps


def _number(meta: fits.Header, key: str) -> float:
    try:
        value = float(meta[key])
    except (KeyError, TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def remove_signature(raw: Exposure, amplifiers: list[Amplifier] | None = None) -> IsrProduct:
    """Overscan, gain and saturation per amplifier, then the data sections assembled.

    Parameters
    ----------
    raw : Exposure
        The raw image in ADU.
    amplifiers : list of Amplifier, optional
        Its amplifiers (:func:`amplifiers_of` when omitted).  Numbers an
        amplifier lacks (NaN) fall back to the raw's visit info.

    Returns
    -------
    IsrProduct
        A raw whose amplifiers have no data or bias sections keeps its
        pixels (as ``float32``) and only gets its saturated pixels flagged
        (at the lowest amplifier's level), with the mean gain.

    Raises
    ------
    BadFileError
        When some amplifiers have a data section and others not, or data
        sections overlap.
    """
    amps = amplifiers_of(raw) if amplifiers is None else amplifiers
    info = raw.info
    rn0 = info.read_noise if math.isfinite(info.read_noise) else 0.0
    if not amps:
        amps = [Amplifier("A", None, None, info.gain, rn0, info.saturation)]
    gains = [a.gain if math.isfinite(a.gain) else info.gain for a in amps]
    finite = [g for g in gains if math.isfinite(g) and g > 0]
    gain = float(np.mean(finite)) if finite else info.gain
    if all(a.data_section is None and a.bias_section is None for a in amps):
        # No sections (one amplifier, or a cutout such as the DECam stamps
        # whose amplifiers' pixels are not marked): one readout for the
        # whole image, with the mean gain and read noise and the lowest
        # saturation, as the archive's effective values.
        return _single(raw, _combined(amps, info.saturation, rn0), gain, rn0)
    where = raw.source or "raw"
    boxes = []
    for a in amps:
        if a.data_section is None:
            raise BadFileError(
                where,
                f"amplifier {a.name} has no data section while the raw has {len(amps)} "
                "amplifiers; give data_section for every amplifier in the instrument definition",
            )
        boxes.append(a.data_section)
    x0, y0 = min(b.x0 for b in boxes), min(b.y0 for b in boxes)
    x1, y1 = max(b.x1 for b in boxes), max(b.y1 for b in boxes)
    image = np.zeros((y1 - y0, x1 - x0), dtype=np.float32)
    noise = np.zeros(image.shape, dtype=np.float32)
    mask = np.full(image.shape, np.uint32(Mask.NO_DATA), dtype=np.uint32)
    covered = np.zeros(image.shape, dtype=bool)
    pixels = np.asarray(raw.image, dtype=np.float64)
    saturation = math.inf
    for a, g, box in zip(amps, gains, boxes, strict=True):
        out = (slice(box.y0 - y0, box.y1 - y0), slice(box.x0 - x0, box.x1 - x0))
        if covered[out].any():
            raise BadFileError(
                where, f"amplifier {a.name}'s data section {box} overlaps another's; fix the header"
            )
        covered[out] = True
        data = pixels[box.y0 : box.y1, box.x0 : box.x1]
        sat_level = a.saturation if math.isfinite(a.saturation) else info.saturation
        sat = data >= sat_level if math.isfinite(sat_level) else np.zeros(data.shape, bool)
        bias = _overscan(pixels, a.bias_section, box)
        scale = g / gain if math.isfinite(g) and g > 0 and math.isfinite(gain) else 1.0
        image[out] = ((data - bias) * scale).astype(np.float32)
        mask[out] = np.where(sat, np.uint32(Mask.SAT), np.uint32(0))
        noise[out] = a.read_noise if math.isfinite(a.read_noise) else rn0
        if math.isfinite(sat_level):
            saturation = min(saturation, (sat_level - float(np.max(bias))) * scale)
    exp = Exposure(
        image=image,
        mask=mask,
        variance=np.ones(image.shape, dtype=np.float32),
        wcs=raw.wcs.slice((slice(y0, y1), slice(x0, x1))) if raw.wcs is not None else None,
        psf=raw.psf,
        zero_point=raw.zero_point,
        info=copy.copy(info),
        meta=raw.meta.copy(),
        source=raw.source,
    )
    exp.info.gain = gain
    exp.info.read_noise = float(np.mean(noise[covered])) if covered.any() else rn0
    exp.info.saturation = saturation if math.isfinite(saturation) else math.nan
    return IsrProduct(exp, noise, gain, len(amps))


def _combined(amps: list[Amplifier], saturation: float, rn0: float) -> Amplifier:
    """One amplifier standing for several without sections."""
    if len(amps) == 1:
        return amps[0]
    noise = [a.read_noise for a in amps if math.isfinite(a.read_noise)]
    levels = [a.saturation for a in amps if math.isfinite(a.saturation)]
    return Amplifier(
        "+".join(a.name for a in amps),
        None,
        None,
        math.nan,
        float(np.mean(noise)) if noise else rn0,
        min(levels) if levels else saturation,
    )


def _single(raw: Exposure, amp: Amplifier, gain: float, rn0: float) -> IsrProduct:
    """One amplifier over the whole image, no overscan: the pixels as they are."""
    exp = raw.copy()
    exp.image = exp.image.astype(np.float32)
    sat = amp.saturation if math.isfinite(amp.saturation) else exp.info.saturation
    if math.isfinite(sat):
        exp.msk[exp.image >= sat] |= np.uint32(Mask.SAT)
    rn = amp.read_noise if math.isfinite(amp.read_noise) else rn0
    noise = np.full(exp.shape, rn, dtype=np.float32)
    return IsrProduct(exp, noise, gain, 1)


def _overscan(pixels: np.ndarray, bias: Section | None, data: Section) -> np.ndarray:
    """The bias level under every row of a data section (0 without overscan).

    The median of each overscan row when the overscan spans the data's
    rows (the bias drifts along the readout), else one median level.
    """
    if bias is None:
        return np.zeros((data.y1 - data.y0, 1))
    region = pixels[bias.y0 : bias.y1, bias.x0 : bias.x1]
    if bias.y0 <= data.y0 and bias.y1 >= data.y1:
        rows = region[data.y0 - bias.y0 : data.y1 - bias.y0]
        return np.median(rows, axis=1)[:, None]
    return np.full((data.y1 - data.y0, 1), float(np.median(region)))
