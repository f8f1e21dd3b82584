"""Instrument definition files (YAML): parsing, validation, and registration in a repository.

The format (``format: skydm-instrument/1``) is documented with a full example
in ``docs/archive.md``.  In short::

    name: mycam                       # the data IDs' instrument
    match: {INSTRUME: MYCAM}          # cards (and accepted values) that identify its raws
    data_id:
      visit:    {cards: [EXPNUM], required: true}
      detector: {cards: [CCDNUM], default: 0}
      band:     {cards: [FILTER], values: {"r SDSS": r}}
    time: {cards: [MJD-OBS, DATE-OBS], required: true}
    metadata: {exptime: [EXPTIME], airmass: [AIRMASS]}
    amplifiers:
      - {name: A, data_section: DATASECA, bias_section: BIASSECA,
         gain: GAINA, read_noise: RDNOISEA, saturation: SATURATA}
    geometry: {pixel_scale: 0.263, focal_plane_section: DETSEC}

Every problem is a :class:`BadFileError` naming the file and the key.
Definitions registered in a repository live in ``<repo>/instruments/<name>.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skydm.archive.instruments import (
    BUILTIN,
    DERIVATIONS,
    AmplifierSpec,
    CardValue,
    Geometry,
    IdRule,
    InstrumentDefinition,
    Section,
)
from skydm.errors import BadFileError, ConflictError, UserError
from skydm.repo.atomic import atomic_write_bytes

FORMAT = "skydm-instrument/1"
FOLDER = "instruments"
_CARD = re.compile(r"^[A-Z0-9_-]{1,8}$|^HIERARCH [A-Z0-9_. -]+$")
_NAME = re.compile(r"^[a-z][a-z0-9_.+-]{0,63}$")
_TOP = {"format", "name", "description", "match", "data_id", "time", "metadata",
        "amplifiers", "geometry"}  # fmt: skip
_RULE_KEYS = {"cards", "required", "default", "lenient", "derive", "values"}
_AMP_KEYS = {"name", "data_section", "bias_section", "gain", "read_noise", "saturation"}


class _Where:
    """Names the file and key of a problem."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> BadFileError:
        return BadFileError(self.source, f"key {key!r}: {problem}")


def parse_instrument(text: str | Mapping[str, Any], *, source: str) -> InstrumentDefinition:
    """An :class:`InstrumentDefinition` from YAML text (or its parsed mapping).

    Parameters
    ----------
    text : str or mapping
        The YAML document.
    source : str
        The file it came from, named in every error.

    Raises
    ------
    BadFileError
        When the YAML is malformed or a key is unknown, missing or of the wrong kind.
    """
    w = _Where(source)
    if isinstance(text, str):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BadFileError(source, f"is not valid YAML: {exc}") from None
    else:
        doc = text
    if not isinstance(doc, Mapping):
        raise BadFileError(source, "must be a YAML mapping of keys (name, data_id, ...)")
    _no_unknown(w, "", doc, _TOP)
    if doc.get("format", FORMAT) != FORMAT:
        raise w.fail("format", f"{doc.get('format')!r} is not {FORMAT!r}")
    name = doc.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise w.fail(
            "name", f"{name!r} must be a lower-case name of letters, digits and '_.+-' (e.g. mycam)"
        )
    data_id = _mapping(w, "data_id", doc.get("data_id", {}))
    _no_unknown(w, "data_id.", data_id, {"visit", "detector", "band"})
    visit = _rule(w, "data_id.visit", data_id.get("visit"), int)
    if not visit.cards and not visit.derive:
        raise w.fail("data_id.visit", "give cards (e.g. [EXPNUM]) or derive: night_pixels")
    detector = _rule(w, "data_id.detector", data_id.get("detector", {"default": 0}), int)
    band = _rule(w, "data_id.band", data_id.get("band", {"default": "unknown"}), str)
    time = _mapping(w, "time", doc.get("time", {}))
    _no_unknown(w, "time.", time, {"cards", "required"})
    time_cards = _cards(w, "time.cards", time.get("cards", ["MJD-OBS", "MJD", "JD", "DATE-OBS"]))
    if visit.derive and not time_cards:
        raise w.fail("time.cards", "derive: night_pixels needs observation time cards")
    metadata = {
        str(k): _cards(w, f"metadata.{k}", v)
        for k, v in _mapping(w, "metadata", doc.get("metadata", {})).items()
    }
    amps_doc = doc.get("amplifiers", [])
    if not isinstance(amps_doc, list):
        raise w.fail("amplifiers", "must be a list of amplifiers (name, gain, ...)")
    amplifiers = tuple(_amplifier(w, f"amplifiers[{i}]", a) for i, a in enumerate(amps_doc))
    names = [a.name for a in amplifiers]
    if len(set(names)) != len(names):
        raise w.fail("amplifiers", f"amplifier names {names} are not distinct")
    match = {
        str(card).upper(): _accepted(w, f"match.{card}", v)
        for card, v in _mapping(w, "match", doc.get("match", {})).items()
    }
    return InstrumentDefinition(
        name=name,
        source=source,
        description=str(doc.get("description", "")),
        match=match,
        visit=visit,
        detector=detector,
        band=band,
        time_cards=time_cards,
        time_required=_bool(w, "time.required", time.get("required", False)),
        metadata=metadata,
        amplifiers=amplifiers,
        geometry=_geometry(w, doc.get("geometry", {})),
    )


def load_instrument(path: str | Path) -> InstrumentDefinition:
    """Read and validate an instrument definition file.

    Raises
    ------
    BadFileError
        When the file is missing, unreadable or invalid (the key is named).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BadFileError(path, "no such instrument definition file; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadFileError(path, f"cannot be read as YAML text ({exc})") from None
    return parse_instrument(text, source=str(path))


# -- in a repository ---------------------------------------------------------
def repository_instruments(root: str | Path) -> dict[str, InstrumentDefinition]:
    """The definitions registered in the repository at ``root``, by name."""
    folder = Path(root) / FOLDER
    if not folder.is_dir():
        return {}
    found = {}
    for path in sorted(folder.glob("*.yaml")):
        definition = load_instrument(path)
        found[definition.name] = definition
    return found


def register_instrument(
    root: str | Path, path: str | Path, *, replace: bool = False
) -> tuple[InstrumentDefinition, Path]:
    """Validate a definition file and keep a copy in the repository at ``root``.

    Later commands on that repository (``skydm ingest``...) find it by name
    and by its ``match`` cards.

    Raises
    ------
    BadFileError
        When the file is invalid.
    UserError
        When it would shadow a built-in definition.
    ConflictError
        When a different definition of that name is registered and ``replace`` is false.
    """
    definition = load_instrument(path)
    if definition.name in BUILTIN:
        raise UserError(
            f"{path}: name {definition.name!r} is a built-in instrument definition; "
            "give your camera another name"
        )
    text = Path(path).read_bytes()
    dest = Path(root) / FOLDER / f"{definition.name}.yaml"
    if dest.exists() and dest.read_bytes() != text and not replace:
        raise ConflictError(
            f"{dest}: a different definition of instrument {definition.name!r} is already "
            "registered; pass --replace to replace it"
        )
    atomic_write_bytes(dest, text)
    return definition, dest


# -- validation helpers ----------------------------------------------------------
def _no_unknown(w: _Where, prefix: str, doc: Mapping[str, Any], allowed: set[str]) -> None:
    for key in doc:
        if key not in allowed:
            raise w.fail(f"{prefix}{key}", f"unknown key; allowed: {', '.join(sorted(allowed))}")


def _mapping(w: _Where, key: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise w.fail(key, f"must be a mapping, not {value!r}")
    return value


def _bool(w: _Where, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise w.fail(key, f"{value!r} must be true or false")
    return value


def _cards(w: _Where, key: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(c, str) for c in items):
        raise w.fail(key, f"{value!r} must be a card name or a list of card names")
    cards = tuple(c.strip().upper() for c in items)
    for card in cards:
        if not _CARD.match(card):
            raise w.fail(key, f"{card!r} is not a FITS card name (1-8 of A-Z 0-9 _ -)")
    return cards


def _accepted(w: _Where, key: str, value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str | int | float) for v in items):
        raise w.fail(key, f"{value!r} must be a value or a list of values of the card")
    return tuple(str(v).strip().upper() for v in items)


def _rule(w: _Where, key: str, value: Any, kind: type) -> IdRule:
    doc = _mapping(w, key, value)
    _no_unknown(w, f"{key}.", doc, _RULE_KEYS)
    default: Any = doc.get("default")
    if default is not None and (not isinstance(default, kind) or isinstance(default, bool)):
        raise w.fail(
            f"{key}.default", f"{default!r} must be {'an integer' if kind is int else 'text'}"
        )
    if kind is int and isinstance(default, int) and default < 0:
        raise w.fail(f"{key}.default", f"{default!r} must be >= 0")
    derive = doc.get("derive")
    if derive is not None and (not key.endswith("visit") or derive not in DERIVATIONS):
        raise w.fail(
            f"{key}.derive", f"{derive!r} is allowed only for the visit: one of {DERIVATIONS}"
        )
    values = _mapping(w, f"{key}.values", doc.get("values", {}))
    if values and kind is not str:
        raise w.fail(f"{key}.values", "is allowed only for the band")
    return IdRule(
        cards=_cards(w, f"{key}.cards", doc.get("cards", [])),
        required=_bool(w, f"{key}.required", doc.get("required", False)),
        default=default if isinstance(default, int | str) else None,
        lenient=_bool(w, f"{key}.lenient", doc.get("lenient", False)),
        derive=derive,
        values={str(k).strip(): str(v).strip() for k, v in values.items()},
    )


def _card_value(w: _Where, key: str, value: Any, *, section: bool) -> CardValue | None:
    """A card name, a list of them, a literal number or (for sections) ``[x1:x2,y1:y2]``."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        _no_unknown(w, f"{key}.", value, {"cards", "value"})
        literal = _card_value(w, f"{key}.value", value.get("value"), section=section)
        cards = _cards(w, f"{key}.cards", value.get("cards", []))
        return CardValue(cards, literal.value if literal is not None else None)
    if section and isinstance(value, str) and value.strip().startswith("["):
        try:
            Section.parse(value)
        except ValueError as exc:
            raise w.fail(key, str(exc)) from None
        return CardValue((), value.strip())
    if not section and isinstance(value, int | float) and not isinstance(value, bool):
        if value <= 0 and not key.endswith("read_noise"):
            raise w.fail(key, f"{value!r} must be > 0")
        return CardValue((), float(value))
    return CardValue(_cards(w, key, value), None)


def _amplifier(w: _Where, key: str, doc: Any) -> AmplifierSpec:
    doc = _mapping(w, key, doc)
    _no_unknown(w, f"{key}.", doc, _AMP_KEYS)
    name = doc.get("name")
    if not isinstance(name, str | int) or not str(name).strip():
        raise w.fail(f"{key}.name", f"{name!r} must be the amplifier's name (e.g. A)")
    return AmplifierSpec(
        name=str(name).strip(),
        data_section=_card_value(w, f"{key}.data_section", doc.get("data_section"), section=True),
        bias_section=_card_value(w, f"{key}.bias_section", doc.get("bias_section"), section=True),
        gain=_card_value(w, f"{key}.gain", doc.get("gain"), section=False),
        read_noise=_card_value(w, f"{key}.read_noise", doc.get("read_noise"), section=False),
        saturation=_card_value(w, f"{key}.saturation", doc.get("saturation"), section=False),
    )


def _geometry(w: _Where, value: Any) -> Geometry:
    doc = _mapping(w, "geometry", value)
    _no_unknown(w, "geometry.", doc, {"shape", "pixel_scale", "focal_plane_section"})
    shape = doc.get("shape")
    if shape is not None and not (
        isinstance(shape, list)
        and len(shape) == 2
        and all(isinstance(s, int) and s > 0 for s in shape)
    ):
        raise w.fail("geometry.shape", f"{shape!r} must be [rows, columns], positive integers")
    scale = doc.get("pixel_scale")
    if scale is not None and (
        not isinstance(scale, int | float) or isinstance(scale, bool) or scale <= 0
    ):
        raise w.fail("geometry.pixel_scale", f"{scale!r} must be a positive number of arcseconds")
    return Geometry(
        shape=(int(shape[0]), int(shape[1])) if shape is not None else None,
        pixel_scale=float(scale) if scale is not None else None,
        focal_plane_section=_card_value(
            w, "geometry.focal_plane_section", doc.get("focal_plane_section"), section=True
        ),
    )
