"""``skydm archive quality|budget``: choose a lossy level, and plan the disk."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``archive`` command group."""
    p = subparsers.add_parser(
        "archive",
        help="lossy-compression quality report and retention budget of a repository",
        description="Study lossy compression on a repository's own images, or project its size.",
    )
    sub = p.add_subparsers(dest="archive_command", metavar="SUBCOMMAND", required=True)

    q = sub.add_parser(
        "quality",
        help="what quantization at sigma/q does to this repository's images (DMTN-068 style)",
        description=(
            "Write sampled calexps/warps, coadds and differences of the repository with "
            "lossy<q> for each q, read them back and report: ratio and speed, noise growth, "
            "pixels changed by more than a quantum, forced PSF-flux, centroid and shape "
            "errors against S/N, the background re-fit, and DIA detections added or lost on "
            "differences. Writes quality.json and PNG plots into --out."
        ),
    )
    _repo_option(q)
    q.add_argument(
        "--q", default="4,8,16,32", help="comma-separated quantization levels (default 4,8,16,32)"
    )
    q.add_argument(
        "--out", type=Path, default=None, help="output folder (default REPO/quality-report)"
    )
    q.add_argument("--max-images", type=int, default=4, help="images sampled per kind (default 4)")
    q.add_argument("--quiet", action="store_true", help="no progress on stderr")
    q.set_defaults(func=run_quality)

    b = sub.add_parser(
        "budget",
        help="bytes per night and per year for each dataset type, against a disk budget",
        description=(
            "Project the repository's growth from what is stored (sizes, and the nights "
            "its raws were taken) and the write recipes in skydm-repo.json."
        ),
    )
    _repo_option(b)
    b.add_argument("--budget", default=None, help="disk budget, e.g. 500TB or 2.5PB")
    b.add_argument(
        "--nights-per-year", type=float, default=300.0, help="observing nights a year (300)"
    )
    b.add_argument(
        "--visits-per-night",
        type=float,
        default=None,
        help="visits a night in operations (default: the mean of the nights stored)",
    )
    b.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    b.set_defaults(func=run_budget)


def _repo_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--repo", type=Path, default=None, help="repository (default $SKYDM_REPO or ./skydm-repo)"
    )


def _open(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from skydm.config import Settings
    from skydm.repo import Repository

    settings = Settings.from_env()
    root = args.repo if args.repo is not None else settings.repo
    return Repository.open(root, create=False, registry_url=settings.registry_url)


def _levels(text: str) -> tuple[int, ...]:
    from skydm.errors import BadValueError

    try:
        levels = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise BadValueError(
            "--q", text, "comma-separated whole numbers such as 4,8,16,32"
        ) from None
    return levels


def run_quality(args: argparse.Namespace) -> int:
    """Handle ``skydm archive quality``."""
    from skydm.archive.quality import QualityConfig, measure_quality
    from skydm.archive.quality_plots import write_plots
    from skydm.progress import Progress
    from skydm.repo.atomic import atomic_write_bytes

    config = QualityConfig(q_levels=_levels(args.q), max_images=args.max_images)
    with _open(args) as repo:
        out = args.out if args.out is not None else repo.root / "quality-report"
        bar = Progress("archive quality", None, quiet=args.quiet)
        report = measure_quality(repo, config, progress=lambda note: bar.advance(note=note))
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "quality.json"
    atomic_write_bytes(json_path, json.dumps(report.to_json(), indent=1).encode())
    plots = write_plots(report, out)
    print(f"{'q':>4} {'ratio':>6} {'MB/s':>6} {'noise+':>8} {'>1q':>6}  |dF|/sF at S/N 5-20")
    for level in report.levels:
        faint = [b for b in level.bins if b.snr_lo >= 5 and b.snr_hi <= 20 and b.n]
        flux = max((b.flux_err_sigma for b in faint), default=math.nan)
        print(
            f"{level.q:>4} {level.ratio:>6.2f} {level.write_mb_per_s:>6.1f} "
            f"{100 * level.noise_growth:>7.3f}% {level.frac_changed_gt_quantum:>6.3f}  {flux:.4f}"
        )
    print(f"wrote {json_path}, " + ", ".join(str(p) for p in plots))
    return 0


def run_budget(args: argparse.Namespace) -> int:
    """Handle ``skydm archive budget``."""
    from skydm.archive.budget import BudgetConfig, format_bytes, parse_size, project_budget

    config = BudgetConfig(
        nights_per_year=args.nights_per_year,
        visits_per_night=args.visits_per_night,
        budget_bytes=parse_size(args.budget) if args.budget is not None else None,
    )
    with _open(args) as repo:
        report = project_budget(repo, config)
    if args.json:
        print(json.dumps(report.to_json()))
        return 0
    print(
        f"from {report.visits_stored} visits on {report.nights_stored} nights; projecting "
        f"{report.visits_per_night:.4g} visits a night, {report.nights_per_year:g} nights a year"
    )
    print(f"{'dataset type':<14} {'recipe':<20} {'stored':>10} {'per night':>10} {'per year':>10}")
    for t in report.types:
        night = format_bytes(t.bytes_per_night) if t.grows_nightly else "(fixed set)"
        year = format_bytes(t.bytes_per_year) if t.grows_nightly else ""
        print(
            f"{t.dataset_type:<14} {t.recipe:<20} {format_bytes(t.stored_bytes):>10} "
            f"{night:>10} {year:>10}"
        )
    print(
        f"{'total':<14} {'':<20} {'':>10} {format_bytes(report.bytes_per_night):>10} "
        f"{format_bytes(report.bytes_per_year):>10}"
    )
    years = report.years_to_fill
    if years is not None and report.budget_bytes is not None:
        span = "never" if not math.isfinite(years) else f"in {years:.3g} years"
        print(f"budget {format_bytes(report.budget_bytes)}: full {span}")
    return 0
