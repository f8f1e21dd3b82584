"""Settings of differencing and detection, validated, and their YAML form.

``DiffimConfig`` gathers every tunable of ``skydm.diffim``: the Alard–Lupton
kernel (``al``), ZOGY's flux-ratio fit (``zogy``), the noise model
(``noise``) and detection (``detection``).  ``skydm diffim --config FILE``
reads the YAML form (any subset of the fields, by section);
``--show-config`` prints the defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skydm.diffim._al import AlConfig
from skydm.errors import BadFileError, BadValueError, require_extra


def _check(name: str, value: float, low: float, high: float, what: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and low <= value <= high):
        raise BadValueError(name, value, f"{what} from {low:g} to {high:g}")


@dataclass(frozen=True)
class ZogyConfig:
    """Settings of ZOGY's flux-ratio and registration-noise fit.

    Attributes
    ----------
    min_snr : float
        Faintest star used for the flux ratio.
    max_stars : int
        Stars used at most.
    astrometric_noise : bool
        Fit the registration noise and add its term to S_corr's variance.
    ratio_tolerance : float
        Largest factor allowed between the fitted flux ratio and the one the
        zero points predict (when both images have one); beyond it the pair
        is refused.
    min_ratio_snr : float
        A fitted flux ratio must exceed this many times its error; below,
        the images do not share their stars (unrelated images).
    psf_ratio_tolerance : float
        The PSF-fit flux ratio is used when it agrees with the aperture
        ratio within this fraction; otherwise the PSFs are taken to be
        wrong and the aperture ratio is used.
    """

    min_snr: float = 20.0
    max_stars: int = 200
    astrometric_noise: bool = True
    ratio_tolerance: float = 2.0
    min_ratio_snr: float = 5.0
    psf_ratio_tolerance: float = 0.1

    def __post_init__(self) -> None:
        _check("zogy.min_snr", self.min_snr, 3.0, 1e4, "a star S/N")
        _check("zogy.max_stars", self.max_stars, 3, 10000, "a number of stars")
        _check("zogy.ratio_tolerance", self.ratio_tolerance, 1.05, 1e3, "a factor")
        _check("zogy.min_ratio_snr", self.min_ratio_snr, 0.0, 1e3, "a signal-to-noise ratio")
        _check("zogy.psf_ratio_tolerance", self.psf_ratio_tolerance, 0.0, 10.0, "a fraction")


@dataclass(frozen=True)
class NoiseConfig:
    """Settings of the noise model (see ``skydm.diffim._noise``).

    Attributes
    ----------
    correlated : bool
        Measure each input's noise covariance and propagate it; ``False``
        takes the variance planes as white noise.
    radius : int
        Largest lag of the measured covariance, pixels.
    window : int
        Side of the central window it is measured on, pixels.
    warn_tolerance : float
        Measured and modelled noise (per-pixel variance ratio of an input,
        or the significance image's rms) disagreeing by more than this
        fraction give a warning.
    """

    correlated: bool = True
    radius: int = 3
    window: int = 512
    warn_tolerance: float = 0.2

    def __post_init__(self) -> None:
        _check("noise.radius", self.radius, 1, 10, "a lag in pixels")
        _check("noise.window", self.window, 32, 8192, "a window side in pixels")
        _check("noise.warn_tolerance", self.warn_tolerance, 0.01, 10.0, "a fraction")


@dataclass(frozen=True)
class DetectionConfig:
    """Settings of DIA source detection on the difference.

    Attributes
    ----------
    threshold : float
        Detection threshold in (true) sigma, both signs.
    background_box : int
        Mesh of the difference's residual-background model, pixels: fine
        enough to follow large-scale residuals, which would otherwise give
        clusters of same-sign detections.
    """

    threshold: float = 5.0
    background_box: int = 64

    def __post_init__(self) -> None:
        _check("detection.threshold", self.threshold, 0.5, 1e4, "a number of sigma")
        _check("detection.background_box", self.background_box, 16, 4096, "pixels")


@dataclass(frozen=True)
class DiffimConfig:
    """Every tunable of differencing and detection, by section."""

    al: AlConfig = field(default_factory=AlConfig)
    zogy: ZogyConfig = field(default_factory=ZogyConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain sections of plain values (tuples as lists), as YAML shows them."""
        out: dict[str, dict[str, Any]] = {}
        for f in dataclasses.fields(self):
            section = dataclasses.asdict(getattr(self, f.name))
            out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        return out

    def to_yaml(self) -> str:
        """The YAML form (``--show-config``)."""
        yaml = require_extra("yaml", "diffim")
        return str(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, data: object, source: str = "config") -> DiffimConfig:
        """Build from sections of fields; unknown sections or fields are errors.

        Raises
        ------
        BadFileError
            Unknown sections or fields, or values of the wrong type.
        BadValueError
            Values out of range (the message names ``section.field``).
        """
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise BadFileError(
                source, "must hold a mapping of sections (al, zogy, noise, detection)"
            )
        default = cls()
        parts: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            section = data.get(f.name, {}) or {}
            base = getattr(default, f.name)
            if not isinstance(section, dict):
                raise BadFileError(source, f"section {f.name!r} must be a mapping of fields")
            known = {g.name: g for g in dataclasses.fields(base)}
            unknown = sorted(set(section) - set(known))
            if unknown:
                raise BadFileError(
                    source,
                    f"unknown field(s) {', '.join(unknown)} in section {f.name!r}; "
                    f"known: {', '.join(known)} (see skydm diffim --show-config)",
                )
            values = {
                k: _coerce(source, f.name, k, v, getattr(base, k)) for k, v in section.items()
            }
            try:
                parts[f.name] = dataclasses.replace(base, **values)
            except TypeError as exc:
                raise BadFileError(source, f"section {f.name!r}: {exc}") from exc
        unknown = sorted(set(data) - set(parts))
        if unknown:
            raise BadFileError(
                source,
                f"unknown section(s) {', '.join(map(str, unknown))}; "
                "known: al, zogy, noise, detection (see skydm diffim --show-config)",
            )
        return cls(**parts)

    @classmethod
    def from_yaml(cls, path: str | Path) -> DiffimConfig:
        """Read a YAML file (any subset of the fields).

        Raises
        ------
        BadFileError
            The file cannot be read, is not YAML, or holds unknown fields.
        """
        yaml = require_extra("yaml", "diffim")
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise BadFileError(path, f"cannot read the config file ({exc.strerror})") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BadFileError(path, f"is not valid YAML ({str(exc).splitlines()[0]})") from exc
        return cls.from_dict(data, str(path))


def _coerce(source: str, section: str, name: str, value: object, default: object) -> object:
    """``value`` as the type of the default (lists to tuples, ints to floats)."""
    where = f"{section}.{name}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise BadFileError(source, f"{where} must be true or false, not {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or not all(isinstance(v, int) for v in value):
            raise BadFileError(source, f"{where} must be a list of integers, not {value!r}")
        return tuple(value)
    if isinstance(default, int) or (default is None and isinstance(value, int)):
        if value is None and default is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise BadFileError(source, f"{where} must be an integer, not {value!r}")
        return value
    if isinstance(default, float):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise BadFileError(source, f"{where} must be a number, not {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise BadFileError(source, f"{where} must be a string, not {value!r}")
        return value
    return value
