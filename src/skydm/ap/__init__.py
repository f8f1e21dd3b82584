"""Alert production: the APDB, association of DIA sources into DIA objects, forced photometry."""

from skydm.ap.apdb import Apdb
from skydm.ap.association import associate, make_id
from skydm.ap.forced import forced_photometry, psf_fluxes
from skydm.ap.sources import dia_sources_from_table

__all__ = [
    "Apdb",
    "associate",
    "dia_sources_from_table",
    "forced_photometry",
    "make_id",
    "psf_fluxes",
]
