"""Image access: SIAv2 discovery, DataLink, SODA cutouts (sync and UWS async), epoch stamps."""

from skydm.services.images.config import ImagesConfig
from skydm.services.images.service import ImageService

__all__ = ["ImageService", "ImagesConfig"]
