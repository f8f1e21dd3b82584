"""Real/bogus classification of DIA sources: the ``reliability`` of alerts.

:func:`score_sources` adds ``reliability`` (the probability that a DIA source
is a real change of the sky, in [0, 1]) and ``reliability_version`` to a DIA
source table, with the model shipped in ``model.json``; the alert producer
calls it for every visit.  :mod:`skydm.reliability.sample` makes labelled
training sets from simulated surveys, :mod:`skydm.reliability.training` fits
and measures models (scikit-learn, the ``reliability`` extra), and
``scripts/train_reliability.py`` rebuilds the shipped model.
"""

from skydm.reliability.features import FEATURE_NAMES, compute_features
from skydm.reliability.model import ReliabilityModel, packaged_model, score_sources

__all__ = [
    "FEATURE_NAMES",
    "ReliabilityModel",
    "compute_features",
    "packaged_model",
    "score_sources",
]
