"""Write recipes: how each plane of each dataset type is compressed.

A recipe names one codec per plane of an Exposure (``image``, ``variance``,
``mask``).  The names are

* ``lossless`` — every bit kept: floats with byte-shuffled gzip (``GZIP_2``,
  no quantization), integers (the mask) with Rice;
* ``lossy<q>`` (``lossy4``, ``lossy8``, ``lossy16``, ``lossy32``...) — the
  plane quantized to integers with Rice, in steps of ``σ/q`` with
  ``SUBTRACTIVE_DITHER_2`` (DMTN-068; Rubin's ``lossy16``; DES's fpack
  ``-q 16``).  The dither seed comes from a checksum of the data
  (cfitsio's ``DITHER_SEED_CHECKSUM``, as DES does), so the same plane
  always compresses to the same bytes.

The repository configuration (``skydm-repo.json``) records one
:class:`WriteRecipe` per dataset type; :data:`DEFAULT_RECIPES` gives processed
images (``calexp``, ``warp``, ``diff``, ``coadd``, ``template``) ``lossy16``
on image and variance.  Raws are never written through a recipe: ingest keeps
them in the lossless raw container.  Masks are always lossless, and pixels
whose mask has one of the *exact* bits (by default the unusable ones: BAD,
SAT, CR, NO_DATA, SUSPECT) are stored exactly beside the quantized plane, as
are NaNs and zeros (which the dither method keeps by construction).  The
codec itself is in :mod:`skydm.archive.lossy`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from skydm.errors import BadValueError
from skydm.image.mask import UNUSABLE, Mask

PLANES = ("image", "variance", "mask")
#: Processed dataset types that default to ``lossy16`` on image and variance.
LOSSY_DEFAULT_TYPES = ("calexp", "warp", "diff", "coadd", "template")
#: Dataset types that must stay lossless whatever the configuration says.
LOSSLESS_ONLY_TYPES = ("raw",)
#: Mask bits whose pixels a lossy recipe stores exactly: the unusable ones, except
#: cosmic rays, which calibration has already replaced by interpolated values
#: (INTRP): keeping those estimates exactly would cost ratio (a long exposure has
#: thousands of hits) and preserve nothing measured.
EXACT_MASK_BITS = int(UNUSABLE & ~Mask.CR)
_LOSSY = re.compile(r"lossy(\d{1,4})")
_Q_RANGE = (1, 1024)


@dataclass(frozen=True)
class PlaneCodec:
    """One plane's codec: ``lossless`` or quantization at ``σ/q``.

    Parameters
    ----------
    q : int or None
        Quantization level (steps of ``σ/q``); ``None`` means lossless.
    """

    q: int | None = None

    @property
    def name(self) -> str:
        """The recipe name (``lossless`` or ``lossy<q>``)."""
        return "lossless" if self.q is None else f"lossy{self.q}"

    @property
    def lossy(self) -> bool:
        """Whether the plane is quantized."""
        return self.q is not None

    @classmethod
    def parse(cls, text: object, *, where: str) -> PlaneCodec:
        """Parse a codec name, naming ``where`` (the config key) when it is bad."""
        allowed = f"'lossless' or 'lossy<q>' with q in {_Q_RANGE[0]}..{_Q_RANGE[1]} (e.g. lossy16)"
        if text == "lossless":
            return cls(None)
        match = _LOSSY.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise BadValueError(where, text, allowed)
        q = int(match.group(1))
        if not _Q_RANGE[0] <= q <= _Q_RANGE[1]:
            raise BadValueError(where, text, allowed)
        return cls(q)


LOSSLESS = PlaneCodec(None)


@dataclass(frozen=True)
class WriteRecipe:
    """The codecs of one dataset type's planes.

    Parameters
    ----------
    image, variance : PlaneCodec
        Codec of the image and variance planes.
    exact_mask_bits : int
        Pixels with any of these mask bits are stored exactly in lossy planes.
    """

    image: PlaneCodec = LOSSLESS
    variance: PlaneCodec = LOSSLESS
    exact_mask_bits: int = EXACT_MASK_BITS

    @property
    def lossy(self) -> bool:
        """Whether any plane is quantized."""
        return self.image.lossy or self.variance.lossy

    @classmethod
    def named(cls, name: str, *, exact_mask_bits: int = EXACT_MASK_BITS) -> WriteRecipe:
        """The recipe with codec ``name`` on image and variance (mask lossless)."""
        codec = PlaneCodec.parse(name, where="recipe")
        return cls(codec, codec, exact_mask_bits)

    def to_json(self) -> dict[str, Any]:
        """The recipe as it is written in ``skydm-repo.json``."""
        return {
            "image": self.image.name,
            "variance": self.variance.name,
            "mask": "lossless",
            "exact_mask_bits": _bit_names(self.exact_mask_bits),
        }

    @classmethod
    def from_json(cls, value: object, *, where: str) -> WriteRecipe:
        """Parse one dataset type's recipe (a mapping of plane to codec name)."""
        if isinstance(value, str):
            return _named(value, where)
        if not isinstance(value, Mapping):
            raise BadValueError(where, value, "a codec name or a mapping of plane to codec name")
        unknown = set(value) - {*PLANES, "exact_mask_bits"}
        if unknown:
            raise BadValueError(
                f"{where}.{sorted(unknown)[0]}", value[sorted(unknown)[0]],
                f"one of the keys {', '.join(PLANES)}, exact_mask_bits",
            )  # fmt: skip
        if value.get("mask", "lossless") != "lossless":
            raise BadValueError(
                f"{where}.mask", value["mask"], "'lossless' (masks are never lossy)"
            )
        bits = value.get("exact_mask_bits", _bit_names(int(UNUSABLE)))
        return cls(
            PlaneCodec.parse(value.get("image", "lossless"), where=f"{where}.image"),
            PlaneCodec.parse(value.get("variance", "lossless"), where=f"{where}.variance"),
            _parse_bits(bits, where=f"{where}.exact_mask_bits"),
        )


def _named(value: str, where: str) -> WriteRecipe:
    codec = PlaneCodec.parse(value, where=where)
    return WriteRecipe(codec, codec)


def _bit_names(bits: int) -> list[str]:
    return [m.name for m in Mask if bits & m and m.name is not None]


def _parse_bits(value: object, *, where: str) -> int:
    allowed = f"a list of mask bit names ({', '.join(m.name or '' for m in Mask)})"
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadValueError(where, value, allowed)
    bits = 0
    for name in value:
        if name not in Mask.__members__:
            raise BadValueError(where, name, allowed)
        bits |= int(Mask[name])
    return bits


@dataclass(frozen=True)
class RecipeSet:
    """The write recipe of every dataset type of a repository.

    Types not listed are written as plain (uncompressed) FITS.
    """

    by_type: Mapping[str, WriteRecipe] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for dataset_type in LOSSLESS_ONLY_TYPES:
            recipe = self.by_type.get(dataset_type)
            if recipe is not None and recipe.lossy:
                raise BadValueError(
                    f"recipes.{dataset_type}", recipe.image.name,
                    "'lossless' (raws are archived losslessly)",
                )  # fmt: skip

    def for_type(self, dataset_type: str) -> WriteRecipe | None:
        """The recipe for ``dataset_type``; ``None`` (written uncompressed) when none is set."""
        return self.by_type.get(dataset_type)

    def with_type(self, dataset_type: str, recipe: WriteRecipe) -> RecipeSet:
        """A copy with ``dataset_type``'s recipe replaced."""
        return RecipeSet({**self.by_type, dataset_type: recipe})

    def to_json(self) -> dict[str, Any]:
        """The set as written under ``recipes`` in ``skydm-repo.json``."""
        return {t: r.to_json() for t, r in sorted(self.by_type.items())}

    @classmethod
    def from_json(cls, value: object, *, where: str = "recipes") -> RecipeSet:
        """Parse the ``recipes`` entry of a repository configuration."""
        if not isinstance(value, Mapping):
            raise BadValueError(where, value, "a mapping of dataset type to recipe")
        return cls(
            {str(t): WriteRecipe.from_json(r, where=f"{where}.{t}") for t, r in value.items()}
        )


#: What a new repository records, and what a repository without recipes uses.
DEFAULT_RECIPES = RecipeSet({t: WriteRecipe.named("lossy16") for t in LOSSY_DEFAULT_TYPES})
