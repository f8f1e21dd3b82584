"""skydm: survey data management for optical sky surveys.

The package is laid out as the data flow: ``image`` (the shared Exposure
model), ``archive`` and ``repo`` (raw ingest and storage), ``sim`` (survey
simulator), ``diffim``, ``coadd``, ``ap`` and ``alerts`` (alert production
and distribution), ``catalog`` and ``services`` (TAP), and ``cli``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("skydm")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["__version__"]
