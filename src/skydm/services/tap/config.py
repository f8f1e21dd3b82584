"""Settings of the TAP service: one typed object, defaults that run with no set-up."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TapConfig:
    """Settings of one TAP service.

    Attributes
    ----------
    repo_dir : Path
        The skydm repository; the catalog is read from ``<repo>/catalog`` and
        job state lives in ``<repo>/tap/``.
    engine_url : str or None
        Catalog engine URL (``None``: DuckDB over the repository's catalog files;
        a PostgreSQL URL selects that engine).
    workers : int
        Number of async jobs executed at once, each in its own process.
    default_maxrec : int
        Rows returned when the client gives no ``MAXREC``.
    max_maxrec : int or None
        Hard limit on ``MAXREC``; ``None`` means no hard limit (async results
        are streamed to files and back without a size cap).
    max_query_bytes : int
        Longest ``QUERY`` accepted; longer ones are refused before parsing.
    max_nesting : int
        Deepest parenthesis nesting accepted in ``QUERY``, checked before parsing
        so that a hostile query cannot exhaust the parser's stack.
    default_execution_duration, max_execution_duration : int
        Seconds an async job may run (``EXECUTIONDURATION``); 0 never allowed.
    default_retention, max_retention : int
        Seconds from creation until a job is destroyed (``DESTRUCTION``).
    max_sync_duration : int
        Seconds after which a sync query is interrupted (use async jobs for more).
    max_wait : int
        Longest blocking ``WAIT`` on a job, in seconds.
    sweep_interval : float
        Seconds between sweeps for jobs past their destruction time.
    engine_opener : str
        ``module:function`` that opens the catalog engine, called as
        ``opener(catalog_dir, engine_url)``.
    max_upload_bytes, max_upload_rows : int
        Largest table accepted in ``UPLOAD`` (VOTable bytes, rows).
    sync_concurrency : int
        Sync queries computing at once (the others wait their turn); default:
        the number of cores, at most 4.  More threads than cores only fight
        over the GIL: on 2 cores, 4 threads cost a cone search ~25% more CPU
        than 2 did.
    job_nice : int
        Niceness added to async job processes, so that a long scan yields the
        CPU to sync queries and the web process.
    job_threads : int or None
        Engine threads of an async job (``SKYDM_CATALOG_THREADS`` in its
        process); None: the engine's default.
    upload_private_urls : bool
        Allow ``UPLOAD`` URLs of loopback/private hosts (off: a client could
        otherwise make the service fetch internal addresses).
    sync_visits : bool
        Publish the repository's raws as ``ivoa.obsplan`` (ObsLocTAP) when
        the service starts.
    """

    repo_dir: Path
    engine_url: str | None = None
    workers: int = 2
    default_maxrec: int = 100_000
    max_maxrec: int | None = None
    max_query_bytes: int = 100_000
    max_nesting: int = 64
    default_execution_duration: int = 600
    max_execution_duration: int = 3600 * 4
    default_retention: int = 7 * 86400
    max_retention: int = 30 * 86400
    max_sync_duration: int = 600
    max_wait: int = 25
    sweep_interval: float = 5.0
    engine_opener: str = "skydm.catalog:open_engine"
    max_upload_bytes: int = 16 * 1024 * 1024
    max_upload_rows: int = 1_000_000
    sync_concurrency: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    job_nice: int = 10
    job_threads: int | None = None
    upload_private_urls: bool = False
    sync_visits: bool = True

    @property
    def catalog_dir(self) -> Path:
        """Directory of the catalog tables (``<repo>/catalog``)."""
        return self.repo_dir / "catalog"

    @property
    def jobs_dir(self) -> Path:
        """Directory of the durable job store (``<repo>/tap/jobs``)."""
        return self.repo_dir / "tap" / "jobs"

    @property
    def results_dir(self) -> Path:
        """Directory of async job results (``<repo>/tap/results``)."""
        return self.repo_dir / "tap" / "results"

    @property
    def uploads_dir(self) -> Path:
        """Directory of tables uploaded with async jobs (``<repo>/tap/uploads``)."""
        return self.repo_dir / "tap" / "uploads"

    @classmethod
    def from_env(cls, repo_dir: Path | str, **overrides: object) -> TapConfig:
        """Settings for ``repo_dir`` with ``SKYDM_TAP_*`` environment overrides.

        Numeric settings may be set as ``SKYDM_TAP_<NAME>`` (for example
        ``SKYDM_TAP_DEFAULT_MAXREC``); explicit ``overrides`` win over both.
        """
        values: dict[str, object] = {}
        for name in (
            "workers",
            "default_maxrec",
            "max_query_bytes",
            "max_nesting",
            "default_execution_duration",
            "max_execution_duration",
            "default_retention",
            "max_retention",
            "max_wait",
            "max_sync_duration",
            "max_upload_bytes",
            "max_upload_rows",
            "job_nice",
            "sync_concurrency",
            "job_threads",
        ):
            raw = os.environ.get(f"SKYDM_TAP_{name.upper()}")
            if raw is not None:
                values[name] = int(raw)
        raw = os.environ.get("SKYDM_TAP_UPLOAD_PRIVATE_URLS")
        if raw is not None:
            values["upload_private_urls"] = raw.strip().lower() in ("1", "true", "yes")
        raw = os.environ.get("SKYDM_TAP_SWEEP_INTERVAL")
        if raw is not None:
            values["sweep_interval"] = float(raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(repo_dir=Path(repo_dir), **values)  # type: ignore[arg-type]
