"""The UWS 1.1 job model and its XML representation."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from xml.sax.saxutils import escape, quoteattr

UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"
_NAMESPACES = (
    f'xmlns:uws="{UWS_NS}" xmlns:xlink="http://www.w3.org/1999/xlink" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
)


class Phase(enum.StrEnum):
    """UWS execution phases used by this service."""

    PENDING = "PENDING"
    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"
    ABORTED = "ABORTED"

    @property
    def active(self) -> bool:
        """Whether the job may still change phase on its own or be run."""
        return self in (Phase.PENDING, Phase.QUEUED, Phase.EXECUTING)


#: All UWS 1.1 phase names, valid in a job-list ``PHASE`` filter.
UWS_PHASES = (
    "PENDING",
    "QUEUED",
    "EXECUTING",
    "COMPLETED",
    "ERROR",
    "ABORTED",
    "UNKNOWN",
    "HELD",
    "SUSPENDED",
    "ARCHIVED",
)


def iso(t: float | None) -> str | None:
    """An epoch time as ISO 8601 UTC with millisecond precision and ``Z``."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Job:
    """One async TAP job.

    Times are seconds since the epoch (UTC).  ``parameters`` holds the TAP
    parameters under lower-case names; the query itself is
    ``parameters["query"]``.
    """

    job_id: str
    phase: Phase
    parameters: dict[str, str]
    creation_time: float
    execution_duration: int
    destruction: float
    run_id: str | None = None
    owner: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    error_message: str | None = None
    result_file: str | None = None
    result_mime: str | None = None
    result_rows: int | None = None
    result_size: int | None = None
    overflow: bool = False
    runner_pid: int | None = None
    worker_pid: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def query(self) -> str:
        """The ADQL query text."""
        return self.parameters.get("query", "")


def _element(tag: str, value: str | None) -> str:
    if value is None:
        return f'<uws:{tag} xsi:nil="true"/>'
    return f"<uws:{tag}>{escape(value)}</uws:{tag}>"


def job_xml(job: Job, job_url: str) -> bytes:
    """The UWS 1.1 ``job`` document of ``job`` (``job_url``: the job's own URL)."""
    params = "".join(
        f"<uws:parameter id={quoteattr(k)}>{escape(v)}</uws:parameter>"
        for k, v in job.parameters.items()
    )
    results = ""
    if job.phase == Phase.COMPLETED and job.result_file is not None:
        size = f" size={quoteattr(str(job.result_size))}" if job.result_size is not None else ""
        mime = f" mime-type={quoteattr(job.result_mime)}" if job.result_mime else ""
        results = (
            f'<uws:result id="result" xlink:type="simple" '
            f"xlink:href={quoteattr(job_url + '/results/result')}{size}{mime}/>"
        )
    error = ""
    if job.phase == Phase.ERROR and job.error_message is not None:
        error = (
            '<uws:errorSummary type="fatal" hasDetail="true">'
            f"<uws:message>{escape(job.error_message)}</uws:message></uws:errorSummary>"
        )
    info = ""
    if job.result_rows is not None:
        info = (
            f"<uws:jobInfo><rows>{job.result_rows}</rows>"
            f"<overflow>{'true' if job.overflow else 'false'}</overflow></uws:jobInfo>"
        )
    body = "".join(
        [
            _element("jobId", job.job_id),
            _element("runId", job.run_id) if job.run_id is not None else "",
            _element("ownerId", job.owner),
            _element("phase", job.phase.value),
            _element("quote", None),
            _element("creationTime", iso(job.creation_time)),
            _element("startTime", iso(job.start_time)),
            _element("endTime", iso(job.end_time)),
            _element("executionDuration", str(job.execution_duration)),
            _element("destruction", iso(job.destruction)),
            f"<uws:parameters>{params}</uws:parameters>",
            f"<uws:results>{results}</uws:results>",
            error,
            info,
        ]
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<uws:job {_NAMESPACES} version="1.1">'
        f"{body}</uws:job>\n"
    ).encode()


def job_list_xml(jobs: list[Job], list_url: str) -> bytes:
    """The UWS 1.1 ``jobs`` document listing ``jobs`` (``list_url``: the job list's URL)."""
    refs = "".join(
        f'<uws:jobref id={quoteattr(job.job_id)} xlink:type="simple" '
        f"xlink:href={quoteattr(list_url + '/' + job.job_id)}>"
        f"{_element('phase', job.phase.value)}"
        f"{_element('runId', job.run_id) if job.run_id is not None else ''}"
        f"{_element('ownerId', job.owner)}"
        f"{_element('creationTime', iso(job.creation_time))}</uws:jobref>\n"
        for job in jobs
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<uws:jobs {_NAMESPACES} version="1.1">\n'
        f"{refs}</uws:jobs>\n"
    ).encode()
