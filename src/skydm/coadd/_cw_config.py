"""CompareWarp's configuration: one nested, validated config per stage.

A leaf module (it imports nothing of CompareWarp), so that every stage can
take its own part of the configuration without import cycles.  Every field
is checked where the config is built; constants that are not tunables are
named beside the code that uses them, with their reason.

The stages (see :mod:`skydm.coadd.compare_warp`) and their configs:

``inputs``
    :class:`InputConfig`: what warps are refused.
``detect``
    :class:`DetectConfig`: binning, PSF matching, the static-sky model and
    the outlier thresholds.
``cosmic_rays``
    :class:`CosmicRayConfig`: the full-resolution sharpness test.
``rules``
    :class:`RulesConfig`: one config per rule, each with ``enabled``.
``restore``
    :class:`RestoreConfig`: the flux of variable sources under clips.
``streaks``
    :class:`StreakConfig`: faint streaks subtracted as fitted line models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from skydm.errors import BadValueError


def _at_least(owner: object, names: tuple[str, ...], low: float = 0.0) -> None:
    """Raise for the first field of ``owner`` in ``names`` below ``low``."""
    for name in names:
        value = getattr(owner, name)
        if not value >= low:
            raise BadValueError(name, value, f"a number >= {low:g}")


def _fraction(name: str, value: float, *, closed: bool = False) -> None:
    ok = 0 <= value <= 1 if closed else 0 <= value < 1
    if not ok:
        raise BadValueError(name, value, f"a fraction in [0, 1{']' if closed else ')'}")


@dataclass(frozen=True)
class InputConfig:
    """Warps CompareWarp refuses.

    Attributes
    ----------
    max_bad_variance : float
        Largest fraction of a warp's usable pixels whose variance may be
        zero, negative or NaN: those pixels are dropped, so more means a
        broken variance plane that would silently remove the warp.
    """

    max_bad_variance: float = 0.01

    def __post_init__(self) -> None:
        _fraction("max_bad_variance", self.max_bad_variance)


@dataclass(frozen=True)
class DetectConfig:
    """Outlier detection on PSF-matched, binned warps.

    Attributes
    ----------
    bin : int
        Binning of the outlier maps (pixels per side).
    threshold, grow_threshold : float
        Hysteresis thresholds (sigma) of the outlier footprints: regions
        above ``grow_threshold`` holding a pixel above ``threshold``.
    systematic : float
        Fraction of the model's local peak added to the noise (PSF-matching
        residuals of bright stars).
    model_nsigma : float
        Clipping of the static-sky model (sigma).
    target_extra : float
        Sigma (pixels) of the Gaussian that broadens the widest input PSF
        into the common target PSF.
    noise_tile : int
        Side, in binned rows, of the fixed sky tiles over which the noise of
        the significance maps is measured: fixed on the sky, so that it does
        not depend on the band height (and hence on the memory budget).
    grow_fwhm : float
        Clipped footprints are grown by this many target-PSF FWHM.
    """

    bin: int = 2
    threshold: float = 5.0
    grow_threshold: float = 2.5
    systematic: float = 0.05
    model_nsigma: float = 3.0
    target_extra: float = 1.0
    noise_tile: int = 64
    grow_fwhm: float = 1.0

    def __post_init__(self) -> None:
        if self.bin not in (1, 2, 3, 4):
            raise BadValueError("bin", self.bin, "1, 2, 3 or 4 pixels")
        if not self.threshold > self.grow_threshold > 0:
            raise BadValueError(
                "grow_threshold", self.grow_threshold, f"in (0, threshold={self.threshold})"
            )
        if not (isinstance(self.noise_tile, int) and self.noise_tile >= 16):
            raise BadValueError("noise_tile", self.noise_tile, "an integer >= 16 (binned rows)")
        _at_least(self, ("systematic", "model_nsigma", "target_extra", "grow_fwhm"))


@dataclass(frozen=True)
class CosmicRayConfig:
    """Cosmic rays: pixels sharper than the epoch's PSF allows.

    Attributes
    ----------
    enabled : bool
        Off: no cosmic-ray search.
    threshold : float
        Significance of the excess Laplacian (sigma).
    margin : float
        Safety factor on the PSF's sharpness bound.
    sharpness : float
        Laplacian over value above which a lone pixel is sharper than any PSF.
    systematic : float
        Fraction of a source's expected Laplacian allowed for PSF shape
        differences between epochs.
    """

    enabled: bool = True
    threshold: float = 5.0
    margin: float = 1.3
    sharpness: float = 1.5
    systematic: float = 0.3

    def __post_init__(self) -> None:
        _at_least(self, ("threshold", "margin", "sharpness", "systematic"))


@dataclass(frozen=True)
class SamePlaceConfig:
    """Add: footprints whose peak few epochs share within ``radius_fwhm``."""

    enabled: bool = True
    radius_fwhm: float = 1.0

    def __post_init__(self) -> None:
        _at_least(self, ("radius_fwhm",))


@dataclass(frozen=True)
class PieceConfig:
    """Add: the seeded few-epoch pieces of footprints merged with many-epoch regions."""

    enabled: bool = True


@dataclass(frozen=True)
class MoverConfig:
    """Add: every epoch's pixels along a straight track through time, found from
    where each epoch is brighter than one end of the survey (slow movers),
    or the moving point source fitted along it subtracted.

    Attributes
    ----------
    min_track_fwhm : float
        The track's length (target FWHM) from which a chain is a mover and
        not a variable source (whose blob stays put).
    max_scatter_fwhm : float
        Largest rms distance (target FWHM) of the chain's centroids from
        the fitted straight track.
    min_epochs : int
        Fewest epochs in a chain.
    link_fwhm : float
        Largest distance (target FWHM) between the centroids of footprints
        of epochs next in time for them to be chained.
    max_skip : int
        Epochs (in time order) that may lie between two chained ones.
    radius_fwhm : float
        Radius (target FWHM) clipped about the track's position in every
        epoch (1.2 FWHM holds 98% of a Gaussian PSF's light).
    min_gap_days : float
        A track's span is widened by this many days beyond the epochs just
        before and after it.
    max_size_fwhm : float
        Radius (target FWHM) of a circle as large as the largest lobe that
        can be a point-like mover (a ghost's is larger).
    centroid_sn : float
        Significance (motion over its error) from which a bright static
        source whose centroid moves along a straight line through time is
        a mover (:func:`skydm.coadd._cw_centroids.centroid_tracks`); 0: off.
    model : bool
        Subtract the moving point source fitted along each track where it
        is significant (:func:`skydm.coadd._cw_movermodel.model_movers`) instead
        of replacing the track's pixels.
    """

    enabled: bool = True
    min_track_fwhm: float = 1.0
    max_scatter_fwhm: float = 0.5
    min_epochs: int = 3
    link_fwhm: float = 2.0
    max_skip: int = 2
    radius_fwhm: float = 1.2
    min_gap_days: float = 0.5
    max_size_fwhm: float = 2.0
    centroid_sn: float = 8.0
    model: bool = True

    def __post_init__(self) -> None:
        _at_least(
            self,
            (
                "min_track_fwhm",
                "max_scatter_fwhm",
                "link_fwhm",
                "radius_fwhm",
                "min_gap_days",
                "max_size_fwhm",
                "centroid_sn",
            ),
        )
        if not (isinstance(self.min_epochs, int) and self.min_epochs >= 2):
            raise BadValueError("min_epochs", self.min_epochs, "an integer >= 2")
        if not (isinstance(self.max_skip, int) and self.max_skip >= 0):
            raise BadValueError("max_skip", self.max_skip, "an integer >= 0")


@dataclass(frozen=True)
class VariableConfig:
    """Veto: a footprint whose difference is a multiple of the model over a
    PSF-sized window, peaking on a static source, is a flux change, kept.

    Attributes
    ----------
    chi2 : float
        Largest reduced chi-square of the fit.
    chi2_compact : float
        The same for PSF-sized footprints (their PSF-matching residuals grow
        with the change).
    size : float
        Radius (target FWHM) of a compact footprint, plus its reach.
    centred : float
        Smallest ratio of the model at the peak to its local maximum.
    """

    enabled: bool = True
    chi2: float = 2.0
    chi2_compact: float = 8.0
    size: float = 1.0
    centred: float = 0.5

    def __post_init__(self) -> None:
        _at_least(self, ("chi2", "chi2_compact", "size", "centred"))


@dataclass(frozen=True)
class TrailConfig:
    """Add: long thin footprints (trail segments) are extended into strips
    along their axis across the whole grid, bridging gaps of faint trails.

    Attributes
    ----------
    length : float
        Smallest segment length (binned pixels); also lets seedless long
        thin footprints count.
    aspect : float
        Smallest length over width.
    """

    enabled: bool = True
    length: float = 40.0
    aspect: float = 8.0

    def __post_init__(self) -> None:
        _at_least(self, ("length", "aspect"), 1.0)


@dataclass(frozen=True)
class RulesConfig:
    """The rules, each with its own config and ``enabled`` switch, and the
    "few epochs" that the add rules share (DMTN-080): a footprint covered by
    ``n`` epochs is transient when it is an outlier in at most
    ``floor(min(max_fraction_low n, max_epochs + max_fraction_high n))``."""

    max_epochs: float = 2.0
    max_fraction_low: float = 0.4
    max_fraction_high: float = 0.03
    same_place: SamePlaceConfig = field(default_factory=SamePlaceConfig)
    pieces: PieceConfig = field(default_factory=PieceConfig)
    mover: MoverConfig = field(default_factory=MoverConfig)
    variable: VariableConfig = field(default_factory=VariableConfig)
    trail: TrailConfig = field(default_factory=TrailConfig)

    def __post_init__(self) -> None:
        _at_least(self, ("max_epochs", "max_fraction_low", "max_fraction_high"))

    def epoch_limit(self, n: np.ndarray) -> np.ndarray:
        """Largest number of outlier epochs for which a footprint covered by
        ``n`` epochs is still transient."""
        low = self.max_fraction_low * n
        high = self.max_epochs + self.max_fraction_high * n
        return np.floor(np.minimum(low, high))


@dataclass(frozen=True)
class RestoreConfig:
    """Variable sources under clipped pixels keep the clipped epoch's flux.

    Attributes
    ----------
    enabled : bool
        Off: clipped pixels are replaced by the other epochs alone.
    sn : float
        Model S/N of the static sources considered.
    spread : float
        Reduced chi-square of the other epochs' fluxes above which the
        source is a variable.
    floor : float
        Photometric systematics, a fraction of the flux, in that chi-square.
    same_time_days : float
        Epochs taken within this many days of the clipped one measure its
        flux (the light curve hardly moves within a night); none: the fitted
        multiple of the model is used.
    own_chi2 : float
        Reduced chi-square (noise plus ``floor``) of the clipped epoch's own
        pixels about its PSF fit and the static sky up to which its own
        flux is the target: no artefact's light lies on the source.
    """

    enabled: bool = True
    sn: float = 20.0
    spread: float = 25.0
    floor: float = 0.03
    same_time_days: float = 0.1
    own_chi2: float = 2.0

    def __post_init__(self) -> None:
        _at_least(self, ("sn", "spread", "floor", "same_time_days", "own_chi2"))


@dataclass(frozen=True)
class StreakConfig:
    """Clipped streaks fitted by a line model and subtracted (not replaced).

    Attributes
    ----------
    enabled : bool
        Off: streaks are replaced like any clipped pixel.
    min_pixels, max_pixels : int
        Sizes (binned pixels) of the footprints fitted.
    """

    enabled: bool = True
    min_pixels: int = 6
    max_pixels: int = 20_000

    def __post_init__(self) -> None:
        if not 1 <= self.min_pixels <= self.max_pixels:
            raise BadValueError(
                "min_pixels",
                (self.min_pixels, self.max_pixels),
                "1 <= min_pixels <= max_pixels (binned pixels)",
            )


@dataclass(frozen=True)
class CompareWarpConfig:
    """Every tunable of :func:`skydm.coadd.compare_warp.compare_warp`, per stage."""

    inputs: InputConfig = field(default_factory=InputConfig)
    detect: DetectConfig = field(default_factory=DetectConfig)
    cosmic_rays: CosmicRayConfig = field(default_factory=CosmicRayConfig)
    rules: RulesConfig = field(default_factory=RulesConfig)
    restore: RestoreConfig = field(default_factory=RestoreConfig)
    streaks: StreakConfig = field(default_factory=StreakConfig)

    #: Switchable parts, by the name :meth:`without` takes.
    _SWITCHES = (
        "rules.same_place",
        "rules.pieces",
        "rules.mover",
        "rules.variable",
        "rules.trail",
        "cosmic_rays",
        "restore",
        "streaks",
    )

    def rule_names(self) -> list[str]:
        """Names of the parts :meth:`without` can switch off."""
        return [s.split(".")[-1] for s in self._SWITCHES]

    def without(self, name: str) -> CompareWarpConfig:
        """This config with the rule or stage ``name`` disabled (for ablation)."""
        for path in self._SWITCHES:
            if path.split(".")[-1] == name:
                return self._replace(path.split("."), enabled=False)
        raise BadValueError("rule", name, f"one of {', '.join(self.rule_names())}")

    def _replace(self, path: list[str], **changes: Any) -> CompareWarpConfig:
        def rec(obj: Any, parts: list[str]) -> Any:
            if not parts:
                return dataclasses.replace(obj, **changes)
            return dataclasses.replace(obj, **{parts[0]: rec(getattr(obj, parts[0]), parts[1:])})

        out: CompareWarpConfig = rec(self, path)
        return out

    @classmethod
    def from_options(cls, **options: Any) -> CompareWarpConfig:
        """A config with ``stage__field=value`` (or ``rules__rule__field``) options set,
        e.g. ``detect__threshold=6`` or ``rules__mover__enabled=False``."""
        out = cls()
        for key, value in options.items():
            parts = key.split("__")
            try:
                out = out._replace(parts[:-1], **{parts[-1]: value})
            except (AttributeError, TypeError) as exc:
                raise BadValueError(
                    "CompareWarp option", key, "stage__field, e.g. detect__threshold"
                ) from exc
        return out
