"""Entry point of the ``skydm`` command.

Each command group lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a handler
``(args) -> int``.  Handlers import the library lazily so that ``skydm --help``
is fast and a missing extra only matters for the command that needs it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from skydm import __version__
from skydm.errors import BadValueError, SkydmError

COMMAND_MODULES = [
    "sim",
    "ingest",
    "instrument",
    "datasets",
    "retrieve",
    "verify",
    "cutout",
    "color",
    "hips",
    "diffim",
    "coadd",
    "alerts",
    "catalog",
    "query",
    "serve",
    "token",
    "platform",
    "demo",
    "archive",
    "transfer",
    "run",
    "provenance",
    "calibrate",
    "warp",
    "prompt",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="skydm",
        description="Survey data management: archive, differencing, coadds, alerts, catalogs.",
    )
    parser.add_argument("--version", action="version", version=f"skydm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"skydm.cli.{name}").register(sub)
    return parser


def _in_option_terms(exc: BadValueError, args: argparse.Namespace) -> BadValueError:
    """Name the option the user typed instead of the library's parameter.

    A command module may define ``OPTIONS``, a mapping from the library's
    parameter names (``n_visits``) to the argparse destination that set them
    (``visits``); the message then says ``--visits 0``, not ``n_visits=0``.
    """
    module = sys.modules.get(getattr(args.func, "__module__", ""), None)
    options: dict[str, str] = getattr(module, "OPTIONS", {})
    dest = options.get(exc.name)
    if dest is None:
        return exc
    return exc.for_option("--" + dest.replace("_", "-"), getattr(args, dest, exc.value))


def _command_name(args: argparse.Namespace) -> str:
    """``query``, or ``catalog load`` for a command group's action."""
    words = [args.command]
    for key, value in vars(args).items():
        if key.endswith("_command") and isinstance(value, str):
            words.append(value)
    return " ".join(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``skydm`` command; returns the exit status.

    Every error skydm raises on purpose is printed as one line on standard
    error; usage errors exit 2 (like argparse's own), failures at run time 1.
    An operating-system error is one line naming the file.  Anything else is
    a defect: one line asking for a report (``SKYDM_DEBUG=1`` shows the
    traceback).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    name = _command_name(args)
    try:
        return int(args.func(args))
    except SkydmError as exc:
        if isinstance(exc, BadValueError):
            exc = _in_option_terms(exc, args)
        print(f"skydm {name}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(f"skydm {name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`skydm query ... | head`): nothing to say to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        if os.environ.get("SKYDM_DEBUG"):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"skydm {name}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if os.environ.get("SKYDM_DEBUG"):
            raise
        text = " ".join(str(exc).split())  # one line, whatever the exception holds
        print(
            f"skydm {name}: internal error: {type(exc).__name__}: {text}; this is a bug in "
            "skydm, please report it with the command line (SKYDM_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 70


if __name__ == "__main__":
    sys.exit(main())
