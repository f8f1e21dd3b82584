"""Settings of the authentication gate, from ``SKYDM_AUTH_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass

from skydm.errors import BadValueError

#: ``skydm serve --auth`` choices that exist so far.
AUTH_MODES = ("none", "tokens", "oidc")


@dataclass(frozen=True)
class AuthConfig:
    """How tokens are checked and how much each user may ask.

    Attributes
    ----------
    mode : str
        ``none`` (no checks; loopback only), ``tokens``, or ``oidc`` (tokens,
        and browser login through an OpenID Connect provider).
    cache_seconds : float
        How long a verified token is trusted without a database look-up.
        Revocation takes effect within this time; it must stay under 1 s.
    rate_limit : int
        Requests a user may make per ``rate_window`` seconds (0: unlimited).
    rate_window : float
        Length of the rate-limit window in seconds.
    max_user_jobs : int
        Async TAP jobs a user may have QUEUED or EXECUTING at once.
    max_user_result_bytes : int
        Bytes of results a user's retained TAP jobs may hold; past it, no new
        job runs until some are deleted (or reach their destruction time).
    """

    mode: str = "none"
    cache_seconds: float = 0.5
    rate_limit: int = 6000
    rate_window: float = 60.0
    max_user_jobs: int = 4
    max_user_result_bytes: int = 10 * 2**30

    def __post_init__(self) -> None:
        if self.mode not in AUTH_MODES:
            raise BadValueError("--auth", self.mode, f"choose one of {', '.join(AUTH_MODES)}")
        if not 0 <= self.cache_seconds < 1:
            raise BadValueError(
                "SKYDM_AUTH_CACHE_SECONDS",
                self.cache_seconds,
                "from 0 to under 1 (revocation must take effect within 1 s)",
            )
        if self.rate_limit < 0:
            raise BadValueError("SKYDM_AUTH_RATE_LIMIT", self.rate_limit, "0 (off) or more")
        if self.rate_window <= 0:
            raise BadValueError("SKYDM_AUTH_RATE_WINDOW", self.rate_window, "a positive time")
        if self.max_user_jobs < 1:
            raise BadValueError("SKYDM_AUTH_MAX_USER_JOBS", self.max_user_jobs, "at least 1")
        if self.max_user_result_bytes < 1:
            raise BadValueError(
                "SKYDM_AUTH_MAX_USER_RESULT_BYTES", self.max_user_result_bytes, "at least 1"
            )

    @classmethod
    def from_env(cls, mode: str = "none") -> AuthConfig:
        """Settings for ``mode`` with ``SKYDM_AUTH_*`` variables applied."""

        def number(name: str, default: float, kind: type = float) -> float:
            value = os.environ.get(name)
            if value is None or value == "":
                return default
            try:
                return kind(value)  # type: ignore[no-any-return]
            except ValueError:
                raise BadValueError(name, value, f"give a {kind.__name__}") from None

        return cls(
            mode=mode,
            cache_seconds=number("SKYDM_AUTH_CACHE_SECONDS", cls.cache_seconds),
            rate_limit=int(number("SKYDM_AUTH_RATE_LIMIT", cls.rate_limit, int)),
            rate_window=number("SKYDM_AUTH_RATE_WINDOW", cls.rate_window),
            max_user_jobs=int(number("SKYDM_AUTH_MAX_USER_JOBS", cls.max_user_jobs, int)),
            max_user_result_bytes=int(
                number("SKYDM_AUTH_MAX_USER_RESULT_BYTES", cls.max_user_result_bytes, int)
            ),
        )
