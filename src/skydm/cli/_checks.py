"""Checks every command runs on its arguments before any work starts.

A mistake in an output path or a repository path must be reported at once,
in one line that names the option and the value, not after minutes of work
as an operating-system traceback, and it must leave nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from skydm.errors import BadValueError, NoRepositoryError


def check_output(
    path: Path,
    *,
    option: str = "--out",
    parents: bool = False,
    suffixes: Iterable[str] | None = None,
) -> Path:
    """Make sure a file can be written at ``path`` before the work that makes it.

    Parameters
    ----------
    path : pathlib.Path
        The output file the user named.
    option : str
        The option that named it, for the message.
    parents : bool
        Create missing parent directories (the command's ``--parents``);
        otherwise a missing parent is refused: it is usually a typing mistake.
    suffixes : iterable of str, optional
        The file name endings the command can write (``.fits``, ``.ecsv``...),
        compared case-insensitively; ``None`` accepts any.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    BadValueError
        When ``path`` is a directory, has an unknown ending, its parent is
        missing (and ``parents`` is false) or is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise BadValueError(option, str(path), "it is a directory; give a file name in it")
    if suffixes is not None:
        allowed = tuple(s.lower() for s in suffixes)
        if not path.name.lower().endswith(allowed):
            raise BadValueError(
                option,
                str(path),
                f"the file name must end in {', '.join(allowed)} (the format is chosen by it)",
            )
    parent = path.parent
    if not parent.exists():
        if not parents:
            raise BadValueError(
                option,
                str(path),
                f"the directory {parent} does not exist; create it or pass --parents",
            )
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BadValueError(
                option, str(path), f"cannot create {parent} ({exc.strerror}); choose another place"
            ) from exc
    elif not parent.is_dir():
        raise BadValueError(option, str(path), f"{parent} is not a directory")
    _probe_writable(parent, option, path)
    return path


def check_output_dir(path: Path, *, option: str = "--out") -> Path:
    """Make sure ``path`` is, or can be made, a writable directory.

    The directory itself may be created (its contents are the command's
    output), but not a missing parent of it: that is a typing mistake.

    Raises
    ------
    BadValueError
        When ``path`` is a file, its parent is missing, or it is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadValueError(option, str(path), "it is a file; give a directory")
    if not path.exists():
        if not path.parent.is_dir():
            raise BadValueError(
                option, str(path), f"the directory {path.parent} does not exist; create it first"
            )
        _probe_writable(path.parent, option, path)
    else:
        _probe_writable(path, option, path)
    return path


def _probe_writable(directory: Path, option: str, path: Path) -> None:
    """Create and delete a temporary file in ``directory``: the only sure test.

    ``os.access`` says yes to root everywhere, even under ``/proc``.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".skydm-probe-", dir=directory)
    except OSError as exc:
        raise BadValueError(
            option,
            str(path),
            f"cannot write in {directory} ({exc.strerror}); choose a place you can write to",
        ) from exc
    os.close(fd)
    os.unlink(name)


def repository_path(value: Path | None) -> Path:
    """The repository directory from ``--repo``, else ``$SKYDM_REPO`` or ``./skydm-repo``."""
    from skydm.config import Settings

    return Path(value) if value is not None else Settings.from_env().repo


def existing_repository(value: Path | None) -> Path:
    """The directory of an existing repository named by ``--repo`` (or the default).

    Only the commands that create repositories (``ingest``, ``demo``, ``sim
    --repo``) may make one; every other command refuses a path that holds no
    repository, so that a typing mistake cannot become an empty repository.

    Raises
    ------
    NoRepositoryError
        "no skydm repository at X; create one with `skydm ingest --repo X FILE...`".
    """
    from skydm.repo import require_repository

    return require_repository(repository_path(value))


def new_or_existing_repository(value: Path | None) -> Path:
    """The directory of a repository that a creating command may make.

    Raises
    ------
    NoRepositoryError
        When the path is an existing file.
    BadValueError
        When the repository could not be created there (its parent is not a
        writable directory).
    """
    from skydm.repo.location import CONFIG_NAME

    path = repository_path(value)
    if path.exists() and not path.is_dir():
        raise NoRepositoryError(path, "it is a file, not a directory", is_file=True)
    if (path / CONFIG_NAME).is_file():
        return path
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise BadValueError("--repo", str(path), f"{probe} is a file; give a directory path")
    try:
        fd, name = tempfile.mkstemp(prefix=".skydm-probe-", dir=probe)
    except OSError as exc:
        raise BadValueError(
            "--repo",
            str(path),
            f"cannot create a repository under {probe} ({exc.strerror}); "
            "choose a directory you can write to",
        ) from exc
    os.close(fd)
    os.unlink(name)
    return path
