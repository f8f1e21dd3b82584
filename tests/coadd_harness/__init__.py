"""Testing harness for coadds, shared by ``tests/coadd`` and ``benchmarks/coadd.py``:
scoring against the simulator's truth (:mod:`coadd_harness.scoring`) and SWarp
on the same warps for comparison (:mod:`coadd_harness.swarp`).

It lives outside the library package: it measures the coadds, it is not
part of making them.  Tests import it because ``tests/`` is on pytest's
path (as for :mod:`skydm_testing`); the benchmark puts ``tests/`` on its path.
"""
