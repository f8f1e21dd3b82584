"""Errors of the TAP service, each carrying the HTTP status it is answered with."""

from __future__ import annotations

from skydm.errors import BadValueError, ConflictError, UserError


class TapParameterError(BadValueError):
    """A request parameter (``LANG``, ``MAXREC``, ``RESPONSEFORMAT``...) is bad."""

    status_code = 400


class QueryTooLargeError(UserError):
    """``QUERY`` is longer than the service accepts; refused before parsing."""

    status_code = 400

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"QUERY is {size} bytes long; this service accepts at most {limit} bytes: "
            "shorten the query (upload large lists of values as a table instead)"
        )


class QueryTooDeepError(UserError):
    """``QUERY`` nests parentheses deeper than the service accepts."""

    status_code = 400

    def __init__(self, depth: int, limit: int, offset: int) -> None:
        super().__init__(
            f"QUERY nests parentheses {depth} deep (at character {offset}); "
            f"this service accepts at most {limit}: simplify the expression"
        )


class JobNotFoundError(UserError):
    """No job with this identifier exists (never did, or was destroyed)."""

    status_code = 404

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            f"job {job_id!r} does not exist (it may have passed its destruction time); "
            "list the jobs at /tap/async"
        )


class JobPhaseError(ConflictError):
    """The request is not allowed in the job's current phase."""

    status_code = 409


class ResultNotFoundError(UserError):
    """The job has no such result (yet)."""

    status_code = 404


def status_of(exc: BaseException) -> int:
    """HTTP status to answer ``exc`` with: its own, 400 for other user errors, else 500."""
    code = getattr(exc, "status_code", None)
    if isinstance(code, int):
        return code
    return 400 if isinstance(exc, UserError) else 500
