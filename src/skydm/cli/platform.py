"""``skydm platform check``: a synthetic user that exercises a running deployment."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

#: Library parameter → option, so that errors name what the user typed.
OPTIONS = {
    "url": "url",
    "token": "token",
    "query": "query",
    "cutout_radius": "radius",
    "timeout": "timeout",
}


def register(subparsers: Any) -> None:
    """Add the ``platform`` command group."""
    parser = subparsers.add_parser(
        "platform",
        help="check a running science platform deployment",
        description="Operate a science platform deployment (docs/platform.md).",
    )
    sub = parser.add_subparsers(dest="platform_command", metavar="{check}")
    sub.required = True
    check = sub.add_parser(
        "check",
        help="run a synthetic user against the services and time each step",
        description=(
            "A synthetic user (Mobu in miniature): it presents the token (auth: "
            "/auth/api/v1/token-info), runs a TAP query (/tap/sync), finds an image through "
            "SIA (/sia/query) and cuts it out through SODA (/soda/sync). Prints a table of "
            "steps with their times (or one JSON line with --json), one line on standard "
            "error per failed step, and exits 1 if any step failed. The token needs "
            "read:tap and read:image."
        ),
    )
    check.add_argument(
        "--url",
        default=None,
        help="the services' root URL, e.g. https://data.example.org (default: $SKYDM_URL)",
    )
    check.add_argument("--token", default=None, help="the token to present (default: $SKYDM_TOKEN)")
    check.add_argument(
        "--query", default=None, help="ADQL of the TAP step (default: 5 rows of ivoa.ObsCore)"
    )
    check.add_argument(
        "--radius", type=float, default=0.002, help="cutout radius in degrees (0.002)"
    )
    check.add_argument(
        "--timeout", type=float, default=30.0, help="seconds each request may take (30)"
    )
    check.add_argument("--json", action="store_true", help="print one JSON line, not a table")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from skydm.errors import BadValueError
    from skydm.platform.check import DEFAULT_QUERY, CheckConfig, run_check

    url = args.url or os.environ.get("SKYDM_URL")
    if not url:
        raise BadValueError("--url", None, "give the services' URL or set SKYDM_URL")
    token = args.token if args.token is not None else os.environ.get("SKYDM_TOKEN", "")
    if not token:
        raise BadValueError(
            "--token", None, "give a token (`skydm token create ...`) or set SKYDM_TOKEN"
        )
    config = CheckConfig(
        url=url,
        token=token,
        query=args.query if args.query is not None else DEFAULT_QUERY,
        cutout_radius=args.radius,
        timeout=args.timeout,
    )
    report = run_check(config)
    print(report.to_json() if args.json else report.table())
    for step in report.steps:
        if not step.ok:
            print(f"skydm platform check: {step.name} failed: {step.detail}", file=sys.stderr)
    return 0 if report.ok else 1
