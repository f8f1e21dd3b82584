"""Settings of the image services (``SKYDM_IMAGES_*`` environment variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from skydm.errors import BadValueError


@dataclass(frozen=True)
class ImagesConfig:
    """Settings of the image services.

    Parameters
    ----------
    repo_dir : Path
        The repository whose images are served.
    public_url : str
        The services' root URL as clients reach it (``access_url`` of
        ``ivoa.ObsCore`` and the links of DataLink documents point under it).
    default_maxrec, max_maxrec : int
        SIA rows returned without / at most with ``MAXREC``.
    max_cutouts : int
        Cutouts one SODA request or one stamps request may ask for.
    async_workers : int
        SODA async jobs run at once (threads).
    job_retention : int
        Seconds an async job and its result are kept.
    sync_obscore : bool
        Publish the repository's images as ``ivoa.ObsCore`` on start-up.
    """

    repo_dir: Path
    public_url: str = "http://127.0.0.1:8000"
    default_maxrec: int = 1000
    max_maxrec: int = 100000
    max_cutouts: int = 2000
    async_workers: int = 2
    job_retention: int = 86400
    sync_obscore: bool = True

    def __post_init__(self) -> None:
        for name in ("default_maxrec", "max_maxrec", "max_cutouts", "async_workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BadValueError(f"SKYDM_IMAGES_{name.upper()}", value, "a whole number >= 1")
        if not self.public_url.startswith(("http://", "https://")):
            raise BadValueError("SKYDM_PUBLIC_URL", self.public_url, "an http:// or https:// URL")

    @classmethod
    def from_env(cls, repo_dir: Path | str, *, public_url: str | None = None) -> ImagesConfig:
        """Settings from ``SKYDM_PUBLIC_URL`` and ``SKYDM_IMAGES_*`` (defaults otherwise)."""
        values: dict[str, object] = {}
        url = os.environ.get("SKYDM_PUBLIC_URL") or public_url
        if url:
            values["public_url"] = url.rstrip("/")
        for name in ("default_maxrec", "max_maxrec", "max_cutouts", "async_workers"):
            raw = os.environ.get(f"SKYDM_IMAGES_{name.upper()}")
            if raw is not None:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise BadValueError(
                        f"SKYDM_IMAGES_{name.upper()}", raw, "a whole number >= 1"
                    ) from None
        return cls(Path(repo_dir), **values)  # type: ignore[arg-type]
