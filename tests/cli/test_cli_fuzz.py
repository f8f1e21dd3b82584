"""Every command's options fuzzed (issue 14): no traceback, no internal error.

For each subcommand found in the parser, hypothesis draws a command line
from the command's own options: values of the right type and of the wrong
one, existing and missing paths, files that are not FITS, places that cannot
be written.  The command must end with argparse's usage error (2), or with
an exit status and at most a one-line ``error:`` on standard error; never
with an exception escaping ``main`` or skydm's "internal error" line.

Commands that serve or wait until interrupted (``serve``, ``platform up``,
``alerts broker``, ``alerts consume``) and ``demo`` (a whole survey when its arguments are
good) are left out; their bad arguments are tested one by one elsewhere.
A case that would run for more than a few seconds (valid arguments asking
for real work) is stopped and counts as passed.
"""

from __future__ import annotations

import argparse
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzzing import budget
from skydm.cli.main import build_parser, main
from skydm_testing import DATA

SKIP = {("serve",), ("platform", "up"), ("alerts", "broker"), ("alerts", "consume"), ("demo",)}
#: Options left alone: they would point the command at a real network service.
UNTOUCHED = {"--bootstrap", "--url", "--engine", "--kafka-config", "--apdb"}
CASE_SECONDS = 8


def _leaves(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield words, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*words, name))


COMMANDS = [(w, p) for w, p in _leaves(build_parser()) if w not in SKIP]


class _Slow(BaseException):
    """A case that started real work; not caught by ``main``'s handlers."""


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clifuzz")
    (root / "text.fits").write_text("not a FITS file\n")
    (root / "table.csv").write_text("ra,dec\n400,95\n")
    (root / "adir").mkdir()
    real = DATA / "ntt_single" / "image.fits"
    if real.exists():
        shutil.copy(real, root / "image.fits")
    # A real repository with a raw and a catalog table, so that cases get past the
    # repository check into the commands' own work.
    (root / "stars.csv").write_text("id,ra,dec\n1,10,20\n2,10.1,20.1\n")
    assert main(["ingest", "-q", "--repo", str(root / "repo"), str(root / "image.fits")]) == 0
    assert (
        main(["catalog", "load", "-q", "--repo", str(root / "repo"), str(root / "stars.csv")]) == 0
    )
    return root


def _paths(root: Path) -> list[str]:
    return [
        str(root / "image.fits"),
        str(root / "repo"),
        str(root / "stars.csv"),
        str(root / "text.fits"),
        str(root / "table.csv"),
        str(root / "adir"),
        str(root / "missing.fits"),
        str(root / "no" / "such" / "dir" / "x.fits"),
        "/proc/x.fits",
        "",
        "-",
    ]


@st.composite
def _value(draw: st.DrawFn, action: argparse.Action, root: Path) -> str:
    junk = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
    if "--repo" in action.option_strings and draw(st.integers(0, 3)):
        return str(root / "repo")
    if action.dest == "adql" and draw(st.integers(0, 2)):
        return draw(st.sampled_from(["SELECT * FROM stars", "SELECT TOP 1 id FROM stars", "SELEC"]))
    if action.choices and draw(st.integers(0, 3)):
        return str(draw(st.sampled_from(sorted(map(str, action.choices)))))
    if action.type is int and draw(st.integers(0, 3)):
        return str(draw(st.sampled_from([-1, 0, 1, 2, 3, 7, 16, 2**31, -(2**40)])))
    if action.type is float and draw(st.integers(0, 3)):
        return str(draw(st.sampled_from([-1.0, 0.0, 0.5, 1.0, 1e300, float("nan"), float("inf")])))
    if draw(st.integers(0, 2)):
        return draw(st.sampled_from(_paths(root)))
    return draw(junk.filter(lambda s: not s.startswith("-")))


@st.composite
def command_line(draw: st.DrawFn, root: Path) -> list[str]:
    words, parser = draw(st.sampled_from(COMMANDS))
    argv = list(words)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:  # positional: always given
            n = 1 if action.nargs in (None, "+") else draw(st.integers(0, 2))
            argv += [draw(_value(action, root)) for _ in range(n)]
            continue
        if set(action.option_strings) & UNTOUCHED or draw(st.integers(0, 2)) != 0:
            continue
        option = draw(st.sampled_from(action.option_strings))
        if action.nargs == 0:
            argv.append(option)
        else:
            argv += [option, draw(_value(action, root))]
    return argv


def _raise_slow(signum: int, frame: object) -> None:
    raise _Slow


@pytest.fixture(scope="module")
def strategy(place: Path) -> st.SearchStrategy[list[str]]:
    return command_line(place)


@budget(200, function_fixtures=True)
@given(data=st.data())
def test_fuzz_every_command_line(
    data: st.DataObject,
    place: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv = data.draw(command_line(place))
    capsys.readouterr()  # the capture is shared by every case of this test
    monkeypatch.chdir(place)
    monkeypatch.delenv("SKYDM_REPO", raising=False)
    monkeypatch.delenv("SKYDM_DEBUG", raising=False)
    previous = signal.signal(signal.SIGALRM, _raise_slow)
    signal.alarm(CASE_SECONDS)
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 2
        assert status in (0, 2), argv
    except _Slow:
        return
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for leftover in (place / "skydm-repo",):
            shutil.rmtree(leftover, ignore_errors=True)
    err = capsys.readouterr().err
    assert "internal error" not in err, (argv, err)
    assert "Traceback" not in err, (argv, err)
    assert isinstance(status, int)
    if status in (1, 2):
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert len(errors) <= 1, (argv, err)


def test_commands_are_found() -> None:
    names = {" ".join(w) for w, _ in COMMANDS}
    assert {"sim", "ingest", "verify", "coadd", "query", "catalog load", "alerts produce"} <= names
