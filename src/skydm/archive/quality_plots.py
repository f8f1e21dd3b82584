"""PNG plots of a :class:`~skydm.archive.quality.QualityReport` (matplotlib, ``archive`` extra)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from skydm.archive.quality import QualityReport
from skydm.errors import require_extra
from skydm.repo.atomic import atomic_write_bytes


def _pyplot() -> Any:
    matplotlib = require_extra("matplotlib", "archive")
    matplotlib.use("Agg")  # files only; no display is needed or wanted
    return require_extra("matplotlib.pyplot", "archive")


def _save(fig: Any, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_plots(report: QualityReport, out_dir: Path) -> list[Path]:
    """Write ``quality_vs_snr.png`` and ``quality_vs_q.png`` into ``out_dir``."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = (
        ("flux_err_sigma", "median |ΔF| / σ_F"),
        ("centroid_px", "median centroid shift (px)"),
        ("size_frac", "median |ΔT| / T"),
    )
    for ax, (key, label) in zip(axes, panels, strict=True):
        for level in report.levels:
            bins = [b for b in level.bins if b.n]
            centres = [
                math.sqrt(b.snr_lo * (b.snr_hi if math.isfinite(b.snr_hi) else 2 * b.snr_lo))
                for b in bins
            ]
            ax.plot(centres, [getattr(b, key) for b in bins], "o-", label=f"q = {level.q}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("S/N (forced PSF flux)")
        ax.set_ylabel(label)
    axes[0].axhline(0.02, color="grey", ls=":", lw=1)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"lossy compression errors against S/N: {report.repo}", fontsize=9)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "quality_vs_snr.png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    qs = np.array([level.q for level in report.levels])
    axes[0].plot(qs, [lv.ratio for lv in report.levels], "o-")
    axes[0].set_ylabel("compression ratio")
    axes[1].plot(qs, [100 * lv.noise_growth for lv in report.levels], "o-", label="measured")
    axes[1].plot(qs, 100 * (np.sqrt(1 + 1 / (12.0 * qs**2)) - 1), "k:", label="1/(12 q²)")
    axes[1].set_ylabel("noise growth (%)")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    axes[2].plot(qs, [lv.write_mb_per_s for lv in report.levels], "o-", label="write")
    axes[2].plot(qs, [lv.read_mb_per_s for lv in report.levels], "s-", label="read")
    axes[2].set_ylabel("MB/s")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("q (quantum = σ/q)")
    fig.tight_layout()
    paths.append(_save(fig, out_dir / "quality_vs_q.png"))
    plt.close(fig)
    return paths
