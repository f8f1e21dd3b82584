"""``skydm prompt serve|simulate|status``: prompt processing of visits as they arrive."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Library parameter -> the option that sets it, for error messages (cli/main.py).
OPTIONS = {
    "workers": "workers",
    "max_attempts": "max_attempts",
    "raw_timeout_s": "raw_timeout",
    "visits": "visits",
    "cadence": "cadence",
    "detectors": "detectors",
    "size": "size",
    "templates": "templates",
    "speedup": "speedup",
    "exptime": "exptime",
    "missing": "missing",
    "lock_cell_deg": "lock_cell",
    "radius_arcsec": "radius",
}


def register(subparsers: Any) -> None:
    """Add the ``prompt`` command group."""
    p = subparsers.add_parser(
        "prompt",
        help="prompt processing: each visit processed as it arrives, alerts within a budget",
        description=(
            "Rubin-style prompt processing. `serve` consumes next-visit events and "
            "raw-arrival notifications from Kafka and runs calibrate, diffim, association "
            "and alerts per detector on worker processes (or Dask); `simulate` drives it "
            "with a simulated night; `status` prints p50/p95 per stage. See docs/prompt.md."
        ),
    )
    sub = p.add_subparsers(dest="prompt_command", metavar="ACTION", required=True)

    s = sub.add_parser(
        "serve",
        help="run the service",
        description=(
            "Consume next-visit events and raw-arrival notifications, preload each "
            "detector's template and DIA objects on the event, process the raw when it "
            "lands, write the repository, the APDB, the alert archive and Kafka. One line "
            "per detector-visit that ends. Stops on SIGTERM/Ctrl-C, or with --until-idle."
        ),
    )
    s.add_argument("--repo", type=Path, default=None, help="the repository (with templates)")
    s.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers (host:port)")
    s.add_argument(
        "--dask", default=None, metavar="ADDRESS|local:N",
        help="run detectors on a Dask scheduler at ADDRESS or a LocalCluster of N workers",
    )  # fmt: skip
    s.add_argument("--workers", type=int, default=None, help="worker processes (default 2)")
    s.add_argument(
        "--raw-timeout", type=float, default=None, metavar="SECONDS",
        help="give up a raw this long after the visit's expected start (default 2*exptime+20)",
    )  # fmt: skip
    s.add_argument("--max-attempts", type=int, default=None, help="tries per detector (3)")
    s.add_argument("--apdb", default=None, help="APDB URL (default apdb.sqlite3 in the repo)")
    s.add_argument("--radius", type=float, default=None, help="association radius, arcsec (1)")
    s.add_argument(
        "--lock-cell", type=float, default=None, metavar="DEG",
        help="sky cell size of the association locks, degrees (0.5)",
    )  # fmt: skip
    s.add_argument(
        "-c", "--config", action="append", default=[], metavar="KEY=VALUE",
        help="ap pipeline config override (KEY or TASK.KEY), added to prompt/config.json's",
    )  # fmt: skip
    s.add_argument(
        "--metrics-port", type=int, default=None, metavar="PORT",
        help="serve Prometheus metrics on http://0.0.0.0:PORT/metrics (0: any free port)",
    )  # fmt: skip
    s.add_argument(
        "--until-idle", type=float, default=None, metavar="SECONDS",
        help="exit once nothing is queued, running or arriving for SECONDS",
    )  # fmt: skip
    s.add_argument("--max-seconds", type=float, default=None, help="exit after this long")
    s.add_argument("-q", "--quiet", action="store_true", help="no line per detector-visit")
    s.set_defaults(func=serve)

    m = sub.add_parser(
        "simulate",
        help="drive the service with a simulated night",
        description=(
            "Simulate a focal plane of --detectors detectors; make templates from the first "
            "--templates visits if the repository has none; then send a next-visit event "
            "every --cadence seconds and ingest each detector's raw --exptime seconds later "
            "(notifying its arrival). --speedup divides every wait (a 30 s cadence at "
            "--speedup 10 runs a visit every 3 s of wall time)."
        ),
    )
    m.add_argument("--repo", type=Path, default=None, help="the repository (created if needed)")
    m.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers (host:port)")
    m.add_argument("--visits", type=int, default=20, help="visits of the night (20)")
    m.add_argument("--cadence", type=float, default=30.0, help="seconds between visits (30)")
    m.add_argument("--detectors", type=int, default=4, help="detectors per visit (4)")
    m.add_argument("--size", type=int, default=256, help="pixels on a detector's side (256)")
    m.add_argument("--stars", type=int, default=None, help="stars per detector")
    m.add_argument("--templates", type=int, default=4, help="visits coadded into templates (4)")
    m.add_argument("--exptime", type=float, default=30.0, help="exposure time, seconds (30)")
    m.add_argument("--speedup", type=float, default=1.0, help="simulated s per wall s (1)")
    m.add_argument("--seed", type=int, default=11, help="random seed (11)")
    m.add_argument(
        "--missing", action="append", default=[], metavar="VISIT:DETECTOR",
        help="a raw that never arrives (night visit index from 1; repeatable)",
    )  # fmt: skip
    m.add_argument("-j", "--jobs", type=int, default=2, help="processes making templates (2)")
    m.add_argument("-q", "--quiet", action="store_true", help="no line per visit")
    m.set_defaults(func=simulate)

    t = sub.add_parser(
        "status",
        help="p50/p95 per stage and the detector-visits that timed out or failed",
        description=(
            "Read the repository's prompt-processing record (prompt/prompt.sqlite3): "
            "detector-visits per state, p50/p95/max seconds per stage, and the ones that "
            "timed out or failed."
        ),
    )
    t.add_argument("--repo", type=Path, default=None, help="the repository")
    t.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    t.set_defaults(func=status)


def serve(args: argparse.Namespace) -> int:
    """Handle ``skydm prompt serve``."""
    from skydm.cli._checks import existing_repository
    from skydm.prompt.config import load_config
    from skydm.prompt.service import PromptService

    root = existing_repository(args.repo)
    base = load_config(root)
    config = base.updated(
        workers=args.workers,
        raw_timeout_s=args.raw_timeout,
        max_attempts=args.max_attempts,
        apdb=args.apdb,
        radius_arcsec=args.radius,
        lock_cell_deg=args.lock_cell,
        pipeline=(*base.pipeline, *args.config) if args.config else None,
    )
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        from skydm.errors import BadValueError

        raise BadValueError("--metrics-port", args.metrics_port, "0 to 65535")
    from skydm.pipeline.pipelines import load_pipeline

    load_pipeline(("calibrate", "diffim"), config.pipeline)  # bad overrides: refused now
    service = PromptService(
        root, args.bootstrap, config, dask=args.dask, metrics_port=args.metrics_port
    )
    say = (lambda _line: None) if args.quiet else (lambda line: print(line, flush=True))
    try:
        if service.metrics.port is not None:
            print(f"metrics on http://0.0.0.0:{service.metrics.port}/metrics", flush=True)
        print(
            f"serving {root} from {args.bootstrap} ({config.next_visit_topic}, "
            f"{config.raw_topic}) with {config.workers} workers", flush=True,
        )  # fmt: skip
        report = service.run(idle_exit_s=args.until_idle, max_seconds=args.max_seconds, log=say)
    finally:
        service.close()
    print(report.line())
    return 1 if report.ended.get("failed") else 0


def _missing(items: list[str]) -> tuple[tuple[int, int], ...]:
    from skydm.errors import BadValueError

    out = []
    for item in items:
        try:
            v, d = item.split(":")
            out.append((int(v), int(d)))
        except ValueError:
            raise BadValueError("--missing", item, "VISIT:DETECTOR, e.g. 3:1") from None
    return tuple(out)


def simulate(args: argparse.Namespace) -> int:
    """Handle ``skydm prompt simulate``."""
    from skydm.cli._checks import new_or_existing_repository
    from skydm.prompt.simulate import NightConfig, simulate_night

    root = new_or_existing_repository(args.repo)
    night = NightConfig(
        visits=args.visits,
        cadence=args.cadence,
        detectors=args.detectors,
        size=args.size,
        stars=args.stars,
        templates=args.templates,
        exptime=args.exptime,
        speedup=args.speedup,
        seed=args.seed,
        missing=_missing(args.missing),
    )
    say = (lambda _line: None) if args.quiet else (lambda line: print(line, flush=True))
    report = simulate_night(root, args.bootstrap, night, jobs=args.jobs, log=say)
    print(
        f"{len(report.visits)} visits x {len(report.detectors)} detectors sent in "
        f"{report.seconds:.1f} s: {report.raws} raws, {len(report.missing)} withheld"
        + ("; templates made" if report.templates_made else "")
    )
    return 0


def status(args: argparse.Namespace) -> int:
    """Handle ``skydm prompt status``."""
    from skydm.cli._checks import existing_repository
    from skydm.prompt.status import prompt_status

    root = existing_repository(args.repo)
    st = prompt_status(root)
    if args.json:
        json.dump(st.to_dict(), sys.stdout)
        print()
    else:
        print("\n".join(st.lines()))
    return 0
