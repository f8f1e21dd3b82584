"""Image access benchmark; prints one JSON line.

* ``cutout_p50_ms``, ``cutout_p99_ms``: one 51 x 51 SODA cutout (image,
  variance and mask planes) of a 4096 x 4096 calexp stored tile-compressed
  (lossless GZIP_2 floats and a Rice mask in 64 x 64 tiles), through
  ``skydm serve`` over HTTP, one client, positions drawn at random;
* ``stamps_100_epochs_s``: one ``/images/stamps`` request returning the 51 x
  51 stamps of every one of 100 epochs (tile-compressed 512 x 512 calexps)
  of one position, as one multi-extension FITS (median of 5);
* ``stamps_10_users_s``: 10 clients at once, each asking for those 100
  epochs (at another position each); wall time until the last is answered;
* ``http_floor_p50_ms``: the same server's VOSI availability (no work at
  all), requested in turn with the cutouts: the part of a cutout's time
  that is HTTP and the machine's load;
* ``hips_tiles_per_s``, ``reproject_hips_tiles_per_s``: deepest-order
  512 x 512 tiles per second of a whole HiPS build (every order, properties;
  skydm's also PNG tiles, Allsky and Moc) of one coadd (2048^2 at 0.2"),
  by ``skydm.image.hips.build_tree`` and by ``reproject.hips.reproject_to_hips``
  (bilinear, the same interpolation), one thread each, in the same run
  (``--hips-only`` runs just these).

The server is one uvicorn process; on a shared machine the times are upper
bounds.  Run: ``.venv/bin/python benchmarks/images.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from astropy.wcs import WCS

from skydm.image import Exposure
from skydm.image.tiled import tiled_hdulist
from skydm.repo import DataId, Repository

PIXEL_DEG = 0.2 / 3600
MJD0 = 60000.0


def make_wcs(n: int, ra: float, dec: float) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]
    wcs.wcs.cd = np.array([[-PIXEL_DEG, 0], [0, PIXEL_DEG]])
    return wcs


def store(repo: Repository, n: int, visit: int, ra: float, dec: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.normal(1000, 10, (n, n)).astype(np.float32)
    variance = np.full((n, n), 100, dtype=np.float32) + rng.random((n, n), dtype=np.float32)
    mask = (rng.random((n, n)) < 0.01).astype(np.uint32)
    exp = Exposure(image, variance, mask, make_wcs(n, ra, dec))
    exp.info.mjd = MJD0 + visit
    repo.put_hdulist(
        tiled_hdulist(exp, tile=64),
        "calexp",
        DataId("bench", 0, visit, "r"),
        meta={"mjd": MJD0 + visit, "exptime": 30.0},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(repo: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "skydm", "serve", "--repo", str(repo), "--port", str(port),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/sia/availability").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("skydm serve did not start")


def hips_figures(n: int) -> dict[str, float | int]:
    """Tiles per second of skydm's HiPS build and of reproject's, on one ``n`` x ``n`` coadd."""
    from reproject import reproject_interp
    from reproject.hips import reproject_to_hips

    from skydm.image.hips import HipsSpec, build_tree
    from skydm.image.hips.tiles import SourceImage

    rng = np.random.default_rng(7)
    image = rng.normal(100, 5, (n, n)).astype(np.float32)
    wcs = make_wcs(n, 150.0, 2.0)
    with tempfile.TemporaryDirectory(prefix="skydm-bench-hips-") as tmp:
        t = time.perf_counter()
        report = build_tree(
            Path(tmp) / "ours",
            HipsSpec(name="r", title="bench"),
            [(SourceImage("a", image, wcs), "x")],
        )
        ours_s = time.perf_counter() - t
        t = time.perf_counter()
        reproject_to_hips(
            (image, wcs),
            coord_system_out="equatorial",
            reproject_function=reproject_interp,
            output_directory=str(Path(tmp) / "theirs"),
            level=report.order,
            order="bilinear",
            progress_bar=lambda x: x,
        )
        theirs_s = time.perf_counter() - t
        theirs_n = len(list((Path(tmp) / "theirs").glob(f"Norder{report.order}/*/Npix*.fits")))
    return {
        "hips_tiles_per_s": round(report.tiles_written / ours_s, 2),
        "reproject_hips_tiles_per_s": round(theirs_n / theirs_s, 2),
        "hips_tiles": report.tiles_written,
        "hips_order": report.order,
        "hips_s": round(ours_s, 2),
        "reproject_hips_s": round(theirs_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1024^2 image, 20 epochs")
    parser.add_argument("--hips-only", action="store_true", help="only the HiPS figures")
    args = parser.parse_args()
    hips = hips_figures(1024 if args.quick else 2048)
    if args.hips_only:
        print(json.dumps(hips))
        return
    big, epochs, epoch_size = (1024, 20, 256) if args.quick else (4096, 100, 512)
    n_requests = 100 if args.quick else 300
    with tempfile.TemporaryDirectory(prefix="skydm-bench-images-") as tmp:
        root = Path(tmp) / "repo"
        t0 = time.perf_counter()
        with Repository.open(root) as repo:
            store(repo, big, 1, 150.0, 2.0, seed=1)
            for k in range(epochs):
                # Pointings dithered by up to 20": the position stays on every epoch.
                rng = np.random.default_rng(100 + k)
                dra, ddec = rng.uniform(-20, 20, 2) / 3600
                store(repo, epoch_size, 1000 + k, 200.0 + dra, -30.0 + ddec, seed=100 + k)
        setup_s = time.perf_counter() - t0
        port = free_port()
        proc = start_server(root, port)
        base = f"http://127.0.0.1:{port}"
        try:
            rng = np.random.default_rng(0)
            wcs = make_wcs(big, 150.0, 2.0)
            image_id = "ivo://skydm/calexp?bench/r/1/0"
            radius = 25 * PIXEL_DEG
            times: list[float] = []
            floor: list[float] = []
            with httpx.Client(timeout=300) as client:
                for i in range(n_requests + 10):
                    x, y = rng.uniform(100, big - 100, 2)
                    ra, dec = wcs.all_pix2world([[x, y]], 0)[0]
                    params = {"ID": image_id, "CIRCLE": f"{ra:.8f} {dec:.8f} {radius:.8f}"}
                    t = time.perf_counter()
                    r = client.get(f"{base}/soda/sync", params=params)
                    elapsed = time.perf_counter() - t
                    assert r.status_code == 200, r.text
                    if i >= 10:  # the first requests warm the server's caches
                        times.append(elapsed)
                    # The same server's cheapest answer, in turn with the cutouts: what
                    # HTTP and a busy machine cost, whatever the cutout does.
                    t = time.perf_counter()
                    client.get(f"{base}/sia/availability")
                    floor.append(time.perf_counter() - t)
                runs = []
                for k in range(6):
                    t = time.perf_counter()
                    r = client.get(f"{base}/images/stamps", params={"POS": "200 -30", "SIZE": 51})
                    assert r.status_code == 200, r.text
                    if k:  # the first is a warm-up, as for the cutouts
                        runs.append(time.perf_counter() - t)
                stamp_bytes = len(r.content)

            def user(k: int) -> int:
                offset = (k - 5) * 2 / 3600
                with httpx.Client(timeout=300) as c:
                    got = c.get(
                        f"{base}/images/stamps",
                        params={"POS": f"{200 + offset} {-30 + offset}", "SIZE": 51},
                    )
                assert got.status_code == 200, got.text
                return len(got.content)

            t = time.perf_counter()
            with ThreadPoolExecutor(10) as pool:
                list(pool.map(user, range(10)))
            users_s = time.perf_counter() - t
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    figures = {
        "cutout_p50_ms": round(float(np.median(times)) * 1e3, 2),
        "cutout_p99_ms": round(float(np.percentile(times, 99)) * 1e3, 2),
        "http_floor_p50_ms": round(float(np.median(floor)) * 1e3, 2),
        "stamps_100_epochs_s": round(float(np.median(runs)), 3),
        "stamps_10_users_s": round(users_s, 3),
        **hips,
        "image_size": big,
        "epochs": epochs,
        "epoch_size": epoch_size,
        "stamps_mb": round(stamp_bytes / 1e6, 2),
        "cutout_requests": len(times),
        "setup_s": round(setup_s, 1),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
