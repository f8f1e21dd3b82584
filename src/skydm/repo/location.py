"""Where a repository lives: finding an existing one, creating its directory,
and the checked settings of its configuration file (apart from
:mod:`skydm.repo.repository` so that commands that only need to find a
repository do not import the registry and datastores).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from skydm.errors import BadFileError, NoRepositoryError, UserError

#: The repository's configuration file, at its root.
CONFIG_NAME = "skydm-repo.json"

__all__ = [
    "CONFIG_NAME",
    "create_directory",
    "recorded_mode",
    "require_repository",
    "why_not_a_repository",
]


def require_repository(path: str | Path) -> Path:
    """The resolved directory of the repository at ``path``, which must exist.

    For commands that read a repository's parts without opening its
    registry (the catalog, the TAP service): a mistyped ``--repo`` must not
    quietly become an empty repository.

    Raises
    ------
    NoRepositoryError
        When ``path`` holds no skydm repository.
    """
    root = Path(path).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise NoRepositoryError(path, "it is a file, not a directory", is_file=True)
    if not (root / CONFIG_NAME).is_file():
        raise NoRepositoryError(path, why_not_a_repository(root))
    return root


def why_not_a_repository(root: Path) -> str:
    """Why ``root`` holds no repository, for the one-line error."""
    if not root.exists():
        return "it does not exist"
    return f"{CONFIG_NAME} is missing"


def create_directory(root: Path, given: str | Path) -> None:
    """Create a new repository's directory, or say why it cannot be."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        # One probe per process: ingests started together into a new
        # repository must not unlink each other's probe.
        # A read-only place fails here, not halfway through a write.
        fd, probe = tempfile.mkstemp(prefix=f".{CONFIG_NAME}.", suffix=".probe", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(
            f"cannot create a skydm repository at {given}: {exc.strerror or exc}; "
            "give --repo a directory you can write to"
        ) from exc


def recorded_mode(config: Mapping[str, Any], config_path: Path) -> int | None:
    """The ``file_mode`` setting of a repository config, checked."""
    text = config.get("file_mode")
    if text is None:
        return None
    try:
        mode = int(str(text), 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise BadFileError(
            config_path, f'file_mode {text!r} is not octal permission bits like "0640"; fix it'
        )
    return mode
