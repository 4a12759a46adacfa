r"""Anatomy-like random phantoms: a body outline, folded tissue, smooth shading, texture.

Random ellipses are flat and sharp; a model trained on them has never seen the soft,
folded, shaded structure of real anatomy. These phantoms keep what makes the ellipses
cheap (no download, a seeded generator) and add that structure. Each image, on the
square :math:`[-1, 1]^2` at pixel centres, is

.. math::

    x = \operatorname{clip}_{[0,1]}\Big(m_{\text{body}}\,\big[(1-r)\,t + r\,v_{\text{rim}}\big]
        \,(1 + s) + m_{\text{body}}\,\tau\Big),

where

* :math:`m_{\text{body}}` is a soft mask (one-pixel edge) of a star-shaped outline,
  :math:`\rho(\varphi) = R\,(1 + \sum_{k=2}^{5} a_k \cos(k\varphi + \phi_k))`, inside the
  unit disc (so every CT view and every rotation sees the whole body);
* :math:`r` is a rim of width 3–8 % of the field along the outline (skin, skull), with
  intensity :math:`v_{\text{rim}}`;
* :math:`t` is folded tissue: a band-pass Gaussian random field (a ring of spatial
  frequencies, 3–9 cycles across the field) cut by two soft thresholds into three
  classes (dark, middle, bright), which gives labyrinth-like folds such as cortex and
  sulci; a few soft dark or bright ellipses (ventricles, lesions) are added on top;
* :math:`s` is a smooth shading (a low-pass random field, ±10–25 %), like an MR bias field
  or beam hardening;
* :math:`\tau` is a fine texture (a high-pass random field, 1–4 % of the range).

Every random field is isotropic and the outline's phases are uniform, so the
distribution is invariant to rotations and reflections about the centre, as EI needs.
With ``channels > 1`` the channels share the geometry and draw their own intensities.
"""
from __future__ import annotations

import numpy as np

_N_BLOBS = 4
_CHUNK = 64


def _random_fields(n: int, size: int, rng: np.random.Generator, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """``n`` isotropic Gaussian random fields ``(n, size, size)`` with unit variance whose
    spectra are flat on the ring ``low[i] ≤ |k| ≤ high[i]`` (cycles across the field) and
    taper smoothly (Gaussian, one cycle) outside it."""
    k = np.fft.fftfreq(size, d=1.0 / size)
    radius = np.sqrt(k[None, :, None] ** 2 + k[None, None, :] ** 2)
    below = np.clip(low[:, None, None] - radius, 0.0, None)
    above = np.clip(radius - high[:, None, None], 0.0, None)
    gain = np.exp(-0.5 * (below ** 2 + above ** 2))
    gain[:, 0, 0] = 0.0
    noise = rng.standard_normal((n, size, size))
    field = np.fft.ifft2(np.fft.fft2(noise) * gain).real
    return field / field.std(axis=(1, 2), keepdims=True)


def _soft_step(d: np.ndarray, width: float | np.ndarray) -> np.ndarray:
    """0 for ``d ≤ −width``, 1 for ``d ≥ width``, a smooth cubic step between (so a soft edge
    still leaves exact zeros outside it)."""
    u = np.clip(0.5 + 0.5 * d / width, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def random_anatomy_phantoms(n: int, img_size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` anatomy-like phantoms with values in [0, 1] (see the module docstring);
    returns float32 ``(n, channels, img_size, img_size)``. Rows run along :math:`y`,
    columns along :math:`x`, both from −1 to 1 at pixel centres. Drawn in chunks of
    ``_CHUNK`` phantoms, which bounds memory."""
    out = np.empty((n, channels, img_size, img_size), dtype=np.float32)
    for s in range(0, n, _CHUNK):
        out[s:s + _CHUNK] = _draw(min(_CHUNK, n - s), img_size, channels, rng)
    return out


def _draw(n: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    pixel = 2.0 / size
    t = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    gy, gx = np.meshgrid(t, t, indexing="ij")
    rad = np.sqrt(gx ** 2 + gy ** 2)[None]
    phi = np.arctan2(gy, gx)[None]

    # Outline: a star-shaped curve, at most 0.95 from the centre.
    base = rng.uniform(0.72, 0.86, size=(n, 1, 1))
    amp = rng.uniform(0.0, 0.06, size=(n, 4)) / np.arange(1, 5)
    phase = rng.uniform(0.0, 2 * np.pi, size=(n, 4))
    wobble = sum(amp[:, j, None, None] * np.cos((j + 2) * phi + phase[:, j, None, None]) for j in range(4))
    outline = np.minimum(base * (1.0 + wobble), 0.95)
    depth = outline - rad  # > 0 inside, in field units
    body = _soft_step(depth, 0.5 * pixel)
    rim_width = rng.uniform(0.03, 0.08, size=(n, 1, 1))
    rim = 1.0 - _soft_step(depth - rim_width, 0.5 * pixel)

    # Folded tissue: a band-pass field cut into three classes by two soft thresholds.
    low = rng.uniform(3.0, 6.0, size=n)
    folds = _random_fields(n, size, rng, low, low + rng.uniform(1.0, 3.0, size=n))
    cut = rng.uniform(-0.6, 0.0, size=(n, 1, 1))
    step = rng.uniform(0.5, 1.2, size=(n, 1, 1))
    edge = 0.15 * folds.std()
    upper = _soft_step(folds - cut - step, edge)
    middle = _soft_step(folds - cut, edge) - upper
    shading = _random_fields(n, size, rng, np.zeros(n), np.full(n, 1.0))
    texture = _random_fields(n, size, rng, np.full(n, size / 4), np.full(n, size / 2))

    # Soft ellipses inside the body: ventricles (dark) or lesions (bright).
    r = 0.6 * base[:, None] * np.sqrt(rng.uniform(size=(n, _N_BLOBS, 1, 1)))
    ang = rng.uniform(0.0, 2 * np.pi, size=(n, _N_BLOBS, 1, 1))
    theta = rng.uniform(0.0, np.pi, size=(n, _N_BLOBS, 1, 1))
    a = np.exp(rng.uniform(np.log(0.03), np.log(0.18), size=(n, _N_BLOBS, 1, 1)))
    b = a * rng.uniform(0.3, 1.0, size=(n, _N_BLOBS, 1, 1))
    dx, dy = gx[None, None] - r * np.cos(ang), gy[None, None] - r * np.sin(ang)
    u = (np.cos(theta) * dx + np.sin(theta) * dy) / a
    w = (-np.sin(theta) * dx + np.cos(theta) * dy) / b
    blobs = _soft_step(1.0 - np.sqrt(u ** 2 + w ** 2), 0.7 * pixel / b)  # (n, E, H, W)
    active = rng.uniform(size=(n, _N_BLOBS, 1, 1)) < 0.6

    out = np.empty((n, channels, size, size), dtype=np.float32)
    for c in range(channels):
        dark, mid, bright = (rng.uniform(lo, hi, size=(n, 1, 1)) for lo, hi in ((0.05, 0.3), (0.35, 0.6),
                                                                                 (0.65, 0.95)))
        tissue = dark + middle * (mid - dark) + upper * (bright - dark)
        blob_value = rng.uniform(-0.5, 0.4, size=(n, _N_BLOBS, 1, 1)) * active
        tissue = tissue + (blobs * blob_value).sum(axis=1)
        v_rim = rng.uniform(0.3, 1.0, size=(n, 1, 1))
        shade = rng.uniform(0.1, 0.25, size=(n, 1, 1)) * shading
        grain = rng.uniform(0.01, 0.04, size=(n, 1, 1)) * texture
        x = body * (((1.0 - rim) * tissue + rim * v_rim) * (1.0 + shade) + grain)
        out[:, c] = np.clip(x, 0.0, 1.0)
    return out
