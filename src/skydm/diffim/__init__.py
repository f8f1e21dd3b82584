"""Image differencing and DIA source detection.

Alard–Lupton PSF matching with decorrelation (DMTN-061, DMTN-021) and ZOGY
(Zackay, Ofek & Gal-Yam 2016), template resampling onto the science WCS, and
detection/measurement of positive and negative DIA sources.  See
``docs/diffim.md``.
"""

from skydm.diffim._al import AlConfig
from skydm.diffim._al_core import KernelSolution
from skydm.diffim._config import DetectionConfig, DiffimConfig, NoiseConfig, ZogyConfig
from skydm.diffim._noise import NoiseCovariance, measure_covariance
from skydm.diffim.subtract import DiffimResult, NoiseModel, detect_dia_sources, subtract

__all__ = [
    "AlConfig",
    "DetectionConfig",
    "DiffimConfig",
    "DiffimResult",
    "KernelSolution",
    "NoiseConfig",
    "NoiseCovariance",
    "NoiseModel",
    "ZogyConfig",
    "detect_dia_sources",
    "measure_covariance",
    "subtract",
]
