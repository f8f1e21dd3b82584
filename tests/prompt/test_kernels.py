"""A warmed-up worker processes its first detector without compiling a numba kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

#: Run in a fresh interpreter: in the test session other tests may already
#: have compiled the kernels, which would hide a signature the warm-up lacks.
_SCRIPT = textwrap.dedent(
    """
    import json
    from skydm.prompt.worker import warm_up
    from skydm.prompt.kernels import kernel_signatures

    warm_up()
    warmed = kernel_signatures()

    from skydm.archive.lossy import encode_exposure_hdulist
    from skydm.archive.recipes import DEFAULT_RECIPES
    from skydm.diffim import detect_dia_sources, subtract
    from skydm.diffim.measure import measure_dia_sources
    from skydm.pipeline.calibrate import calibrate_raw
    from skydm.sim import SurveyConfig, simulate_survey

    cfg = SurveyConfig(
        seed=5, shape=(256, 256), n_visits=2, bands=("r",), pixel_scale=0.2, n_stars=80,
        n_galaxies=10, dither=5.0, artefacts=("cosmic_rays",), n_transients=3,
        n_variables=1, n_movers=0, ra=150.0, dec=2.0,
    )
    visits = simulate_survey(cfg).visits
    template = calibrate_raw(visits[0].pixels().raw)
    science = calibrate_raw(visits[1].pixels().raw)
    # Read-only, as the worker's template cache holds it (numba types a
    # read-only array apart: a signature of its own).
    for plane in (template.image, template.variance, template.mask):
        plane.setflags(write=False)
    result = subtract(science, template, method="al")
    sources = detect_dia_sources(result, threshold=5.0)
    measure_dia_sources(
        sources, result.difference, science=science, template=result.template,
        science_psf=result.science_psf, template_psf=result.template_psf,
    )
    recipe = DEFAULT_RECIPES.for_type("calexp")
    for exp in (science, result.difference):
        encode_exposure_hdulist(exp.to_hdulist(), recipe)
    print(json.dumps({"warmed": warmed, "after": kernel_signatures(),
                      "sources": len(sources)}))
    """
)

#: The kernels a detector's processing calls (calibrate, diffim, lossy writes).
KERNELS = (
    "skydm.pipeline._cosmic_bounds._noise_bound",
    "skydm.pipeline._cosmic_bounds._fine_at",
    "skydm.pipeline._cosmic_bounds._paint_boxes",
    "skydm.pipeline.sky._run_means",
    "skydm.pipeline.sky._gather_meshes",
    "skydm.diffim._common._or_box",
    "skydm.diffim._resample._warp_pixels",
    "skydm.diffim._resample._interpolate_map",
    "skydm.diffim._detect._all_paths_dip",
    "skydm.archive._quantize._quantize",
    "skydm.archive._rice._code_tiles",
)


def test_first_detector_after_warm_up_compiles_nothing() -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    warmed, after = report["warmed"], report["after"]
    assert report["sources"] > 0
    for name in KERNELS:
        assert warmed.get(name, 0) >= 1, f"{name} not compiled by warm_up: {warmed}"
    grew = {k: (warmed.get(k, 0), n) for k, n in after.items() if n > warmed.get(k, 0)}
    assert not grew, f"kernels compiled during the first detector (before, after): {grew}"


def test_warm_up_limits_the_workers_thread_pools() -> None:
    """A worker's BLAS and OpenMP pools run one thread (PromptConfig.worker_threads),
    whatever the environment asked for: the workers are the parallelism."""
    script = textwrap.dedent(
        """
        import json
        import threadpoolctl
        from skydm.prompt.worker import warm_up

        warm_up()
        before = {i["internal_api"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
        warm_up(1)
        after = {i["internal_api"]: i["num_threads"] for i in threadpoolctl.threadpool_info()}
        print(json.dumps({"before": before, "after": after}))
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="3", OPENBLAS_NUM_THREADS="3")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # Both kinds of pool are loaded by the warm-up (numpy/scipy, astroscrappy).
    assert {"openblas", "openmp"} <= set(report["after"])
    assert max(report["before"].values()) == 3
    assert set(report["after"].values()) == {1}
