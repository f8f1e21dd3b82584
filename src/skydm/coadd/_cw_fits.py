"""CompareWarp's streak fits, spread over worker processes.

Each clipped footprint's line fit (:func:`skydm.coadd._cw_streaks.fit_streak`)
is a non-linear least-squares fit made of many short numpy steps: Python
holds the GIL through most of it, so threads do not run two fits at once,
and on the benchmark's fields the fits were two thirds of CompareWarp's
time.  They are independent, so they are run in forked worker processes,
the candidates of one epoch in one task (they share that epoch's PSF
profiles, :data:`~skydm.coadd._cw_linemodel.ProfileCache`).

A fit depends only on its candidate and its epoch's PSF (the profile cache
holds profiles computed from the angle bucket alone), so the streaks are
the same, bit for bit, whatever the number of workers.

The fits run with one BLAS thread (:func:`one_blas_thread`; on the
benchmark's fits, 27% less CPU).
"""

from __future__ import annotations

import multiprocessing
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from skydm.coadd._cw_linemodel import ProfileCache
from skydm.coadd._cw_streaks import Candidate, Streak, fit_streak
from skydm.image.psf import Psf

#: Fewest candidates worth starting worker processes for (a fork and the
#: transfer of the candidates cost a few tens of milliseconds).
MIN_PARALLEL = 4


def fit_candidates(
    cands: list[Candidate], psfs: list[Psf | None], nx: int, *, workers: int = 2
) -> list[Streak | None]:
    """The streak model of each candidate (None where it fails the tests), in order.

    Parameters
    ----------
    cands : list of Candidate
        Clipped footprints with their data (:func:`~skydm.coadd._cw_streaks.gather`).
    psfs : list of Psf or None
        Per epoch, its PSF (no fit without one).
    nx : int
        The cell's width (the candidates' flat indices).
    workers : int
        Worker processes; with 1, on a platform without ``fork``, or when
        other Python threads run, the fits are made in this process.

    Returns
    -------
    list of Streak or None
        One per candidate, the same whatever ``workers``.
    """
    groups: dict[int, list[int]] = {}
    for i, c in enumerate(cands):
        if psfs[c.k] is not None:
            groups.setdefault(c.k, []).append(i)
    order = list(groups.values())
    tasks = [(psfs[k], nx, [cands[i] for i in idx]) for k, idx in groups.items()]
    # Forking is safe only from a process running no other Python thread (a
    # lock held by one, logging's say, would stay held in the child): called
    # from a thread (a Dask worker's task), the fits are made here.
    usable = workers > 1 and len(cands) >= MIN_PARALLEL and len(tasks) > 1
    if (
        usable
        and threading.active_count() == 1
        and "fork" in multiprocessing.get_all_start_methods()
    ):
        # Longest tasks first, so that the last to finish is a short one.
        cost = [sum(int(c.ok.sum()) for c in t[2]) for t in tasks]
        ranked = sorted(range(len(tasks)), key=lambda j: -cost[j])
        ctx = multiprocessing.get_context("fork")
        with warnings.catch_warnings():
            # Python 3.12 warns about forking a process with native threads
            # (BLAS's idle pool); the workers run only numpy and scipy code.
            warnings.simplefilter("ignore", DeprecationWarning)
            with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
                futures = {j: pool.submit(_fit_group, *tasks[j]) for j in ranked}
                results = {j: f.result() for j, f in futures.items()}
    else:
        results = {j: _fit_group(*t) for j, t in enumerate(tasks)}
    out: list[Streak | None] = [None] * len(cands)
    for j, idx in enumerate(order):
        for i, s in zip(idx, results[j], strict=True):
            out[i] = s
    return out


def _fit_group(psf: Psf | None, nx: int, group: list[Candidate]) -> list[Streak | None]:
    """Fits of one epoch's candidates, sharing its PSF's profile cache."""
    assert psf is not None  # epochs without a PSF have no group
    cache: ProfileCache = {}
    with one_blas_thread():
        return [fit_streak(c, nx, psf, cache=cache) for c in group]


def one_blas_thread() -> AbstractContextManager[object]:
    """BLAS limited to one thread (nothing where threadpoolctl is missing): for
    small matrices, faster, and the same bits whatever the machine's cores.

    The loaded BLAS libraries are looked up once per process (numpy's and
    scipy's are loaded by this module's imports): threadpoolctl's lookup
    of the process's shared libraries costs about 2 ms, paid at every call
    before (one per epoch's group of fits).
    """
    global _CONTROLLER
    if _CONTROLLER is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a dependency of the coadd extra
            return nullcontext()
        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER.limit(limits=1, user_api="blas")


#: threadpoolctl's controller of the BLAS libraries, made at the first call
#: of :func:`one_blas_thread` (a forked worker inherits it with the libraries).
_CONTROLLER: Any = None
