"""One typed settings object: defaults that run with no set-up, overridden by
``SKYDM_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(f"SKYDM_{name.upper()}", default)


@dataclass(frozen=True)
class Settings:
    """skydm settings.

    Attributes
    ----------
    repo : Path
        Default data repository directory (``SKYDM_REPO``).
    registry_url : str or None
        SQLAlchemy URL of the registry; ``None`` means an SQLite file inside
        the repository (``SKYDM_REGISTRY_URL``).
    kafka_bootstrap : str or None
        Kafka bootstrap servers for alert streaming (``SKYDM_KAFKA_BOOTSTRAP``).
    apdb_url : str or None
        SQLAlchemy URL of the alert production database (``SKYDM_APDB_URL``).
    catalog_engine : str
        ``duckdb`` (default) or a PostgreSQL URL (``SKYDM_CATALOG_ENGINE``).
    """

    repo: Path = field(default_factory=lambda: Path("skydm-repo"))
    registry_url: str | None = None
    kafka_bootstrap: str | None = None
    apdb_url: str | None = None
    catalog_engine: str = "duckdb"

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from ``SKYDM_*`` environment variables."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = _env(f.name, None)
            if raw is None:
                continue
            values[f.name] = Path(raw) if f.name == "repo" else raw
        return cls(**values)  # type: ignore[arg-type]
