"""The compiled (numba) kernels of a detector's processing, made ready before its first raw.

A numba kernel is compiled, or loaded from its on-disk cache (``cache=True``:
``__pycache__`` beside the module, or numba's user cache directory when that
is not writable, or ``NUMBA_CACHE_DIR``), on its first call with a new type
signature.  Without a warm-up the first detector a worker processes pays for
every kernel it meets: about 2.5 CPU s of cache loading (numba's typing and
target contexts are set up on the first one), or tens of seconds when
nothing is cached yet, all inside that detector's latency.

:func:`warm_kernels` calls each kernel once, through the functions the
pipeline calls it from, on tiny arrays of the dtypes and layouts a detector
gives it, so that the signatures a detector needs are there before its raw
lands (``tests/prompt/test_kernels.py`` processes a detector after the
warm-up and checks that no kernel gained a signature).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def warm_kernels() -> None:
    """Compile (or load from numba's cache) every kernel of the ``ap`` path for its types.

    Each call below mirrors how the pipeline calls the kernel, on arrays of
    a few dozen pixels.
    """
    _warm_calibrate()
    _warm_diffim()
    _warm_archive()


def _warm_calibrate() -> None:
    from skydm.pipeline._cosmic_bounds import candidate_pixels, dilate_box
    from skydm.pipeline.cosmics import CosmicRayConfig
    from skydm.pipeline.sky import _clipped_means

    rng = np.random.default_rng(0)
    sky = (1000.0 + 30.0 * rng.standard_normal((32, 32))).astype(np.float32)
    hit = sky.copy()
    hit[16, 16] += 5000.0  # cosmic-ray pixels: the candidates' second test runs
    hit[8, 20] += 4000.0
    seeds = candidate_pixels(hit, np.ones(hit.shape, dtype=bool), read_noise=5.0,
                             config=CosmicRayConfig())  # fmt: skip
    dilate_box(seeds, 6)
    # The background's clipped means: float32 pixels (a calexp's).
    _clipped_means(sky, np.zeros(sky.shape, dtype=bool), 16)


def _warm_diffim() -> None:
    from skydm.diffim._common import grow_masks
    from skydm.diffim._detect import _separate
    from skydm.diffim._resample import pixel_map, warp

    mask = np.zeros((24, 24), dtype=np.uint32)
    mask[12, 12] = 1
    grow_masks([(mask, 5), (mask, 3)])
    # Two grids a fraction of a pixel apart: the mapping interpolated between knots.
    pm = pixel_map(_tan((12.0, 12.0)), _tan((12.4, 11.7)), (24, 24), (24, 24))
    image = np.ones((24, 24), dtype=np.float32)
    warp(pm, image, image, mask, 256)
    # And read-only, as the worker's template cache holds the template's
    # planes: numba compiles a read-only array's signature apart (3 CPU s
    # inside the first detector otherwise).
    image_ro, variance_ro, mask_ro = image.copy(), image.copy(), mask.copy()
    for plane in (image_ro, variance_ro, mask_ro):
        plane.setflags(write=False)
    warp(pm, image_ro, variance_ro, mask_ro, 256)
    # A footprint's significance (float32, as the matched filter's).
    sub = np.zeros((16, 16), dtype=np.float32)
    sub[4, 4], sub[11, 11] = 10.0, 9.0
    _separate(sub, 11, 11, np.array([4.0]), np.array([4.0]), np.array([9.9]), 7.0)


def _tan(crpix: tuple[float, float]) -> Any:
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = list(crpix)
    wcs.wcs.cdelt = [-0.2 / 3600.0, 0.2 / 3600.0]
    return wcs


def _warm_archive() -> None:
    # calexp and diff are written ``lossy16`` by default: quantized and Rice-coded.
    from astropy.io import fits

    from skydm.archive.lossy import encode_exposure_hdulist
    from skydm.archive.recipes import DEFAULT_RECIPES
    from skydm.image import Exposure

    recipe = DEFAULT_RECIPES.for_type("calexp")
    if recipe is None:
        return
    rng = np.random.default_rng(1)
    image = (10.0 * rng.standard_normal((40, 40))).astype(np.float32)
    exp = Exposure(image=image, variance=np.full(image.shape, 100.0, dtype=np.float32))
    hdul: fits.HDUList = exp.to_hdulist()
    encode_exposure_hdulist(hdul, recipe)


def kernel_signatures() -> dict[str, int]:
    """Every loaded skydm numba kernel and how many type signatures it has compiled.

    Keys are ``module.name``; for checking that a warmed-up worker compiles
    nothing more (the test), and for diagnostics.
    """
    from numba.core.dispatcher import Dispatcher

    out: dict[str, int] = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("skydm.") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, Dispatcher) and getattr(value, "__module__", name) == name:
                out[f"{name}.{attr}"] = len(_signatures(value))
    return out


def _signatures(dispatcher: Any) -> list[Any]:
    return list(dispatcher.signatures)
