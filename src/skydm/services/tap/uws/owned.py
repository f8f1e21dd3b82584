"""One user's view of the UWS jobs: other users' jobs do not exist in it.

With auth on, each job records its owner (the token's user) and every job
operation goes through :class:`UserJobs`: a job of another user is answered
exactly like a missing one (404, ``JobNotFoundError``), so that its
existence is not revealed.  Without auth (``user=None``) every job is
visible, as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from skydm.errors import UserError
from skydm.services.tap.errors import JobNotFoundError
from skydm.services.tap.params import Params
from skydm.services.tap.uws.models import Job, Phase

if TYPE_CHECKING:
    from skydm.services.tap.config import TapConfig
    from skydm.services.tap.service import TapService


class JobQuotaError(UserError):
    """The user already has as many active async jobs as the quota allows."""

    status_code = 429


class UserJobs:
    """The async jobs of ``user`` in ``tap`` (every job when ``user`` is ``None``).

    Parameters
    ----------
    tap : TapService
        The service.
    user : str or None
        Whose jobs; ``None`` without auth.
    max_active : int or None
        Jobs the user may have QUEUED or EXECUTING at once (``None``: no quota).
    max_result_bytes : int or None
        Bytes of results the user's retained jobs may hold before no new job
        runs (``None``: no quota).
    """

    def __init__(
        self,
        tap: TapService,
        user: str | None,
        max_active: int | None = None,
        max_result_bytes: int | None = None,
    ) -> None:
        self.tap = tap
        self.user = user
        self.max_active = max_active
        self.max_result_bytes = max_result_bytes

    @property
    def config(self) -> TapConfig:
        """The TAP service's settings."""
        return self.tap.config

    def _own(self, job_id: str) -> Job:
        job = self.tap.get_job(job_id)
        if self.user is not None and job.owner != self.user:
            raise JobNotFoundError(job_id)
        return job

    def _check_quota(self, params: Params) -> None:
        runs = [v for v in params.get("PHASE", []) if v.strip().upper() == "RUN"]
        if self.user is None or not runs:
            return
        jobs = self.tap.store.find(owner=self.user)
        active = sum(1 for j in jobs if j.phase in (Phase.QUEUED, Phase.EXECUTING))
        if self.max_active is not None and active >= self.max_active:
            raise JobQuotaError(
                f"user {self.user} already has {active} async jobs queued or executing "
                f"(the quota is {self.max_active}): wait for one to finish or abort it"
            )
        held = sum(j.result_size or 0 for j in jobs)
        if self.max_result_bytes is not None and held >= self.max_result_bytes:
            raise JobQuotaError(
                f"user {self.user}'s job results hold {held} bytes (the quota is "
                f"{self.max_result_bytes}): delete jobs whose results you have fetched"
            )

    def create_job(self, params: Params, *, files: Mapping[str, bytes] | None = None) -> Job:
        """Create a job owned by the user (see :meth:`TapService.create_job`)."""
        self._check_quota(params)
        return self.tap.create_job(params, files=files, owner=self.user)

    def get_job(self, job_id: str) -> Job:
        """The user's job ``job_id`` (``JobNotFoundError`` for anyone else's)."""
        return self._own(job_id)

    def list_jobs(self, params: Params) -> list[Job]:
        """The user's jobs, filtered as UWS 1.1 allows."""
        return self.tap.list_jobs(params, owner=self.user)

    def set_phase(self, job_id: str, value: str) -> Job:
        """``PHASE=RUN`` or ``PHASE=ABORT`` on the user's job."""
        self._own(job_id)
        self._check_quota({"PHASE": [value]})
        return self.tap.set_phase(job_id, value)

    def set_execution_duration(self, job_id: str, value: str) -> Job:
        """Change the execution duration of the user's job."""
        self._own(job_id)
        return self.tap.set_execution_duration(job_id, value)

    def set_destruction(self, job_id: str, value: str) -> Job:
        """Change the destruction time of the user's job."""
        self._own(job_id)
        return self.tap.set_destruction(job_id, value)

    def update_parameters(self, job_id: str, params: Params) -> Job:
        """Change the parameters of the user's PENDING job."""
        self._own(job_id)
        return self.tap.update_parameters(job_id, params)

    def delete_job(self, job_id: str) -> None:
        """Abort and remove the user's job."""
        self._own(job_id)
        self.tap.delete_job(job_id)

    def result_file(self, job_id: str) -> tuple[Path, str]:
        """The result file of the user's COMPLETED job."""
        self._own(job_id)
        return self.tap.result_file(job_id)
