"""Data Release Production: the Object catalog from deep coadds.

``measure_objects({"g": coadd_g, "r": coadd_r})`` detects objects on every
band's coadd of one sky cell together and measures forced PSF fluxes in each
band; ``assign_object_ids(table, cell.id)`` makes the ids unique across cells;
``skydm.catalog.load_table(catalog_dir, "Object", table)`` serves it over TAP.
See ``docs/drp.md``.
"""

from skydm.drp.config import DETECTION_IMAGES, ObjectConfig, ObjectFlag
from skydm.drp.ids import assign_object_ids, object_ids, skycell_index, split_object_id
from skydm.drp.objects import measure_objects

__all__ = [
    "DETECTION_IMAGES",
    "ObjectConfig",
    "ObjectFlag",
    "assign_object_ids",
    "measure_objects",
    "object_ids",
    "skycell_index",
    "split_object_id",
]
