"""The IVOA TAP 1.1 service: sync and async (UWS 1.1) ADQL queries over the catalog.

Layers: ``handlers/`` (HTTP, thin) → :class:`~skydm.services.tap.service.TapService`
(operations) → ``uws/`` (job model, durable store, worker-process runner) and
the catalog engine; ``formats``/``votable`` write results, ``vosi``/``examples``
describe the service.
"""

from skydm.services.tap.config import TapConfig
from skydm.services.tap.service import TapService

__all__ = ["TapConfig", "TapService"]
