"""Instrument definitions: how a raw header becomes a data ID and metadata.

A camera is described by data, not code: an :class:`InstrumentDefinition` is
parsed from a YAML file (:mod:`skydm.archive.instrument_file` documents and
validates the format).  The built-in ``skysim`` (the simulator's camera) and
``generic`` (any FITS image) definitions are YAML files shipped in
``skydm/archive/cameras/`` and loaded by the same code; a repository can hold
more (``skydm instrument register``), and ``skydm ingest --instrument-file``
takes one for a single run.

A header a definition cannot translate is a per-file error
(:class:`BadFileError`) that names the card, the bad value and what to do.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

from astropy.io import fits
from astropy.time import Time

from skydm.errors import BadFileError, BadValueError
from skydm.repo import DataId

_BAND_CHARS = re.compile(r"[^A-Za-z0-9_.+-]")
_SECTION = re.compile(r"^\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]$")
#: How a visit is made when no card gives one (see ``docs/archive.md``).
DERIVATIONS = ("night_pixels",)
_NUMERIC_META = ("exptime", "airmass", "seeing", "ra", "dec", "pixel_scale")


@dataclass(frozen=True)
class Translation:
    """What an instrument definition makes of a raw header."""

    data_id: DataId
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Section:
    """A rectangle of an image from a FITS section ``[x1:x2,y1:y2]`` (1-based, inclusive).

    Attributes
    ----------
    x0, x1, y0, y1 : int
        0-based half-open bounds, so that ``image[y0:y1, x0:x1]`` is the section.
    """

    x0: int
    x1: int
    y0: int
    y1: int

    @classmethod
    def parse(cls, text: str) -> Section:
        """Parse ``[x1:x2,y1:y2]``; raises :class:`ValueError` when it is not one."""
        m = _SECTION.match(str(text).strip())
        if m is None:
            raise ValueError(f"{text!r} is not a FITS section [x1:x2,y1:y2]")
        a, b, c, d = (int(g) for g in m.groups())
        if min(a, b, c, d) < 1:
            raise ValueError(f"{text!r} has a bound below 1")
        return cls(min(a, b) - 1, max(a, b), min(c, d) - 1, max(c, d))

    def fits_in(self, shape: tuple[int, ...]) -> bool:
        """Whether the section lies inside an image of ``shape`` (rows, columns)."""
        return len(shape) == 2 and self.x1 <= shape[1] and self.y1 <= shape[0]

    def __str__(self) -> str:
        return f"[{self.x0 + 1}:{self.x1},{self.y0 + 1}:{self.y1}]"


@dataclass(frozen=True)
class CardValue:
    """A value read from the first present header card of ``cards``, else ``value``."""

    cards: tuple[str, ...] = ()
    value: float | str | None = None


@dataclass(frozen=True)
class IdRule:
    """How one data-ID part is read from the header.

    Attributes
    ----------
    cards : tuple of str
        Cards tried in order.
    required : bool
        A header with none of them is an error.
    default : int or str or None
        Used when no card gives a value and the part is not required.
    lenient : bool
        Skip a card whose value is not a valid (for numbers: positive) value
        and try the next, instead of refusing the file.
    derive : str or None
        For the visit: how to make one when no card gives it (``night_pixels``).
    values : mapping
        Band only: header values (whole or first word) mapped to band names.
    """

    cards: tuple[str, ...] = ()
    required: bool = False
    default: int | str | None = None
    lenient: bool = False
    derive: str | None = None
    values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AmplifierSpec:
    """Where an amplifier's sections and electronics come from."""

    name: str
    data_section: CardValue | None = None
    bias_section: CardValue | None = None
    gain: CardValue | None = None
    read_noise: CardValue | None = None
    saturation: CardValue | None = None


@dataclass(frozen=True)
class Amplifier:
    """One amplifier of a raw, as read from its header.

    ``data_section`` is ``None`` for the whole image; ``bias_section`` is
    ``None`` when the raw has no overscan; numbers are NaN when unknown.
    """

    name: str
    data_section: Section | None
    bias_section: Section | None
    gain: float
    read_noise: float
    saturation: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (sections as FITS strings, unknown numbers as ``None``)."""

        def num(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "name": self.name,
            "data_section": str(self.data_section) if self.data_section else None,
            "bias_section": str(self.bias_section) if self.bias_section else None,
            "gain": num(self.gain),
            "read_noise": num(self.read_noise),
            "saturation": num(self.saturation),
        }


@dataclass(frozen=True)
class Geometry:
    """Detector geometry: nominal shape (rows, columns), pixel scale, focal-plane place."""

    shape: tuple[int, int] | None = None
    pixel_scale: float | None = None
    focal_plane_section: CardValue | None = None


@dataclass(frozen=True)
class InstrumentDefinition:
    """A camera's header conventions, loaded from YAML (see :mod:`skydm.archive.instrument_file`).

    Attributes
    ----------
    name : str
        The ``instrument`` of the data IDs it makes.
    source : str
        The YAML file it came from (for messages).
    match : mapping of str to tuple of str
        Header cards and accepted values that identify the camera's raws;
        empty for a catch-all definition.
    visit, detector, band : IdRule
        How the data-ID parts are read.
    time_cards : tuple of str
        Cards tried for the observation time (MJD, JD or ISO date cards).
    time_required : bool
        A header without an observation time is an error.
    metadata : mapping of str to tuple of str
        Other visit metadata (``exptime``, ``airmass``, ``object``...) and its cards.
    amplifiers : tuple of AmplifierSpec
        Per-amplifier sections and electronics.
    geometry : Geometry
        Detector geometry.
    """

    name: str
    source: str
    description: str = ""
    match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    visit: IdRule = IdRule()
    detector: IdRule = IdRule(default=0)
    band: IdRule = IdRule(default="unknown")
    time_cards: tuple[str, ...] = ("MJD-OBS", "MJD", "JD", "DATE-OBS")
    time_required: bool = False
    metadata: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    amplifiers: tuple[AmplifierSpec, ...] = ()
    geometry: Geometry = Geometry()

    def matches(self, header: fits.Header) -> bool:
        """Whether ``header`` is from this camera (a definition without ``match`` never claims)."""
        if not self.match:
            return False
        for card, accepted in self.match.items():
            value = header.get(card)
            if value is None or str(value).strip().upper() not in accepted:
                return False
        return True

    # -- translation -----------------------------------------------------------
    def translate(
        self,
        header: fits.Header,
        *,
        pixel_sha256: Callable[[], str],
        path: object,
        shape: tuple[int, ...] | None = None,
    ) -> Translation:
        """The data ID and metadata of a raw.

        Parameters
        ----------
        header : astropy.io.fits.Header
            Primary header merged with the raw's image HDU header.
        pixel_sha256 : callable
            Returns the hex SHA-256 of the exposure's pixel bytes (computed
            only when the visit is derived from them).
        path : object
            The file, for error messages.
        shape : tuple of int, optional
            The image's shape (rows, columns), to check amplifier sections.

        Raises
        ------
        BadFileError
            When the header lacks what the definition needs, naming the card.
        """
        mjd = self._mjd(header, path)
        visit = self._integer("visit", self.visit, header, path)
        if visit is None:
            visit = self._derive_visit(header, mjd, pixel_sha256, path)
        detector = self._integer("detector", self.detector, header, path)
        band = self._band(header, path)
        data_id = DataId(self.name, detector=detector or 0, visit=visit, band=band)
        meta: dict[str, Any] = {"mjd": mjd if math.isfinite(mjd) else None}
        for key, cards in self.metadata.items():
            meta[key] = _meta_value(header, cards, numeric=key in _NUMERIC_META)
        amps = self.read_amplifiers(header, path=path, shape=shape)
        meta.update(_effective(amps))
        if amps:
            meta["amplifiers"] = [a.as_dict() for a in amps]
        if self.geometry.pixel_scale is not None:
            meta["pixel_scale"] = self.geometry.pixel_scale
        if self.geometry.focal_plane_section is not None:
            meta["focal_plane_section"] = _card_text(header, self.geometry.focal_plane_section)
        if (
            self.geometry.shape is not None
            and shape is not None
            and tuple(shape) != tuple(self.geometry.shape)
        ):
            raise BadFileError(
                path,
                f"the image is {shape[0]}x{shape[1]} (rows x columns) but the {self.name} "
                f"instrument definition ({self.source}) says detectors are "
                f"{self.geometry.shape[0]}x{self.geometry.shape[1]}; use the right definition "
                "or fix geometry.shape",
            )
        return Translation(data_id, meta)

    def _what(self) -> str:
        return f"the {self.name} instrument definition ({self.source})"

    def _mjd(self, header: fits.Header, path: object) -> float:
        for card in self.time_cards:
            mjd = card_mjd(header, card)
            if math.isfinite(mjd):
                return mjd
        if self.time_required:
            raise BadFileError(
                path,
                f"the header has no observation time ({', '.join(self.time_cards)}), which "
                f"{self._what()} needs to identify the visit; add one",
            )
        return math.nan

    def _integer(self, part: str, rule: IdRule, header: fits.Header, path: object) -> int | None:
        for card in rule.cards:
            value = header.get(card)
            if value is None:
                continue
            number = _as_int(value)
            if number is not None and (number > 0 or (number == 0 and not rule.lenient)):
                return number
            if rule.lenient:
                continue
            raise BadFileError(
                path,
                f"{card} = {value!r} is not a non-negative integer, which {self._what()} "
                f"needs for the {part}; fix the card or use another instrument definition",
            )
        if rule.required:
            raise BadFileError(
                path,
                f"{self._what()} needs a {' or '.join(rule.cards)} card for the {part} and "
                f"the header has none; is it a {self.name} raw? ingest other cameras with "
                "--instrument generic or --instrument-file CAMERA.yaml",
            )
        return rule.default if isinstance(rule.default, int) else None

    def _derive_visit(
        self, header: fits.Header, mjd: float, pixel_sha256: Callable[[], str], path: object
    ) -> int:
        if self.visit.derive != "night_pixels":
            return 0
        if not math.isfinite(mjd):
            raise BadFileError(
                path,
                f"the header has no observation time ({', '.join(self.time_cards)}) nor "
                f"{' or '.join(self.visit.cards)}, which {self._what()} needs to identify "
                "the visit; add one",
            )
        day = Time(mjd, format="mjd", scale="utc").datetime
        day_obs = day.year * 10000 + day.month * 100 + day.day
        return int(day_obs * 10**10 + int(pixel_sha256(), 16) % 10**10)

    def _band(self, header: fits.Header, path: object) -> str:
        rule = self.band
        for card in rule.cards:
            value = header.get(card)
            if value is None or not str(value).strip():
                continue
            text = str(value).strip()
            first = text.split()[0]
            mapped = rule.values.get(text, rule.values.get(first, first))
            band = _BAND_CHARS.sub("_", mapped)[:64]
            return band if band[0].isalnum() else f"b{band}"[:64]
        if rule.required:
            raise BadFileError(
                path,
                f"{self._what()} needs a {' or '.join(rule.cards)} card for the band and "
                "the header has none; add one or use another instrument definition",
            )
        return str(rule.default) if rule.default is not None else "unknown"

    def read_amplifiers(
        self, header: fits.Header, *, path: object, shape: tuple[int, ...] | None = None
    ) -> list[Amplifier]:
        """The amplifiers of a raw, as its header describes them.

        An amplifier after the first none of whose cards is in the header is
        not on this raw (a camera read out through fewer amplifiers, or a
        definition listing more than a raw uses), and is left out.

        Raises
        ------
        BadFileError
            When a section card is malformed or lies outside the image.
        """
        amps = []
        for k, spec in enumerate(self.amplifiers):
            if k > 0 and not _any_card(header, spec):
                continue
            amps.append(self._amplifier(spec, header, path, shape))
        return amps

    def _amplifier(
        self,
        spec: AmplifierSpec,
        header: fits.Header,
        path: object,
        shape: tuple[int, ...] | None,
    ) -> Amplifier:
        sections: dict[str, Section | None] = {}
        for what, source in (
            ("data_section", spec.data_section),
            ("bias_section", spec.bias_section),
        ):
            text = _card_text(header, source) if source is not None else None
            if text is None:
                sections[what] = None
                continue
            where = _where(source)
            try:
                section = Section.parse(text)
            except ValueError as exc:
                raise BadFileError(
                    path,
                    f"amplifier {spec.name} {what} ({where}): {exc}; fix the header or "
                    f"{self.source}",
                ) from None
            if shape is not None and not section.fits_in(shape):
                raise BadFileError(
                    path,
                    f"amplifier {spec.name} {what} {section} ({where}) lies outside the "
                    f"{shape[0]}x{shape[1]} image; fix the header or {self.source}",
                )
            sections[what] = section
        return Amplifier(
            spec.name,
            sections["data_section"],
            sections["bias_section"],
            _card_number(header, spec.gain),
            _card_number(header, spec.read_noise),
            _card_number(header, spec.saturation),
        )


def _any_card(header: fits.Header, spec: AmplifierSpec) -> bool:
    """Whether the header has a card of the amplifier, or it has a value of its own."""
    sources = (spec.data_section, spec.bias_section, spec.gain, spec.read_noise, spec.saturation)
    for source in sources:
        if source is None:
            continue
        if not source.cards and source.value is not None:
            return True
        if any(header.get(card) is not None for card in source.cards):
            return True
    return False


def _where(source: CardValue | None) -> str:
    if source is None:
        return "unset"
    return "card " + "/".join(source.cards) if source.cards else "fixed in the definition"


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _card_text(header: fits.Header, source: CardValue) -> str | None:
    for card in source.cards:
        value = header.get(card)
        if value is not None and str(value).strip():
            return str(value).strip()
    return str(source.value) if source.value is not None else None


def _card_number(header: fits.Header, source: CardValue | None) -> float:
    if source is None:
        return math.nan
    for card in source.cards:
        value = _number(header, card)
        if math.isfinite(value):
            return value
    try:
        return float(source.value) if source.value is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _meta_value(header: fits.Header, cards: tuple[str, ...], *, numeric: bool) -> Any:
    for card in cards:
        if numeric:
            value = _number(header, card)
            if math.isfinite(value):
                return value
            continue
        raw = header.get(card)
        if raw is not None and str(raw).strip():
            return raw if isinstance(raw, int | float) else str(raw).strip()
    return None


def _effective(amps: list[Amplifier]) -> dict[str, float | None]:
    """One gain, read noise and saturation for the whole detector.

    Stages that take one number per detector get the mean gain and read
    noise and the lowest saturation (a pixel is unreliable as soon as its
    amplifier saturates); the per-amplifier values stay in the metadata.
    """
    out: dict[str, float | None] = {}
    for key, combine in (("gain", "mean"), ("read_noise", "mean"), ("saturation", "min")):
        values = [getattr(a, key) for a in amps if math.isfinite(getattr(a, key))]
        if not values:
            continue
        out[key] = min(values) if combine == "min" else sum(values) / len(values)
    return out


def _number(header: fits.Header, key: str) -> float:
    try:
        value = float(header[key])
    except (KeyError, TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


def card_mjd(header: fits.Header, card: str) -> float:
    """Observation time (MJD) from one card: an MJD, a JD or an ISO/FITS date; NaN if unusable."""
    if card == "JD" or card.endswith("-JD"):
        jd = _number(header, card)
        return jd - 2400000.5 if math.isfinite(jd) else math.nan
    if "MJD" in card:
        return _number(header, card)
    raw = header.get(card)
    if not isinstance(raw, str) or not raw.strip():
        return math.nan
    text = raw.strip()
    time_obs = header.get("TIME-OBS") or header.get("UT")
    if "T" not in text and isinstance(time_obs, str) and time_obs.strip():
        text = f"{text}T{time_obs.strip()}"
    try:
        return float(Time(text, scale="utc").mjd)
    except ValueError:
        pass
    # The pre-1997 FITS form 'DD/MM/YY' means years 1900-1999.
    try:
        day, month, year = (int(p) for p in text[:8].split("/"))
        return float(Time(datetime(1900 + year, month, day), scale="utc").mjd)
    except ValueError:
        return math.nan


def observation_mjd(header: fits.Header) -> float:
    """Observation time as MJD from ``MJD-OBS``, ``MJD``, ``JD`` or ``DATE-OBS``; NaN if none."""
    for card in ("MJD-OBS", "MJD", "JD", "DATE-OBS"):
        mjd = card_mjd(header, card)
        if math.isfinite(mjd):
            return mjd
    return math.nan


# -- the built-in definitions ------------------------------------------------------
#: Names of the built-in definitions, in the order auto-detection tries them.
BUILTIN = ("skysim", "generic")
#: The definition used when no other claims a header.
FALLBACK = "generic"


@functools.cache
def builtin(name: str) -> InstrumentDefinition:
    """A built-in definition, parsed from its YAML file shipped with skydm."""
    from skydm.archive.instrument_file import parse_instrument

    resource = resources.files("skydm.archive").joinpath("cameras", f"{name}.yaml")
    return parse_instrument(resource.read_text(), source=f"built-in {name}.yaml")


def get_instrument(
    name: str, extra: Mapping[str, InstrumentDefinition] | None = None
) -> InstrumentDefinition:
    """The definition called ``name``: one of ``extra`` (e.g. a repository's), else built in.

    Raises
    ------
    BadValueError
        When there is none of that name.
    """
    key = name.lower()
    known = dict(extra or {})
    if key in known:
        return known[key]
    if key in BUILTIN:
        return builtin(key)
    raise BadValueError(
        "instrument",
        name,
        f"one of {', '.join([*known, *BUILTIN])}; or give a definition with --instrument-file",
    )


def instrument_for(
    header: fits.Header,
    name: str | None = None,
    extra: Mapping[str, InstrumentDefinition] | None = None,
) -> InstrumentDefinition:
    """The definition named ``name``, or the first (``extra``, then built in) claiming ``header``.

    Raises
    ------
    BadValueError
        When ``name`` is not a known instrument.
    """
    if name is not None:
        return get_instrument(name, extra)
    for definition in (*(extra or {}).values(), *(builtin(n) for n in BUILTIN)):
        if definition.matches(header):
            return definition
    return builtin(FALLBACK)
