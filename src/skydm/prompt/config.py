"""The prompt-processing service's tunables, in one validated config.

Defaults run with no set-up.  A repository may hold ``prompt/config.json``
(``skydm prompt simulate`` writes the sky grid of the templates it made
there); command-line options override it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from skydm.errors import BadFileError, BadValueError
from skydm.repo.atomic import atomic_write_bytes

#: Where a repository keeps its prompt-processing config, relative to its root.
CONFIG_NAME = "prompt/config.json"


@dataclass(frozen=True)
class PromptConfig:
    """What the service listens to, how it waits and how it runs detectors.

    Attributes
    ----------
    next_visit_topic, raw_topic : str
        Kafka topics of the next-visit events and of the raw-arrival
        notifications (``skydm ingest --notify``).
    raw_timeout_s : float or None
        Seconds after a visit's expected start that a detector waits for its
        raw before it is recorded as timed out; ``None`` for Rubin's rule,
        twice the exposure time plus 20 s.
    workers : int
        Worker processes (or Dask tasks at once).
    worker_threads : int
        Threads each worker process may give its pixel work (BLAS and
        OpenMP pools; FFTs take ``SKYDM_FFT_WORKERS``).  One by default: the
        workers are the parallelism, one detector a core, and a library
        that starts a thread per core in every worker (OpenBLAS does)
        oversubscribes the cores once the workers are busy, and makes a
        lone detector faster than its share of a busy machine.
    max_attempts : int
        Tries of a detector whose worker died or failed.
    lock_cell_deg : float
        Size of the sky cells that association locks: two detectors whose
        footprints (plus the association margin) share a cell associate one
        after the other.
    apdb : str
        SQLAlchemy URL of the APDB; empty for ``apdb.sqlite3`` in the repository.
    radius_arcsec : float
        Association radius.
    poll_s : float
        How often a worker looks for its raw, and the service for events.
    session_timeout_s : float
        Kafka consumer-group session timeout of the service's event
        consumer: how long the broker waits for its heartbeats before it
        drops it from the group.  Kept at Kafka's former default (10 s), not
        librdkafka's 45 s: a broker may hold a joining member's first
        JoinGroup for up to half of it (tansu does), which is how long a
        service waits for its first event after starting.
    template_min_coverage : float
        Least fraction of a detector that its template (the coadd of the
        sky cell covering it best) must cover; a detector with less fails
        with the cells searched named.
    preload_radius_deg : float
        Half-size of the square around a detector's expected centre whose
        sky cells' templates are read on the next-visit event (the event
        gives the centre only).
    template_cache : int
        Templates a worker process keeps in memory between detectors.
    keep_diff_template : bool
        Also write each detector's ``diff_template`` (the template on the
        calexp's grid, uncompressed: 200 MB at 4096²) to the repository.
        Only ``ap`` reads it, and the service hands it over in memory; keep
        it for a later ``skydm run ap`` to see the detector's ``diffim`` as
        done.
    defer_export : bool
        Let a worker whose detector's alerts are out process its next
        queued detector before it writes the first one's outputs to the
        repository (the export), holding them in memory meanwhile, so that
        the next detector's latency does not hold that export.  Only with
        the service's own worker processes (a Dask task exports at once).
    defer_export_max : int
        Most detectors whose outputs one worker holds un-exported: a worker
        holding this many exports them before it processes another (each
        holds a detector's calexp and difference: about 0.3 GB at 4096²).
    pipeline : tuple of str
        ``KEY=VALUE`` / ``TASK.KEY=VALUE`` overrides of the ``ap`` pipeline's
        task configs (the sky grid of the templates, the diffim method...).
    """

    next_visit_topic: str = "skydm-next-visit"
    raw_topic: str = "skydm-raw-arrivals"
    raw_timeout_s: float | None = None
    workers: int = 2
    worker_threads: int = 1
    max_attempts: int = 3
    lock_cell_deg: float = 0.5
    apdb: str = ""
    radius_arcsec: float = 1.0
    poll_s: float = 0.2
    session_timeout_s: float = 10.0
    template_min_coverage: float = 0.5
    preload_radius_deg: float = 0.2
    template_cache: int = 4
    keep_diff_template: bool = False
    defer_export: bool = True
    defer_export_max: int = 2
    pipeline: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "pipeline", tuple(self.pipeline))
        self.validate()

    def validate(self) -> None:
        """Check every value.

        Raises
        ------
        BadValueError
            Naming the field, the bad value and what is allowed.
        """
        for name in ("next_visit_topic", "raw_topic"):
            value = getattr(self, name)
            if not value or any(c.isspace() for c in value):
                raise BadValueError(name, value, "a Kafka topic name without spaces")
        t = self.raw_timeout_s
        if t is not None and not (math.isfinite(t) and 0 < t <= 86400):
            raise BadValueError("raw_timeout_s", t, "0 to 86400 seconds (or none for 2*exptime+20)")
        if not 1 <= self.workers <= 1024:
            raise BadValueError("workers", self.workers, "1 to 1024")
        if not 1 <= self.worker_threads <= 256:
            raise BadValueError("worker_threads", self.worker_threads, "1 to 256 threads")
        if not 1 <= self.max_attempts <= 20:
            raise BadValueError("max_attempts", self.max_attempts, "1 to 20")
        if not 0.01 <= self.lock_cell_deg <= 30:
            raise BadValueError("lock_cell_deg", self.lock_cell_deg, "0.01 to 30 degrees")
        if not 0.01 <= self.radius_arcsec <= 60:
            raise BadValueError("radius_arcsec", self.radius_arcsec, "0.01 to 60 arcsec")
        if not 0.01 <= self.poll_s <= 10:
            raise BadValueError("poll_s", self.poll_s, "0.01 to 10 seconds")
        if not 6 <= self.session_timeout_s <= 1800:
            # Kafka brokers refuse a session timeout outside 6 s to 30 min by default.
            raise BadValueError("session_timeout_s", self.session_timeout_s, "6 to 1800 seconds")
        if not 0.01 <= self.template_min_coverage <= 1:
            raise BadValueError("template_min_coverage", self.template_min_coverage, "0.01 to 1")
        if not 0 <= self.preload_radius_deg <= 5:
            raise BadValueError("preload_radius_deg", self.preload_radius_deg, "0 to 5 degrees")
        if not 1 <= self.template_cache <= 64:
            raise BadValueError("template_cache", self.template_cache, "1 to 64 templates")
        if not isinstance(self.keep_diff_template, bool):
            raise BadValueError("keep_diff_template", self.keep_diff_template, "true or false")
        if not isinstance(self.defer_export, bool):
            raise BadValueError("defer_export", self.defer_export, "true or false")
        if not 1 <= self.defer_export_max <= 16:
            raise BadValueError("defer_export_max", self.defer_export_max, "1 to 16 detectors")
        for item in self.pipeline:
            if "=" not in item:
                raise BadValueError("pipeline", item, "KEY=VALUE or TASK.KEY=VALUE")

    def timeout_for(self, exptime: float) -> float:
        """Seconds a detector waits for its raw after the visit's expected start."""
        if self.raw_timeout_s is not None:
            return float(self.raw_timeout_s)
        return 2.0 * float(exptime) + 20.0

    def updated(self, **changes: Any) -> PromptConfig:
        """A copy with the given fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        out = asdict(self)
        out["pipeline"] = list(self.pipeline)
        return out


def load_config(root: Path) -> PromptConfig:
    """The repository's ``prompt/config.json``, or the defaults.

    Raises
    ------
    BadFileError
        When the file is not a JSON object of known fields.
    """
    path = Path(root) / CONFIG_NAME
    if not path.exists():
        return PromptConfig()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadFileError(path, f"not readable JSON ({exc}); fix or delete it") from exc
    known = {f.name for f in fields(PromptConfig)}
    if not isinstance(data, dict) or set(data) - known:
        extra = sorted(set(data) - known) if isinstance(data, dict) else data
        raise BadFileError(path, f"unknown prompt config fields {extra}; allowed: {sorted(known)}")
    try:
        return PromptConfig(**data)
    except BadValueError as exc:
        raise BadFileError(path, str(exc)) from exc


def save_config(root: Path, config: PromptConfig) -> Path:
    """Write ``prompt/config.json`` atomically; returns its path."""
    path = Path(root) / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(config.to_dict(), indent=1).encode())
    return path
