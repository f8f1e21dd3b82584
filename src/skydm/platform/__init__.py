"""The science platform around the services (``skydm platform``).

:mod:`skydm.platform.check` is Mobu in miniature: a synthetic user that
authenticates with a token, queries TAP, finds an image through SIA and
cuts it out through SODA, timing each step. :mod:`skydm.platform.local`
starts and stops the services with token auth on this machine.
"""

from skydm.platform.check import CheckConfig, CheckReport, StepResult, run_check

__all__ = ["CheckConfig", "CheckReport", "StepResult", "run_check"]
