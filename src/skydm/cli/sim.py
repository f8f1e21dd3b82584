"""``skydm sim``: simulate a survey and write raws, clean twins and truth."""

from __future__ import annotations

import argparse
from pathlib import Path

ARTEFACT_CHOICES = ("cosmic_rays", "satellite_trails", "asteroids", "ghosts")
# SurveyConfig field -> the option that sets it, for error messages (cli/main.py).
OPTIONS = {
    "seed": "seed",
    "shape": "size",
    "n_visits": "visits",
    "n_fields": "fields",
    "bands": "bands",
    "n_stars": "stars",
    "n_galaxies": "galaxies",
    "artefacts": "artefacts",
    "n_transients": "transients",
    "n_variables": "variables",
    "n_movers": "movers",
    "n_slow_movers": "slow_movers",
    "trails_on_variables": "trails_on_variables",
    "ghosts_on_stars": "ghosts_on_stars",
    "visits_per_night": "visits_per_night",
    "night_gaps": "night_gaps",
    "seeing_range": "seeing",
    "psf_kind": "psf",
    "raw_dtype": "dtype",
    "n_detectors": "detectors",
    "detector_gap": "detector_gap",
    "n_amps": "amps",
    "overscan": "overscan",
}


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _artefacts(text: str) -> tuple[str, ...]:
    if text == "none":
        return ()
    if text == "all":
        return ARTEFACT_CHOICES
    names = _csv(text)
    for name in names:
        if name not in ARTEFACT_CHOICES:
            raise argparse.ArgumentTypeError(
                f"unknown artefact {name!r}; choose from {', '.join(ARTEFACT_CHOICES)}, "
                "'all' or 'none'"
            )
    return names


def _range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH (two numbers)") from None
    return lo, hi


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sim`` command."""
    p = subparsers.add_parser(
        "sim",
        help="simulate a survey: raw exposures, artefact-free twins and truth",
        description=(
            "Simulate raw exposures of one or more fields over many visits (stars, galaxies, "
            "transients, variables, movers; varying PSF, sky and dithers; noise, saturation, "
            "bad columns; optional artefacts) and write them as 'skysim' camera raws with "
            "artefact-free twins under clean/ and truth tables."
        ),
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--visits", type=int, default=8, help="visits per field and band (8)")
    p.add_argument("--fields", type=int, default=1, help="number of fields (1)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (512)")
    p.add_argument("--bands", type=_csv, default=("r",), help="comma-separated bands (r)")
    p.add_argument("--stars", type=int, default=300, help="stars per image (300)")
    p.add_argument("--galaxies", type=int, default=100, help="galaxies per image (100)")
    p.add_argument(
        "--artefacts",
        type=_artefacts,
        default=ARTEFACT_CHOICES,
        help="comma-separated artefact classes, 'all' (default) or 'none': "
        + ", ".join(ARTEFACT_CHOICES),
    )
    p.add_argument("--transients", type=int, default=3, help="transients per field (3)")
    p.add_argument("--variables", type=int, default=2, help="variable stars per field (2)")
    p.add_argument("--movers", type=int, default=2, help="asteroids per field (2)")
    p.add_argument(
        "--slow-movers",
        type=int,
        default=0,
        help="asteroids per field moving under 1 FWHM (overlapping) or 1-3 FWHM per visit (0)",
    )
    p.add_argument(
        "--trails-on-variables",
        type=float,
        default=0.0,
        help="satellite trails across a variable star, mean per exposure (0)",
    )
    p.add_argument(
        "--ghosts-on-stars",
        type=float,
        default=0.0,
        help="filter ghosts around bright stars, mean per exposure (0)",
    )
    p.add_argument(
        "--visits-per-night", type=int, default=2, help="visits of a field per night (2)"
    )
    p.add_argument(
        "--night-gaps",
        type=_range,
        default=(1.0, 3.0),
        help="range of days between observing nights LOW,HIGH (1,3)",
    )
    p.add_argument(
        "--seeing",
        type=_range,
        default=(0.6, 1.5),
        help="seeing range LOW,HIGH in arcsec (0.6,1.5)",
    )
    p.add_argument(
        "--psf",
        choices=("moffat", "double_gaussian", "gaussian"),
        default="moffat",
        help="PSF model (moffat)",
    )
    p.add_argument(
        "--dtype",
        choices=("uint16", "int32", "float32"),
        default="uint16",
        help="pixel type of the raws (uint16)",
    )
    p.add_argument(
        "--detectors",
        type=int,
        default=1,
        help="detectors of the focal plane, sharing each visit's pointing (1)",
    )
    p.add_argument(
        "--detector-gap",
        type=float,
        default=30.0,
        help="gap between neighbouring detectors, pixels (30)",
    )
    p.add_argument(
        "--mef",
        action="store_true",
        help="write each visit's detectors as one multi-extension FITS file",
    )
    p.add_argument(
        "--amps",
        type=int,
        default=1,
        help="amplifiers per detector, 1 to 4, side by side with gains 10%% apart around the "
        "nominal one (DATASECA, GAINA, ... cards) (1)",
    )
    p.add_argument(
        "--overscan",
        type=int,
        default=0,
        help="overscan columns per amplifier, holding its bias (BIASSECA, ...) (0: no bias)",
    )
    p.add_argument("--no-clean", action="store_true", help="do not write the clean twins")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Simulate and write the survey, printing what was written."""
    from skydm.cli._checks import check_output_dir
    from skydm.progress import Progress
    from skydm.sim import SurveyConfig, simulate_survey, write_survey

    if args.movers and "asteroids" not in args.artefacts:
        print("skydm sim: note: --movers is ignored without the 'asteroids' artefact class")
    cfg = SurveyConfig(
        seed=args.seed,
        shape=(args.size, args.size),
        n_visits=args.visits,
        n_fields=args.fields,
        bands=args.bands,
        n_stars=args.stars,
        n_galaxies=args.galaxies,
        artefacts=args.artefacts,
        n_transients=args.transients,
        n_variables=args.variables,
        n_movers=args.movers,
        n_slow_movers=args.slow_movers,
        trails_on_variables=args.trails_on_variables,
        ghosts_on_stars=args.ghosts_on_stars,
        visits_per_night=args.visits_per_night,
        night_gaps=args.night_gaps,
        seeing_range=args.seeing,
        psf_kind=args.psf,
        raw_dtype=args.dtype,
        n_detectors=args.detectors,
        detector_gap=args.detector_gap,
        n_amps=args.amps,
        overscan=args.overscan,
    )
    check_output_dir(args.out)
    survey = simulate_survey(cfg)
    n_files = len(survey.visits) // cfg.n_detectors if args.mef else len(survey.visits)
    bar = Progress("skydm sim: visits", n_files, quiet=args.quiet)
    paths = write_survey(survey, args.out, clean=not args.no_clean, progress=bar, mef=args.mef)
    out = Path(args.out)
    what = (
        f"multi-extension raw files of {cfg.n_detectors} detectors"
        if args.mef
        else ("raw exposures")
    )
    print(
        f"wrote {len(paths)} {what} ({cfg.shape[1]}x{cfg.shape[0]}, {cfg.raw_dtype}) "
        f"of {cfg.n_fields} field(s) in {', '.join(cfg.bands)} to {out}"
    )
    if not args.no_clean:
        print(f"  artefact-free twins:  {out / 'clean'}")
    print(f"  truth catalog:        {out / 'truth.ecsv'} ({len(survey.truth)} objects)")
    print(f"  visits:               {out / 'visits.ecsv'}")
    per = "<visit>" if cfg.n_detectors == 1 else "<visit>_<detector>"
    print(f"  per-visit truth:      {out / 'truth'}/visit_{per}.ecsv, footprints_{per}.fits")
    return 0
