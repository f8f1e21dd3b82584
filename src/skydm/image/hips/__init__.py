"""HiPS 1.0 trees of a repository's coadds (``skydm hips``), served at ``/hips/<name>/``.

One tree per band (FITS tiles and grey PNG tiles), named after the band,
and, when the coadds have three bands or more, a ``color`` tree of PNG and
JPEG tiles (Lupton asinh stretch, reddest band red).  Every tree has the same
deepest order, chosen from the finest coadd pixel scale.
"""

from skydm.image.hips.build import HipsResult, build_repository_hips
from skydm.image.hips.tree import BuildReport, HipsSpec, build_tree, read_properties

__all__ = [
    "BuildReport",
    "HipsResult",
    "HipsSpec",
    "build_repository_hips",
    "build_tree",
    "read_properties",
]
