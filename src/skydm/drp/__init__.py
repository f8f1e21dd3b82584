"""Data Release Production: the Object catalog from deep coadds.

``measure_objects({"g": coadd_g, "r": coadd_r})`` detects objects on every
band's coadd of one sky cell together and measures forced PSF fluxes in each
band; ``assign_object_ids(table, cell.id)`` makes the ids unique across cells;
``load_objects(catalog_dir, table)`` loads it into the catalog served over TAP.
See ``docs/drp.md``.
"""

from skydm.drp.catalog import load_objects
from skydm.drp.config import DEBLENDERS, DETECTION_IMAGES, ObjectConfig, ObjectFlag
from skydm.drp.ids import assign_object_ids, object_ids, skycell_index, split_object_id
from skydm.drp.objects import measure_objects

__all__ = [
    "DEBLENDERS",
    "DETECTION_IMAGES",
    "ObjectConfig",
    "ObjectFlag",
    "assign_object_ids",
    "load_objects",
    "measure_objects",
    "object_ids",
    "skycell_index",
    "split_object_id",
]
