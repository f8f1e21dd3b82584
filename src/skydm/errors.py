"""The project's exception hierarchy.

Every error a user can cause (a bad file, a bad value, a bad query) derives
from :class:`UserError`; faults of the system itself (a damaged repository, a
broker that is down) derive from :class:`SkydmError` directly.  Messages name
the file or parameter, the bad value, and what to do.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class SkydmError(Exception):
    """Root of every error raised on purpose by skydm.

    ``exit_status`` is what the ``skydm`` command exits with: 1 for a failure
    at run time, 2 for a usage error (as argparse does for a bad option).
    """

    exit_status = 1


class UserError(SkydmError):
    """An error caused by the caller's input: a file, a parameter or a query."""


class UsageError(UserError):
    """The command was called wrongly: an option's value, or a missing option."""

    exit_status = 2


class BadFileError(UserError):
    """A file cannot be read or does not hold what it must.

    Parameters
    ----------
    path : str
        The file at fault.
    problem : str
        What is wrong with it, and what to do.
    """

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class BadValueError(UsageError):
    """A parameter has a value that is not allowed.

    Library code names its own parameter (``n_visits``); the command line
    translates that into the option the user typed (``--visits``) with
    :meth:`for_option`, so that the message speaks the user's language.

    Parameters
    ----------
    name : str
        The parameter at fault (or the option, ``--visits``).
    value : object
        The value given.
    allowed : str
        What would have been accepted, and what to do.
    """

    def __init__(self, name: str, value: object, allowed: str) -> None:
        self.name = name
        self.value = value
        self.allowed = allowed
        if name.startswith("-") and value is None:
            text = f"{name} is required: {allowed}"
        elif name.startswith("-"):
            text = f"{name} {value!r} is not allowed: {allowed}"
        else:
            text = f"{name}={value!r} is not allowed: {allowed}"
        super().__init__(text)

    def for_option(self, option: str, value: object) -> BadValueError:
        """The same error, naming the command-line ``option`` and the ``value`` typed."""
        return BadValueError(option, value, self.allowed)


class NoRepositoryError(UsageError):
    """``--repo`` (or ``$SKYDM_REPO``) names no skydm repository.

    Parameters
    ----------
    path : str or pathlib.Path
        The path given.
    why : str
        What is there instead (``"it does not exist"``, ``"it is a file"``...).
    is_file : bool
        The path is an existing file (the advice is then not to create one there).
    """

    def __init__(self, path: object, why: str = "", *, is_file: bool = False) -> None:
        self.path = str(path)
        detail = f" ({why})" if why else ""
        advice = (
            "give --repo the repository's directory, or a new directory to create one in"
            if is_file
            else f"create one with `skydm ingest --repo {self.path} FILE...` "
            "or give the right --repo"
        )
        super().__init__(f"no skydm repository at {self.path}{detail}; {advice}")


class MissingMetadataError(UserError):
    """A stage needs something the input lacks (a WCS, a gain, a PSF...)."""

    def __init__(self, what: str, needed_by: str, source: object = None, hint: str = "") -> None:
        self.what = what
        where = f"{source}: " if source is not None else ""
        tail = f"; {hint}" if hint else ""
        super().__init__(f"{where}{needed_by} needs {what}, which the input does not have{tail}")


class ConflictError(UserError):
    """A write would overwrite something different that already exists."""


class DataCorruptionError(SkydmError):
    """A stored file does not match the checksum recorded when it was written."""

    def __init__(self, path: object, expected: str, actual: str) -> None:
        self.path = str(path)
        super().__init__(
            f"{self.path}: checksum mismatch (recorded {expected}, found {actual}); "
            "the file is damaged: restore it from a backup or re-ingest its source"
        )


class MissingExtraError(SkydmError, ImportError):
    """An optional dependency is not installed."""


def require_extra(module: str, extra: str) -> ModuleType:
    """Import ``module`` or say which extra to install.

    Parameters
    ----------
    module : str
        Dotted name of the module to import.
    extra : str
        Name of the skydm extra that provides it.

    Raises
    ------
    MissingExtraError
        When the module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{module} is needed for this; install it with `pip install skydm[{extra}]`"
        ) from exc
