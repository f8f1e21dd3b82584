"""Prompt processing: each visit processed as it arrives, detectors in parallel.

See ``docs/prompt.md``.  :class:`PromptService` consumes next-visit events
and raw-arrival notifications (:mod:`skydm.prompt.events`) and runs each
detector (:func:`skydm.prompt.worker.process_detector`) in a worker process
or on Dask; :mod:`skydm.prompt.timing` records every stage's timestamp;
:func:`simulate_night` drives it with a simulated night.
"""

from skydm.prompt.config import PromptConfig
from skydm.prompt.events import NextVisit, RawArrival, parse_event
from skydm.prompt.service import PromptService
from skydm.prompt.simulate import NightConfig, simulate_night
from skydm.prompt.status import prompt_status

__all__ = [
    "NextVisit",
    "NightConfig",
    "PromptConfig",
    "PromptService",
    "RawArrival",
    "parse_event",
    "prompt_status",
    "simulate_night",
]
