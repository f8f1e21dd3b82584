"""``skydm platform up|down|check``: the services on this machine, and a synthetic user."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

#: Library parameter → option, so that errors name what the user typed.
OPTIONS = {
    "url": "url",
    "token": "token",
    "query": "query",
    "cutout_radius": "radius",
    "timeout": "timeout",
    "notebook_timeout": "notebook-timeout",
    "port": "port",
}


def register(subparsers: Any) -> None:
    """Add the ``platform`` command group."""
    parser = subparsers.add_parser(
        "platform",
        help="start, stop and check the science platform",
        description="Start the services with token auth on this machine (up, down), and "
        "check any deployment with a synthetic user (check). See docs/platform.md.",
    )
    sub = parser.add_subparsers(dest="platform_command", metavar="{up,down,check}")
    sub.required = True
    repo_help = "repository directory (default: $SKYDM_REPO or ./skydm-repo)"
    up = sub.add_parser(
        "up",
        help="start the services with auth, and JupyterHub, on 127.0.0.1; print the URL and "
        "an admin token",
        description="Start `skydm serve --auth tokens` (or oidc) for the repository on 127.0.0.1 "
        "in the background, and JupyterHub with configurable-http-proxy in front of it (one URL: "
        "the services' paths go to the services, /hub and /user to the notebooks), wait until "
        "they answer, and print the URL, then an administrator's token alone on the last line "
        "(it logs in to the hub too). `skydm platform down` stops them and revokes that token. "
        "Notebooks need the `platform` extra and configurable-http-proxy (npm).",
    )
    up.add_argument("--repo", type=Path, default=None, help=repo_help)
    up.add_argument("--port", type=int, default=8000, help="port of the platform's URL (8000)")
    up.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for each part (60)"
    )
    up.add_argument(
        "--auth",
        choices=["tokens", "oidc"],
        default="tokens",
        help="how users log in: tokens (the hub asks for one) or oidc (browsers go to the "
        "provider in SKYDM_OIDC_*; see docs/platform.md) (tokens)",
    )
    up.add_argument(
        "--no-notebooks",
        dest="notebooks",
        action="store_false",
        help="start the services only, without JupyterHub",
    )
    up.set_defaults(func=_up)
    down = sub.add_parser(
        "down",
        help="stop what `skydm platform up` started; revoke its admin token",
        description="Stop the services `skydm platform up` started for the repository and "
        "revoke the administrator's token it made.",
    )
    down.add_argument("--repo", type=Path, default=None, help=repo_help)
    down.set_defaults(func=_down)

    check = sub.add_parser(
        "check",
        help="run a synthetic user against the services and time each step",
        description=(
            "A synthetic user (Mobu in miniature): it presents the token (auth: "
            "/auth/api/v1/token-info), runs a TAP query (/tap/sync), finds an image through "
            "SIA (/sia/query) and cuts it out through SODA (/soda/sync); with --notebook it also "
            "runs a cell in the user's JupyterLab through the hub. Prints a table of "
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
    check.add_argument(
        "--notebook",
        action="store_true",
        help="also run a notebook cell: start the user's JupyterLab through the hub's API, "
        "run a TAP query in a kernel with the delegated token, stop it (the token needs "
        "exec:notebook)",
    )
    check.add_argument(
        "--notebook-timeout",
        type=float,
        default=180.0,
        help="seconds the notebook server, the kernel and the cell may each take (180)",
    )
    check.add_argument("--json", action="store_true", help="print one JSON line, not a table")
    check.set_defaults(func=_check)


def _up(args: argparse.Namespace) -> int:
    from skydm.cli._checks import existing_repository
    from skydm.platform.local import platform_up

    platform = platform_up(
        existing_repository(args.repo),
        port=args.port,
        timeout=args.timeout,
        notebooks=args.notebooks,
        auth=args.auth,
    )
    print(f"skydm platform: services at {platform.url} (pid {platform.pid}, log {platform.log})")
    if platform.hub_pid is not None:
        print(
            f"skydm platform: notebooks at {platform.url}/hub/ "
            f"(JupyterHub pid {platform.hub_pid}, log {platform.hub_log})"
        )
    print(f"export SKYDM_URL={platform.url}; `skydm platform down` stops them; admin token:")
    print(platform.token)
    return 0


def _down(args: argparse.Namespace) -> int:
    from skydm.cli._checks import existing_repository
    from skydm.platform.local import platform_down

    platform = platform_down(existing_repository(args.repo))
    hub = " and the notebooks" if platform.hub_pid is not None else ""
    print(f"skydm platform: stopped the services{hub} at {platform.url}; admin token revoked")
    return 0


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
        notebook=args.notebook,
        notebook_timeout=args.notebook_timeout,
    )
    report = run_check(config)
    print(report.to_json() if args.json else report.table())
    for step in report.steps:
        if not step.ok:
            print(f"skydm platform check: {step.name} failed: {step.detail}", file=sys.stderr)
    return 0 if report.ok else 1
