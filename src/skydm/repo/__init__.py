"""The data repository: a registry of datasets and a checksummed file datastore.

>>> from skydm.repo import Repository, DataId
>>> repo = Repository.open("skydm-repo")                      # doctest: +SKIP
>>> ref = repo.put_exposure(exp, "calexp", DataId("skysim", 0, 12, "r"))  # doctest: +SKIP
>>> exp = repo.get_exposure("calexp", DataId("skysim", 0, 12, "r"))      # doctest: +SKIP

See ``docs/archive.md`` for the layout, the atomic-write protocol and the
registry backends.
"""

from skydm.repo.dataid import DataId, DatasetNotFoundError, DatasetRef, Problem
from skydm.repo.datastore import FileDatastore, relpath_for
from skydm.repo.location import require_repository
from skydm.repo.registry import Registry, SqlRegistry
from skydm.repo.repository import Repository

__all__ = [
    "DataId",
    "DatasetNotFoundError",
    "DatasetRef",
    "FileDatastore",
    "Problem",
    "Registry",
    "Repository",
    "SqlRegistry",
    "relpath_for",
    "require_repository",
]
