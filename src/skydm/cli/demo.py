"""``skydm demo``: one end-to-end run on simulated data."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

# run_demo parameter -> the option that sets it, for error messages (cli/main.py).
OPTIONS = {"n_visits": "visits", "n_template": "template_visits", "size": "size", "seed": "seed"}


def register(sub: Any) -> None:
    """Add the ``demo`` command."""
    p = sub.add_parser(
        "demo",
        help="simulate a small survey and run it through every stage",
        description=(
            "Simulate a small survey and ingest it losslessly; run the drp pipeline on the "
            "template epochs (calibrate, warp, CompareWarp coadd, Object table) and the ap "
            "pipeline on the later ones (difference imaging, DIA sources, LSST alert packets "
            "streamed when a Kafka broker is configured, DiaObject/DiaSource tables), all into "
            "one repository, as `skydm run` does; then print what was made and what to run next."
        ),
    )
    p.add_argument("--repo", type=Path, default=None, help="repository (default ./skydm-repo)")
    p.add_argument("--seed", type=int, default=42, help="survey seed (default 42)")
    p.add_argument("--visits", type=int, default=10, help="visits in all (default 10)")
    p.add_argument("--template-visits", type=int, default=5, help="visits in the template")
    p.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    p.add_argument(
        "--kafka-bootstrap",
        default=None,
        help="Kafka bootstrap servers to stream alerts to (default $SKYDM_KAFKA_BOOTSTRAP)",
    )
    p.add_argument("-j", "--jobs", type=int, default=None, help="worker processes (CPUs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print its report."""
    from skydm.cli._checks import new_or_existing_repository
    from skydm.pipeline.demo import run_demo

    repo = new_or_existing_repository(args.repo)
    bootstrap = args.kafka_bootstrap or os.environ.get("SKYDM_KAFKA_BOOTSTRAP")
    r = run_demo(
        repo,
        seed=args.seed,
        n_visits=args.visits,
        n_template=args.template_visits,
        size=args.size,
        bootstrap=bootstrap,
        quiet=args.quiet,
        jobs=args.jobs,
    )
    mb = 1024 * 1024
    print(f"skydm demo: repository {r.repo.resolve()}")
    print(f"  visits simulated and ingested : {r.visits} ({args.size}x{args.size} pixels)")
    print(
        f"  raw archive                   : {r.raw_bytes / mb:.1f} MB -> "
        f"{r.stored_bytes / mb:.1f} MB stored losslessly (ratio {r.ratio:.2f}x)"
    )
    print(f"  template (CompareWarp coadd)  : {r.template_visits} visits, sky cell {r.skycell}")
    print(
        f"  difference images             : {r.diff_visits}, {r.dia_sources} DIA sources; "
        f"{r.transients_found} of {r.transients_injected} injected transients found"
    )
    print(f"  alert packets (LSST schema)   : {r.alerts}, archives in {r.repo / 'alerts'}")
    if r.streamed is not None:
        kept = (
            f"; {r.stream_pending} kept in the outbox (is the broker up?), "
            f"`skydm alerts stream --archive-dir {r.repo / 'alerts'}` sends them"
            if r.stream_pending
            else ""
        )
        print(f"  streamed to Kafka             : {r.streamed} delivered to {bootstrap}{kept}")
    else:
        print("  streamed to Kafka             : no broker configured (set SKYDM_KAFKA_BOOTSTRAP)")
    tables = ", ".join(f"{k} ({v} rows)" for k, v in r.catalog_tables.items())
    print(f"  catalog tables                : {tables or 'none'}")
    print(
        "  timings (s)                   : " + ", ".join(f"{k} {v}" for k, v in r.timings.items())
    )
    print("next:")
    print(f"  skydm verify --repo {r.repo}")
    print(f"  skydm provenance --repo {r.repo} coadd   # how the template was made")
    print(f"  skydm serve --repo {r.repo} --port 8080   # TAP at http://127.0.0.1:8080/tap")
    print(
        f'  skydm query --repo {r.repo} "SELECT TOP 10 * FROM DiaObject ORDER BY nDiaSources DESC"'
    )
    print("  skydm alerts consume --help")
    return 0
