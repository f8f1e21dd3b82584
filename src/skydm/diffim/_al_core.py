"""Alard–Lupton PSF matching: kernel basis, stamp fits, spatial solution, convolution.

The matching kernel is ``K(x, y) = sum_i a_i(x, y) b_i`` over a basis ``b_i``
of Gaussians times polynomials (Alard & Lupton 1998) or of single pixels
(the delta-function basis).  The basis is arranged so that ``b_0`` has unit
sum and every other ``b_i`` sums to zero: the kernel sum (the photometric
scale between the images) is then ``a_0`` alone, held constant over the
image, while the shape coefficients ``a_i`` (i > 0) and the differential
background vary as polynomials in x and y.

Fitting works on normal equations: each stamp contributes its small matrix
``C^T W C`` once, and the global spatial system is assembled from those, so
outlier rejection costs no new convolutions.  Applying the kernel uses the
standard trick: ``K = sum_j P_j(x, y) K_j`` with a fixed kernel per spatial
term, so the convolved image is ``sum_j P_j(x, y) (I * K_j)``, one full-frame
FFT per spatial term.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from skydm.diffim import _fft


@dataclass
class Basis:
    """Kernel basis: ``kernels[0]`` has unit sum, the others sum to zero."""

    kernels: np.ndarray  # (n, size, size)
    kind: str

    @property
    def size(self) -> int:
        """Kernel side length in pixels."""
        return int(self.kernels.shape[1])

    def __len__(self) -> int:
        return int(self.kernels.shape[0])


def alard_lupton_basis(sigmas: tuple[float, ...], degrees: tuple[int, ...], half: int) -> Basis:
    """Gaussians of the given widths times polynomials up to the given degrees."""
    y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    funcs = []
    for sigma, deg in zip(sigmas, degrees, strict=True):
        g = np.exp(-0.5 * (x**2 + y**2) / sigma**2)
        for total in range(deg + 1):
            for py in range(total + 1):
                funcs.append(g * x ** (total - py) * y**py)
    return _normalise(np.array(funcs), "alard-lupton")


def delta_basis(half: int) -> Basis:
    """One basis kernel per pixel (the delta-function basis), centre first."""
    n = 2 * half + 1
    funcs = np.zeros((n * n, n, n))
    order = sorted(range(n * n), key=lambda k: (k != (n * n) // 2, k))
    for i, k in enumerate(order):
        funcs[i, k // n, k % n] = 1.0
    return _normalise(funcs, "delta")


def _normalise(funcs: np.ndarray, kind: str) -> Basis:
    b0 = funcs[0] / funcs[0].sum()
    out = [b0]
    for f in funcs[1:]:
        f = f - f.sum() * b0
        norm = math.sqrt(float(np.sum(f**2)))
        if norm > 1e-12:
            out.append(f / norm)
    return Basis(np.array(out), kind)


def poly_exponents(order: int) -> list[tuple[int, int]]:
    """(power of u, power of v) for every term of total degree <= ``order``."""
    return [(total - p, p) for total in range(order + 1) for p in range(total + 1)]


def unit_coords(
    x: np.ndarray, y: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates scaled to [-1, 1] over the image (keeps the fit well conditioned)."""
    ny, nx = shape
    return (x - (nx - 1) / 2) / max((nx - 1) / 2, 1), (y - (ny - 1) / 2) / max((ny - 1) / 2, 1)


def poly_terms(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """Polynomial terms at positions: array (n_positions, n_terms)."""
    u, v = unit_coords(np.asarray(x, float), np.asarray(y, float), shape)
    return np.stack([u**a * v**b for a, b in poly_exponents(order)], axis=-1)


@dataclass
class StampSystem:
    """Per-stamp normal equations of the fit ``target = sum_i a_i (source * b_i) + bg``."""

    x: np.ndarray
    y: np.ndarray
    matrices: np.ndarray  # (n, nb + 1, nb + 1)
    vectors: np.ndarray  # (n, nb + 1)
    tt: np.ndarray  # (n,) t^T W t
    npix: np.ndarray  # (n,)


def build_stamps(
    source: np.ndarray,
    target: np.ndarray,
    variances: Sequence[tuple[np.ndarray, float]],
    positions: np.ndarray,
    basis: Basis,
    half_fit: int,
) -> StampSystem:
    """Convolve a source cutout around each position with every basis kernel.

    The per-pixel variance of ``target - model``, used as the weight, is
    ``sum(factor * plane)`` over ``variances`` (evaluated on the stamps only);
    positions are integer pixel centres far enough from the edges.
    """
    hk = basis.size // 2
    side = 2 * half_fit + 1
    length = side + 2 * hk
    spec_basis = np.fft.rfft2(basis.kernels, s=(length, length))
    lo = basis.size - 1
    nb = len(basis)
    mats, vecs, tts, npix, xs, ys = [], [], [], [], [], []
    for xc, yc in positions:
        ix, iy = int(xc), int(yc)
        cut = source[
            iy - half_fit - hk : iy + half_fit + hk + 1, ix - half_fit - hk : ix + half_fit + hk + 1
        ]
        tsl = (slice(iy - half_fit, iy + half_fit + 1), slice(ix - half_fit, ix + half_fit + 1))
        if cut.shape != (length, length):
            continue
        t = target[tsl].astype(np.float64).ravel()
        var = np.zeros(side * side)
        for plane, factor in variances:
            var += factor * plane[tsl].astype(np.float64).ravel()
        with np.errstate(divide="ignore"):
            w = 1.0 / var
        if not (np.all(np.isfinite(t)) and np.all(w > 0)):
            continue
        conv = np.fft.irfft2(
            np.fft.rfft2(cut.astype(np.float64))[None] * spec_basis, s=(length, length)
        )[:, lo:, lo:]
        c = np.empty((t.size, nb + 1))
        c[:, :nb] = conv.reshape(nb, -1).T
        c[:, nb] = 1.0
        cw = c * w[:, None]
        mats.append(cw.T @ c)
        vecs.append(cw.T @ t)
        tts.append(float(np.sum(w * t * t)))
        npix.append(t.size)
        xs.append(ix)
        ys.append(iy)
    return StampSystem(
        np.array(xs, float),
        np.array(ys, float),
        np.array(mats).reshape(-1, nb + 1, nb + 1),
        np.array(vecs).reshape(-1, nb + 1),
        np.array(tts),
        np.array(npix, float),
    )


@dataclass
class KernelSolution:
    """A fitted spatially varying kernel and differential background.

    Attributes
    ----------
    basis : Basis
        The kernel basis.
    coeffs : numpy.ndarray
        ``(n_basis, n_kernel_terms)`` polynomial coefficients; row 0 only has
        its constant term (a spatially constant kernel sum).
    background : numpy.ndarray
        Polynomial coefficients of the differential background.
    kernel_order, background_order : int
        Polynomial orders.
    shape : tuple of int
        Image shape the coordinates refer to.
    n_stamps, n_rejected : int
        Stamps used in the final fit and stamps rejected as outliers.
    chi2 : float
        Mean reduced chi-square of the kept stamps.
    used : numpy.ndarray
        ``(n, 2)`` positions of the stamps kept.
    kernel_sum_err : float
        Error of the kernel sum from the scatter of the stamps' own sums.
    kernel_sum_excess : float
        Scatter of the kept stamps' own sums beyond their noise (0 when the
        noise explains it): what tells unrelated images apart, whereas the
        raw scatter of faint stars' sums on a single visit is noise.
    """

    basis: Basis
    coeffs: np.ndarray
    background: np.ndarray
    kernel_order: int
    background_order: int
    shape: tuple[int, int]
    n_stamps: int = 0
    n_rejected: int = 0
    chi2: float = math.nan
    used: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    kernel_sum_err: float = math.nan
    kernel_sum_excess: float = math.nan

    @property
    def kernel_sum(self) -> float:
        """Photometric scale: counts in the convolved image per count in its input."""
        return float(self.coeffs[0, 0])

    def term_kernels(self) -> np.ndarray:
        """One kernel image per spatial term: ``K(x, y) = sum_j P_j(x, y) K_j``."""
        return np.einsum("ij,iyx->jyx", self.coeffs, self.basis.kernels)

    def kernel_at(self, x: float, y: float) -> np.ndarray:
        """The kernel image at pixel (x, y)."""
        terms = poly_terms(np.array([x]), np.array([y]), self.shape, self.kernel_order)[0]
        return np.tensordot(terms, self.term_kernels(), axes=1)

    def centre_kernel(self) -> np.ndarray:
        """The kernel at the image centre (the constant term)."""
        return self.term_kernels()[0]

    def _background_rows(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The background as ``sum_b outer(col_b, row_b)`` (rank <= order + 1)."""
        ny, nx = self.shape
        u, v = unit_coords(np.arange(nx, dtype=float), np.arange(ny, dtype=float), self.shape)
        rows: dict[int, np.ndarray] = {}
        for c, (a, b) in zip(self.background, poly_exponents(self.background_order), strict=True):
            rows[b] = rows.get(b, np.zeros(nx)) + c * u**a
        return [((v**b).astype(np.float32), r.astype(np.float32)) for b, r in rows.items()]

    def add_background(self, image: np.ndarray, chunk: int = 256) -> None:
        """Add the differential background to ``image`` in place, a band of rows at a time."""
        parts = self._background_rows()
        for r0 in range(0, image.shape[0], chunk):
            sl = slice(r0, min(r0 + chunk, image.shape[0]))
            band = np.zeros((sl.stop - r0, image.shape[1]), dtype=np.float32)
            for col, row in parts:
                band += col[sl, None] * row[None, :]
            image[sl] += band

    def background_map(self, dtype: type = np.float32) -> np.ndarray:
        """The differential background over the whole image."""
        out: np.ndarray = np.zeros(self.shape, dtype=np.float32)
        self.add_background(out)
        return out.astype(dtype, copy=False)


def _columns(nb: int, nk: int, nbg: int) -> tuple[np.ndarray, np.ndarray]:
    """(basis index, term index) of every unknown of the spatial fit."""
    idx = [(0, 0)] + [(i, j) for i in range(1, nb) for j in range(nk)]
    idx += [(nb, j) for j in range(nbg)]
    arr = np.array(idx)
    return arr[:, 0], arr[:, 1]


def _solve(a: np.ndarray, b: np.ndarray, ridge: float) -> np.ndarray:
    scale = float(np.mean(np.diag(a))) or 1.0
    try:
        return np.linalg.solve(a + ridge * scale * np.eye(len(b)), b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def fit_single(stamps: StampSystem, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent fit per stamp: (coefficients (n, nb+1), reduced chi-square (n,))."""
    sols = np.array(
        [_solve(m, v, ridge) for m, v in zip(stamps.matrices, stamps.vectors, strict=True)]
    )
    chi2 = _chi2(stamps, sols)
    return sols, chi2


def _chi2(stamps: StampSystem, sols: np.ndarray) -> np.ndarray:
    quad = np.einsum("si,sij,sj->s", sols, stamps.matrices, sols)
    lin = np.einsum("si,si->s", sols, stamps.vectors)
    return (stamps.tt - 2 * lin + quad) / stamps.npix


def _robust_cut(values: np.ndarray, keep: np.ndarray, nsigma: float, floor: float) -> np.ndarray:
    v = values[keep]
    if v.size < 3:
        return keep
    med = float(np.median(v))
    sig = max(1.4826 * float(np.median(np.abs(v - med))), floor)
    return keep & (np.abs(values - med) <= nsigma * sig)


def fit_spatial(
    stamps: StampSystem,
    basis: Basis,
    shape: tuple[int, int],
    *,
    kernel_order: int,
    background_order: int,
    ridge: float,
    nsigma: float = 3.0,
    max_iter: int = 4,
) -> KernelSolution:
    """Fit the spatial solution with iterative rejection of outlying stamps.

    Stamps are first screened on their individual kernel sums (a variable
    star or a transient gives a deviant sum) and fit quality, then the
    global solution is refitted, dropping stamps whose chi-square under it
    is an outlier, until nothing more is dropped.
    """
    nb = len(basis)
    n = len(stamps.x)
    single, chi2_single = fit_single(stamps, ridge)
    keep = np.ones(n, dtype=bool)
    ksum = single[:, 0]
    keep = _robust_cut(ksum, keep, nsigma, 0.005 * abs(float(np.median(ksum))))
    keep &= chi2_single <= np.median(chi2_single[keep]) + nsigma * max(
        1.4826 * float(np.median(np.abs(chi2_single[keep] - np.median(chi2_single[keep])))),
        0.05,
    )
    nk = len(poly_exponents(kernel_order))
    nbg = len(poly_exponents(background_order))
    bi, tj = _columns(nb, nk, nbg)
    terms = poly_terms(stamps.x, stamps.y, shape, max(kernel_order, background_order))
    sol = np.zeros(len(bi))
    for _ in range(max_iter):
        a = np.zeros((len(bi), len(bi)))
        b = np.zeros(len(bi))
        for s in np.flatnonzero(keep):
            p = terms[s, tj]
            a += np.outer(p, p) * stamps.matrices[s][np.ix_(bi, bi)]
            b += p * stamps.vectors[s][bi]
        sol = _solve(a, b, ridge)
        # Coefficients of each stamp's own basis under the global solution.
        local = np.zeros((n, nb + 1))
        np.add.at(local.T, bi, sol[:, None] * terms[:, tj].T)
        chi2 = _chi2(stamps, local)
        new_keep = _robust_cut(chi2, keep, nsigma, 0.05) & keep
        if new_keep.sum() == keep.sum() or new_keep.sum() < max(3, len(bi) // 50):
            break
        keep = new_keep
    coeffs = np.zeros((nb, nk))
    background = np.zeros(nbg)
    for k, (i, j) in enumerate(zip(bi, tj, strict=True)):
        if i < nb:
            coeffs[i, j] = sol[k]
        else:
            background[j] = sol[k]
    return KernelSolution(
        basis=basis,
        coeffs=coeffs,
        background=background,
        kernel_order=kernel_order,
        background_order=background_order,
        shape=shape,
        n_stamps=int(keep.sum()),
        n_rejected=int(n - keep.sum()),
        chi2=float(np.mean(chi2[keep])) if keep.any() else math.nan,
        used=np.column_stack([stamps.x[keep], stamps.y[keep]]),
        kernel_sum_err=_sum_error(ksum, keep),
        kernel_sum_excess=_sum_excess(stamps, ksum, chi2_single, keep, ridge),
    )


def _sum_error(ksum: np.ndarray, keep: np.ndarray) -> float:
    """Error of the mean kernel sum from the robust scatter of the kept stamps' sums."""
    v = ksum[keep] if keep.sum() >= 2 else ksum
    if v.size < 2:
        return math.nan
    sig = 1.4826 * float(np.median(np.abs(v - np.median(v))))
    return sig / math.sqrt(v.size)


def _sum_excess(
    stamps: StampSystem, ksum: np.ndarray, chi2: np.ndarray, keep: np.ndarray, ridge: float
) -> float:
    """Robust scatter of the kept stamps' kernel sums less their typical noise, in quadrature.

    A stamp's noise is the sum coefficient's error from its own normal
    matrix (inverse-variance weighted), scaled by its reduced chi-square
    when above 1.  On a single 256-pixel visit against a deep template the
    stars chosen on the template are faint in the science, and their sums
    scatter by a third of the ratio from photon noise alone.
    """
    idx = np.flatnonzero(keep) if keep.sum() >= 2 else np.arange(ksum.size)
    if idx.size < 2:
        return math.nan
    v = ksum[idx]
    sig = 1.4826 * float(np.median(np.abs(v - np.median(v))))
    noise = []
    for s in idx:
        m = stamps.matrices[s]
        scale = float(np.mean(np.diag(m))) or 1.0
        try:
            var = float(np.linalg.inv(m + ridge * scale * np.eye(len(m)))[0, 0])
        except np.linalg.LinAlgError:
            continue
        noise.append(math.sqrt(max(var, 0.0) * max(float(chi2[s]), 1.0)))
    typical = float(np.median(noise)) if noise else 0.0
    return math.sqrt(max(sig * sig - typical * typical, 0.0))


def convolve_spatial(image: np.ndarray, solution: KernelSolution) -> np.ndarray:
    """``image`` convolved with the spatially varying kernel (``float32``).

    One forward FFT of the image and one inverse per spatial term, each
    weighted in place by its polynomial map (separable, so never built in
    full); the kernel spectra come from small separable DFTs.
    """
    shape = image.shape
    spec = _fft.rfft2(image.astype(np.float32, copy=False))
    ny, nx = shape
    u, v = unit_coords(np.arange(nx, dtype=float), np.arange(ny, dtype=float), shape)
    out: np.ndarray | None = None
    kernels = solution.term_kernels()
    buf = np.empty_like(spec)
    for kern, (a, b) in zip(kernels, poly_exponents(solution.kernel_order), strict=True):
        np.multiply(spec, _fft.kernel_rfft2(kern, shape), out=buf)
        part = _fft.irfft2(buf, shape, overwrite=True)
        if b:
            part *= (v**b).astype(np.float32)[:, None]
        if a:
            part *= (u**a).astype(np.float32)[None, :]
        if out is None:
            out = part
        else:
            out += part
        del part
    assert out is not None
    return out
