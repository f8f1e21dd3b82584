"""UWS 1.1 jobs: the model, durable storage and the worker-process runner."""

from skydm.services.tap.uws.models import Job, Phase

__all__ = ["Job", "Phase"]
