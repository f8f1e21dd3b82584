"""``skydm serve``: run the web services (the TAP service at ``/tap``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from skydm.errors import BadValueError, UserError


def register(subparsers: Any) -> None:
    """Add the ``serve`` command."""
    parser = subparsers.add_parser(
        "serve",
        help="run the web services (IVOA TAP at /tap; SIA, DataLink, SODA for images)",
        description=(
            "Serve the repository's catalog over IVOA TAP 1.1 (sync and async ADQL queries, "
            "VOSI tables/capabilities/availability, DALI examples) at http://HOST:PORT/tap. "
            "Async jobs run in worker processes; their state and results live in REPO/tap/. "
            "The repository's images are served beside it: SIAv2 at /sia/query, DataLink at "
            "/datalink/links, SODA cutouts at /soda/sync and /soda/async, every epoch of a "
            "position at /images/stamps, and ivoa.ObsCore in TAP (set SKYDM_PUBLIC_URL when "
            "clients reach the server by another URL)."
        ),
    )
    parser.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="repository directory (default: $SKYDM_REPO or ./skydm-repo)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    parser.add_argument(
        "--engine",
        default=None,
        help="catalog engine URL, e.g. postgresql+psycopg://... "
        "(default: DuckDB over REPO/catalog, or $SKYDM_CATALOG_ENGINE)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="async jobs executed at once, each in its own process (2)",
    )
    parser.add_argument(
        "--auth",
        choices=["none", "tokens", "oidc"],
        default="none",
        help="authentication: none (loopback binds only), tokens (made with "
        "`skydm token create` on this repository; every route then needs one), or oidc "
        "(tokens, plus browser login at /login through the provider in SKYDM_OIDC_*)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow --auth none on a non-loopback --host (anyone who reaches it reads everything)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="server log level (info)",
    )
    parser.set_defaults(func=_serve)


def engine_url(value: str | None) -> str | None:
    """The engine URL from ``--engine`` or the settings (``None`` means DuckDB)."""
    from skydm.config import Settings

    url = value if value is not None else Settings.from_env().catalog_engine
    return None if url in (None, "", "duckdb") else url


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another process holds before saying the service is there."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BadValueError(
            "--host", host, f"not an address of this machine ({exc.strerror})"
        ) from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # uvicorn sets SO_REUSEADDR too: a port in TIME_WAIT is free for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise UserError(
                f"cannot listen on {host}:{port} ({exc.strerror}); another program holds "
                "the port: choose another with --port"
            ) from exc


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace) -> int:
    from skydm.cli._checks import existing_repository
    from skydm.errors import require_extra

    require_extra("uvicorn", "serve")
    import uvicorn

    from skydm.services.app import create_app
    from skydm.services.auth.config import AuthConfig

    if not 0 < args.port < 65536:
        raise BadValueError("--port", args.port, "give a port number from 1 to 65535")
    if args.workers is not None and args.workers < 1:
        raise BadValueError("--workers", args.workers, "give at least 1")
    if args.auth == "none" and not args.insecure and not is_loopback(args.host):
        raise BadValueError(
            "--host",
            args.host,
            "without authentication only a loopback address (127.0.0.1, ::1, localhost) "
            "may be bound: add --auth tokens, or --insecure to serve everyone anyway",
        )
    repo = existing_repository(args.repo)
    _check_port_free(args.host, args.port)
    app = create_app(
        repo,
        engine_url=engine_url(args.engine),
        workers=args.workers,
        public_url=f"http://{args.host}:{args.port}",
        auth=AuthConfig.from_env(args.auth),
    )
    print(
        f"skydm serve: TAP service at http://{args.host}:{args.port}/tap "
        f"(repository {repo}, auth {args.auth})",
        file=sys.stderr,
        flush=True,
    )
    # Access lines are logged at INFO: below that level, uvicorn would still
    # format each request's client address and path for nothing.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.log_level in ("info", "debug"),
    )
    return 0
