r"""Parallel-beam geometry for :class:`~eqdeq_cli.physics.ct.CTRadon`: system matrix and FBP filters.

Coordinates (pixel units, pixel size 1): pixel ``(i, j)`` (row, column) of an ``N × N``
image has its centre at :math:`x = j - (N-1)/2`, :math:`y = (N-1)/2 - i` (``y`` points up).
View :math:`\theta` measures :math:`p_\theta(s) = \int f(s\,n_\theta + t\,d_\theta)\,dt` with
:math:`n_\theta = (\cos\theta, \sin\theta)`, :math:`d_\theta = (-\sin\theta, \cos\theta)`;
detector bin ``k`` of ``K`` sits at :math:`s_k = k - (K-1)/2` (spacing 1). This is the
convention of ``skimage.transform.radon`` (``theta`` in degrees, same sign).

The line integrals are discretised with Joseph's ray-driven model: each ray is sampled
once per image row (or column, whichever is crossed more steeply), the image is
interpolated linearly along the other axis, and each sample is weighted by the step
length :math:`1/\max(|\cos\theta|, |\sin\theta|)`. On a 127² Shepp-Logan phantom this
agrees with ``skimage.transform.radon`` to 0.4 % relative error (a pixel-driven
model with linear detector interpolation: 1.3 %), with fewer non-zeros.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

FBP_FILTERS = ("ram-lak", "shepp-logan", "cosine", "hann")


def joseph_matrix(img_size: int, angles: np.ndarray, n_detectors: int) -> sp.csr_matrix:
    """Sparse system matrix ``(n_views·K, N·N)`` of the parallel-beam Radon transform.

    Rows are ordered view-major (row ``v·K + k``), columns are row-major pixels
    (``i·N + j``). ``angles`` in radians. Entries are in pixel-length units, so a
    measurement is a line integral of the image values.
    """
    n = img_size
    c = (n - 1) / 2.0
    s = np.arange(n_detectors, dtype=np.float64) - (n_detectors - 1) / 2.0
    line = np.arange(n, dtype=np.float64)
    rows, cols, vals = [], [], []
    for v, theta in enumerate(np.asarray(angles, dtype=np.float64)):
        cos_t, sin_t = np.cos(theta), np.sin(theta)
        det, step = np.meshgrid(s, line, indexing="ij")              # (K, N)
        ray = v * n_detectors + np.broadcast_to(np.arange(n_detectors)[:, None], det.shape)
        if abs(cos_t) >= abs(sin_t):
            # Steps over image rows: solve for x on the row y = c - i.
            y = c - step
            t = (y - det * sin_t) / cos_t
            u = det * cos_t - t * sin_t + c                          # continuous column index
            base = step.astype(np.int64) * n
            weight = 1.0 / abs(cos_t)
            stride = 1
        else:
            # Steps over image columns: solve for y on the column x = j - c.
            x = step - c
            t = (det * cos_t - x) / sin_t
            u = c - (det * sin_t + t * cos_t)                        # continuous row index
            base = step.astype(np.int64)
            weight = 1.0 / abs(sin_t)
            stride = n
        lo = np.floor(u).astype(np.int64)
        frac = u - lo
        for idx, w in ((lo, 1.0 - frac), (lo + 1, frac)):
            ok = (idx >= 0) & (idx < n) & (w > 0)
            rows.append(ray[ok])
            cols.append(base[ok] + idx[ok] * stride)
            vals.append(w[ok] * weight)
    matrix = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(angles) * n_detectors, n * n),
    )
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def fbp_filter(n_detectors: int, name: str = "ram-lak") -> tuple[np.ndarray, int]:
    r"""Frequency response of an FBP ramp filter, for ``numpy.fft.rfft`` of zero-padded projections.

    The ramp is built from the band-limited spatial kernel (``h[0] = 1/4``,
    ``h[n] = -1/(πn)²`` for odd ``n``, 0 otherwise), whose DFT approximates
    :math:`|\nu|` (``ν`` in cycles per detector bin) with the correct DC term. Windows:
    Shepp-Logan :math:`\operatorname{sinc}(\nu)`, cosine :math:`\cos(\pi\nu)`, Hann
    :math:`\cos^2(\pi\nu)`.

    Returns ``(response, n_pad)``, ``response`` of length ``n_pad // 2 + 1``; projections are
    zero-padded to ``n_pad`` (a power of two ≥ 2K) before filtering.
    """
    if name not in FBP_FILTERS:
        raise ValueError(f"unknown FBP filter {name!r}; valid: {', '.join(FBP_FILTERS)}")
    n_pad = max(64, int(2 ** np.ceil(np.log2(2 * n_detectors))))
    k = np.concatenate([np.arange(0, n_pad // 2 + 1), np.arange(-(n_pad // 2) + 1, 0)])
    h = np.zeros(n_pad)
    h[0] = 0.25
    odd = k % 2 == 1
    h[odd] = -1.0 / (np.pi * k[odd]) ** 2
    response = np.real(np.fft.rfft(h))
    nu = np.fft.rfftfreq(n_pad)
    if name == "shepp-logan":
        response = response * np.sinc(nu)
    elif name == "cosine":
        response = response * np.cos(np.pi * nu)
    elif name == "hann":
        response = response * np.cos(np.pi * nu) ** 2
    return response, n_pad


def view_weights(angles: np.ndarray, spacing: float) -> np.ndarray:
    r"""FBP quadrature weights (radians) of parallel-beam views, one per view.

    FBP integrates the filtered back-projections over the directions
    :math:`\theta \in [0, \pi)`; view :math:`\theta + \pi` measures the same lines as
    :math:`\theta`. Each view stands for the arc :math:`[\theta_v - \Delta/2, \theta_v + \Delta/2)`
    of directions (``Δ = spacing``, radians); a direction covered by ``c`` views (mod π) is
    shared among them, so the weight of view ``v`` is :math:`\int_{\text{its arc}} d\varphi / c(\varphi)`.

    * Views spread evenly over 180° (or 360°): every weight is ``π / n_views``.
    * 270°: the directions covered twice give each of their views ``Δ/2``, the rest ``Δ``;
      weighing all views by ``π / n_views`` would count the doubled quarter twice.
    * Less than 180° (limited angle): every weight is ``Δ``; the missing wedge stays missing.

    ``angles``: ``(n_views,)`` in radians. Returns ``(n_views,)`` float64 weights summing to
    the covered measure of directions (π when the arc reaches 180°).
    """
    angles = np.asarray(angles, dtype=np.float64)
    width = min(float(spacing), np.pi)
    starts = np.mod(angles - spacing / 2, np.pi)
    cuts = np.unique(np.concatenate([starts, np.mod(starts + width, np.pi), [0.0]]))
    edges = np.append(cuts, np.pi)
    lengths = np.diff(edges)
    mids = edges[:-1] + lengths / 2
    inside = np.mod(mids[:, None] - starts[None, :], np.pi) < width  # (segments, views)
    if width >= np.pi:
        inside[:] = True
    cover = inside.sum(axis=1)
    share = np.where(cover > 0, lengths / np.maximum(cover, 1), 0.0)
    return inside.T.astype(np.float64) @ share
