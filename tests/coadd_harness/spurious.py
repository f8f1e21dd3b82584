"""What each spurious detection and each off clear variable of CompareWarp is
made of, by the simulator's truth (for diagnosis; not run by the tests).

The acceptance counts 5-sigma detections of the artefact coadd ``ca`` that
the plain mean of the clean warps ``rc`` lacks
(:func:`~coadd_harness.scoring.spurious_detections`).  Once the clips are
found the assembly is linear in the warps' pixels, so ``ca - rc`` splits
exactly into

- ``light:<class>``: each artefact class's own light that the clips let
  through (each epoch's raw less clean warp on the class's footprint in
  that epoch, assembled alone with the clips, as
  :func:`~coadd_harness.scoring.own_light_leakage` does);
- ``mover_model``, ``streak_model``: the mover and line models subtracted
  (negative where they take light out);
- ``replacement``: the clean warps assembled with the artefact run's clips
  less the plain mean, i.e. what replacing clipped pixels by other epochs
  (and the restorations) does to the sky and its sources;
- ``rest``: what is not linear (restorations measured on other images);

and a detection's matched-filter S/N at its peak splits the same way (each
part filtered and divided by the coadd's noise there), plus ``base``, the
plain mean's own S/N there, and ``variance``, the change of the noise the
S/N is divided by.  The largest positive part names the cause; for a class's
light, how much of that light (its epochs, on the detection's pixels) was
clipped tells a class that was not found (``unclipped``) from one whose
edges, ends or gaps were left (``partly clipped``).  The same parts give a
clear variable's flux error (PSF photometry of each part).

    PYTHONPATH=src:tests python -m coadd_harness.spurious --fields 1:8,2:20
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.signal import oaconvolve

from coadd_harness.fields import parse_fields, simulate_field
from coadd_harness.scoring import SimWarps, detection_map, variables_clear
from skydm.coadd._cw_assemble import Clips, assemble_clipped, band_clip
from skydm.coadd.assemble import assemble_coadd
from skydm.coadd.compare_warp import find_clips
from skydm.coadd.stack import WarpStack
from skydm.image import Exposure, Mask, psf_photometry

#: Fraction of a class's light on a detection's pixels clipped above which
#: the class counts as clipped there (below it, partly clipped; at 0, unclipped).
CLIPPED = 0.9


def _with(exp: Exposure, image: np.ndarray) -> Exposure:
    out = exp.copy()
    out.image = image.astype(np.float32)
    return out


def _is_mover(s: Any) -> bool:
    # The mover model's streaks carry no segment (_cw_movermodel.model_movers).
    return s.x0 == s.x1 == s.y0 == s.y1 == 0 and s.chi2 == 0.0


def parts(sim: SimWarps) -> dict[str, Any]:
    """The coadds, clips and the parts of ``ca - rc`` of one field (see the module docs)."""
    w = sim.weights
    art, clean = WarpStack(sim.art, weights=w), WarpStack(sim.clean, weights=w)
    clips = find_clips(art)
    ca = assemble_clipped(art, clips)
    movers = [s for s in clips.streaks if _is_mover(s)]

    def with_streaks(streaks: list[Any]) -> np.ndarray:
        c = Clips(**{**clips.__dict__, "streaks": streaks})
        return assemble_clipped(art, c).image.astype(np.float64)

    none, mov = with_streaks([]), with_streaks(movers)
    twin = assemble_clipped(clean, clips, subtract_streaks=False).image.astype(np.float64)
    rc = assemble_coadd(clean, "mean")
    out: dict[str, np.ndarray] = {
        "mover_model": mov - none,
        "streak_model": ca.image - mov,
        "replacement": twin - rc.image,
    }
    covers = [
        sum((m.astype(np.float32) for m in fp.values()), np.float32(0))
        for fp in sim.epoch_footprints
    ]
    light_sum = np.zeros(ca.shape)
    own: dict[str, list[np.ndarray]] = {}
    for cls in sim.footprints:
        layers = []
        for a, c, fp, n in zip(sim.art, sim.clean, sim.epoch_footprints, covers, strict=True):
            x = np.zeros(a.shape, dtype=np.float32)
            if cls in fp:
                x = ((a.image - c.image) * (fp[cls] / np.maximum(n, np.float32(1)))).astype(
                    np.float32
                )
            layers.append(x)
        if not any(x.any() for x in layers):
            continue
        own[cls] = layers
        stack = WarpStack([_with(c, x) for c, x in zip(sim.clean, layers, strict=True)], weights=w)
        kept = assemble_clipped(stack, clips, subtract_streaks=False).image.astype(np.float64)
        out[f"light:{cls}"] = kept
        light_sum += kept
    out["rest"] = none - twin - light_sum
    ny, nx = ca.shape
    clip = band_clip(clips, 0, ny, nx)
    return {"ca": ca, "rc": rc, "clips": clips, "clip": clip, "parts": out, "own": own}


def _filtered(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    return np.asarray(oaconvolve(img, k, mode="same"))


def detections(sim: SimWarps, p: dict[str, Any], *, threshold: float = 5.0) -> list[dict[str, Any]]:
    """Every spurious detection of the field (as ``spurious_vs_mean`` counts
    them), its S/N split into parts, and the cause."""
    ca, rc = p["ca"], p["rc"]
    snr_a, snr_r = detection_map(ca), detection_map(rc)
    new = (snr_a >= threshold) & (snr_r < threshold - 1.0)
    lab, _ = ndimage.label(new, structure=np.ones((3, 3), dtype=bool))
    psf = ca.require_psf("a detection map")
    k = psf.kernel(min(psf.default_size(), 31))
    usable = ((ca.msk & np.uint32(Mask.NO_DATA)) == 0) & np.isfinite(ca.var)
    den_a = np.sqrt(np.maximum(_filtered(np.where(usable, ca.var, 0.0), k * k), 1e-30))
    den_r = np.sqrt(np.maximum(_filtered(np.where(usable, rc.var, 0.0), k * k), 1e-30))
    num_r = _filtered(np.where(usable, rc.image, 0.0), k)
    filt = {name: _filtered(np.where(usable, img, 0.0), k) for name, img in p["parts"].items()}
    truth = sim.truth
    tx, ty = np.asarray(truth["x"], dtype=float), np.asarray(truth["y"], dtype=float)
    fwhm = psf.fwhm
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        comp = lab[sl] == i
        sub = np.where(comp, snr_a[sl], -np.inf)
        yy, xx = np.unravel_index(int(np.argmax(sub)), sub.shape)
        y, x = yy + sl[0].start, xx + sl[1].start
        split = {name: float(f[y, x] / den_a[y, x]) for name, f in filt.items()}
        split["base"] = float(num_r[y, x] / den_r[y, x])
        split["variance"] = float(num_r[y, x] / den_a[y, x] - split["base"])
        cause = max(split, key=lambda s: split[s] if s != "base" else -np.inf)
        # Pixels around the peak (the filter's core) to judge the clips by.
        box = (slice(max(y - 3, 0), y + 4), slice(max(x - 3, 0), x + 4))
        kept_epochs = int(np.median((~p["clip"][:, box[0], box[1]]).sum(axis=0)))
        detail = ""
        extra: dict[str, Any] = {}
        if cause.startswith("light:"):
            cls = cause.split(":", 1)[1]
            tot = clipped = 0.0
            most = (0.0, 0)
            for j, (layer, c) in enumerate(zip(p["own"][cls], p["clip"], strict=True)):
                light = np.abs(layer[box])
                tot += float(light.sum())
                clipped += float(light[c[box]].sum())
                most = max(most, (float(light.sum()), j))
            frac = clipped / tot if tot > 0 else 0.0
            detail = "unclipped" if frac == 0 else "clipped" if frac > CLIPPED else "partly clipped"
            # Whether the epoch holding most of that light is clipped or
            # modelled anywhere on the class's footprint (found elsewhere).
            k = most[1]
            fp = sim.epoch_footprints[k].get(cls)
            if fp is not None:
                modelled = np.zeros(fp.size, dtype=bool)
                for s in p["clips"].streaks:
                    if s.k == k:
                        modelled[s.index] = True
                on = p["clip"][k] | modelled.reshape(fp.shape)
                extra["epoch"] = k
                extra["footprint_clipped"] = round(float(on[fp].mean()), 3)
                extra["footprint_pixels"] = int(fp.sum())
            if split["mover_model"] < -0.3 * split[cause]:
                detail += ", model under-subtracted"
        d = np.hypot(tx - x, ty - y)
        j = int(np.argmin(d))
        source = f"{truth['kind'][j]} {float(truth['mag'][j]):.1f} mag" if d[j] < fwhm else ""
        if cause == "replacement":
            detail = "source core" if source and split["base"] >= 2 * threshold else "sky"
        out.append(
            {
                "x": int(x),
                "y": int(y),
                "snr": round(float(snr_a[y, x]), 2),
                "pixels": int(comp.sum()),
                "cause": cause,
                "detail": detail,
                "kept_epochs": kept_epochs,
                "source": source,
                "split": {s: round(v, 2) for s, v in split.items() if abs(v) >= 0.3},
                **extra,
            }
        )
    return out


def variables(sim: SimWarps, p: dict[str, Any], *, tolerance: float = 0.01) -> list[dict[str, Any]]:
    """Every variable clear of artefacts whose coadd flux is off by more than
    ``tolerance``: its flux error split into parts and what clips touch it."""
    ca, rc = p["ca"], p["rc"]
    var = sim.truth[sim.truth["kind"] == "variable"]
    clear = variables_clear(sim)
    psf = rc.require_psf("variable photometry")
    clips: Clips = p["clips"]
    out = []
    for row, ok in zip(var, clear, strict=True):
        if not ok:
            continue
        x, y = float(row["x"]), float(row["y"])
        f_r = float(psf_photometry(rc, np.array([x]), np.array([y]), psf=psf)[0][0])
        f_a = float(psf_photometry(ca, np.array([x]), np.array([y]), psf=psf)[0][0])
        if abs(f_a / f_r - 1) <= tolerance:
            continue
        split = {}
        for name, img in p["parts"].items():
            f = float(psf_photometry(_with(rc, img), np.array([x]), np.array([y]), psf=psf)[0][0])
            if abs(f / f_r) >= 0.002:
                split[name] = round(f / f_r, 4)
        iy, ix = round(y), round(x)
        box = (slice(max(iy - 4, 0), iy + 5), slice(max(ix - 4, 0), ix + 5))
        clipped = {int(k): int(c[box].sum()) for k, c in enumerate(p["clip"]) if c[box].any()}
        crs = [
            k for k, idx in enumerate(clips.cosmic_rays) if np.isin(idx, _flat(box, ca.shape)).any()
        ]
        rest = [
            {"k": r.k, "alpha": round(r.alpha, 3), "d": round(float(np.hypot(r.x - x, r.y - y)), 1)}
            for r in clips.restore
            if np.hypot(r.x - x, r.y - y) < 6
        ]
        out.append(
            {
                "x": round(x, 1),
                "y": round(y, 1),
                "mag": round(float(row["mag"]), 2),
                "ratio": round(f_a / f_r, 4),
                "split": split,
                "clipped_pixels": clipped,
                "cosmic_ray_epochs": crs,
                "restorations": rest,
            }
        )
    return out


def _flat(box: tuple[slice, slice], shape: tuple[int, ...]) -> np.ndarray:
    yy, xx = np.mgrid[box]
    return (yy * shape[1] + xx).ravel()


def main(argv: Sequence[str] | None = None) -> int:
    """Print one JSON line per field: its spurious detections and off variables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fields", required=True, help="seed[:epochs],...")
    args = ap.parse_args(argv)
    for seed, epochs in parse_fields(args.fields):
        field = simulate_field(seed, epochs)
        p = parts(field.sim)
        line = {
            "label": field.label,
            "detections": detections(field.sim, p),
            "variables": variables(field.sim, p),
        }
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
