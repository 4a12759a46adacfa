r"""Built-in random phantoms, generated once and cached as HDF5: random ellipses (Shepp-Logan
style, ``kind="ellipses"``, below), anatomy-like images (``kind="anatomy"``, see
:mod:`eqdeq_cli.data.anatomy`), or both (``kind="mixed"``: every other image of a split is
an ellipse phantom, the others anatomy-like; the default data, ``data=mixed``).

Each image lives on the square :math:`[-1, 1]^2` sampled at pixel centres and is a sum
of indicator functions of ellipses,

.. math::

    x(p) = \operatorname{clip}_{[0,1]}\Big(\sum_e v_e\,
           \mathbb 1\big[(u_e(p)/a_e)^2 + (w_e(p)/b_e)^2 \le 1\big]\Big),

where :math:`(u_e, w_e)` are the coordinates of :math:`p` in the frame of ellipse
:math:`e` (centre :math:`c_e`, rotated by :math:`\theta_e`) and :math:`a_e, b_e` its
semi-axes. Every phantom has

* an outer body ellipse with a bright rim (intensity 0.8–1), randomly oriented, that
  stays inside the unit disc (so a parallel-beam CT scan sees all of it);
* a darker interior (0.1–0.35) — the same ellipse shrunk by 5–12 %;
* 3–10 small inner features (semi-axes 0.03–0.3, log-uniform) inside the interior,
  each adding an intensity in [−0.15, 0.45] (dark and bright lesions).

The distribution is invariant to rotations and reflections about the centre, which is
what equivariant-imaging losses exploit. With ``channels > 1`` all channels share the
geometry and each draws its own intensities (a multi-contrast phantom).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ..utils.files import atomic_path
from .anatomy import random_anatomy_phantoms
from .base import SPLITS, DataSource, TensorDictDataset, check_split_name, default_cache_dir

log = logging.getLogger(__name__)

#: Bump whenever a generator's output changes (either kind), so stale cache files are not reused.
GENERATOR_VERSION = 1

_MAX_FEATURES = 10
_MIN_FEATURES = 3


def _sample_ellipses(n: int, channels: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Ellipse parameters for ``n`` phantoms: arrays of shape ``(n, E)`` (``values``: ``(n, E, C)``)."""
    n_ell = 2 + _MAX_FEATURES
    cx = np.empty((n, n_ell))
    cy = np.empty((n, n_ell))
    a = np.empty((n, n_ell))
    b = np.empty((n, n_ell))
    theta = np.empty((n, n_ell))
    values = np.zeros((n, n_ell, channels))

    # Body: rim ellipse, then the interior (same centre and angle, shrunk), additive.
    c0 = rng.uniform(-0.05, 0.05, size=(n, 2))
    a0 = rng.uniform(0.62, 0.85, size=n)
    b0 = rng.uniform(0.75, 0.90, size=n)
    th0 = rng.uniform(0.0, np.pi, size=n)
    shrink = rng.uniform(0.88, 0.95, size=n)
    v_rim = rng.uniform(0.8, 1.0, size=(n, channels))
    v_in = rng.uniform(0.1, 0.35, size=(n, channels))
    cx[:, :2] = c0[:, :1]
    cy[:, :2] = c0[:, 1:]
    a[:, 0], b[:, 0] = a0, b0
    a[:, 1], b[:, 1] = a0 * shrink, b0 * shrink
    theta[:, :2] = th0[:, None]
    values[:, 0] = v_rim
    values[:, 1] = v_in - v_rim

    # Inner features: centres uniform in 85 % of the interior ellipse.
    k = 2 + np.arange(_MAX_FEATURES)
    r = 0.85 * np.sqrt(rng.uniform(size=(n, _MAX_FEATURES)))
    phi = rng.uniform(0.0, 2 * np.pi, size=(n, _MAX_FEATURES))
    lx = r * np.cos(phi) * a[:, 1:2]
    ly = r * np.sin(phi) * b[:, 1:2]
    cos0, sin0 = np.cos(th0)[:, None], np.sin(th0)[:, None]
    cx[:, k] = c0[:, :1] + cos0 * lx - sin0 * ly
    cy[:, k] = c0[:, 1:] + sin0 * lx + cos0 * ly
    a[:, k] = np.exp(rng.uniform(np.log(0.03), np.log(0.3), size=(n, _MAX_FEATURES)))
    b[:, k] = a[:, k] * rng.uniform(0.3, 1.0, size=(n, _MAX_FEATURES))
    theta[:, k] = rng.uniform(0.0, np.pi, size=(n, _MAX_FEATURES))
    count = rng.integers(_MIN_FEATURES, _MAX_FEATURES + 1, size=n)
    active = np.arange(_MAX_FEATURES)[None, :] < count[:, None]
    values[:, k] = rng.uniform(-0.15, 0.45, size=(n, _MAX_FEATURES, channels)) * active[..., None]
    return {"cx": cx, "cy": cy, "a": a, "b": b, "theta": theta, "values": values}


def random_ellipse_phantoms(n: int, img_size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` phantoms with values in [0, 1]; returns float32 ``(n, channels, img_size, img_size)``.

    Rows run along :math:`y`, columns along :math:`x`, both from −1 to 1 at pixel centres.
    Rasterisation is vectorised over phantoms and ellipses, in chunks that bound memory.
    """
    p = _sample_ellipses(n, channels, rng)
    t = ((np.arange(img_size) + 0.5) / img_size * 2.0 - 1.0).astype(np.float32)
    gx, gy = t[None, None, None, :], t[None, None, :, None]
    out = np.empty((n, channels, img_size, img_size), dtype=np.float32)
    n_ell = p["cx"].shape[1]
    chunk = max(1, (1 << 23) // (n_ell * img_size * img_size))
    for s in range(0, n, chunk):
        sl = slice(s, s + chunk)
        f = {key: v[sl].astype(np.float32) for key, v in p.items()}
        cos, sin = np.cos(f["theta"])[..., None, None], np.sin(f["theta"])[..., None, None]
        dx = gx - f["cx"][..., None, None]
        dy = gy - f["cy"][..., None, None]
        u = (cos * dx + sin * dy) / f["a"][..., None, None]
        w = (-sin * dx + cos * dy) / f["b"][..., None, None]
        inside = (u * u + w * w <= 1.0).astype(np.float32)  # (n, E, H, W)
        out[sl] = np.einsum("nehw,nec->nchw", inside, f["values"])
    np.clip(out, 0.0, 1.0, out=out)
    return out


def random_mixed_phantoms(n: int, img_size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` phantoms of both families, float32 ``(n, channels, img_size, img_size)`` in [0, 1]:
    images ``0, 2, 4, …`` are ellipse phantoms, ``1, 3, 5, …`` anatomy-like ones (drawn in that
    order from ``rng``: first the ``⌈n/2⌉`` ellipse phantoms, then the others). A model trained on
    flat, sharp-edged ellipses alone learns them well and transfers poorly to smooth anatomy;
    one trained on the anatomy-like images alone learns little it can show on the ellipses'
    sharp edges; the mix learns both (README, Results)."""
    out = np.empty((n, channels, img_size, img_size), dtype=np.float32)
    n_ellipses = (n + 1) // 2
    out[0::2] = random_ellipse_phantoms(n_ellipses, img_size, channels, rng)
    out[1::2] = random_anatomy_phantoms(n - n_ellipses, img_size, channels, rng)
    return out


#: The phantom families: ``kind`` → generator ``(n, img_size, channels, rng) -> (n, C, H, W)``.
GENERATORS = {"ellipses": random_ellipse_phantoms, "anatomy": random_anatomy_phantoms,
              "mixed": random_mixed_phantoms}


def _split_rng(seed: int, split: str) -> np.random.Generator:
    """An independent stream per (seed, split): ``SeedSequence(seed, spawn_key=(index,))``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split),)))


class PhantomData(DataSource):
    """Random phantoms (``kind``: ``"ellipses"``, ``"anatomy"`` or ``"mixed"``, both families
    alternating) with disjoint, seeded train / val / test splits.

    The three splits are generated once per parameter set and stored as one HDF5 file
    ``phantoms-v<version>-<img_size>px-<hash>.h5`` in ``cache_dir`` (default
    ``$EQDEQ_CACHE_DIR``, else ``~/.cache/eqdeq``); the hash covers every generation
    parameter and the generator version, so changing any of them regenerates. The file
    is written to a temporary name and renamed, so concurrent jobs never see a partial
    file. Everything is loaded into memory as float32 tensors ``(N, C, H, W)``.

    Example::

        data = PhantomData(img_size=32, n_train=8, n_val=4, n_test=4, cache_dir="/tmp/c")
        data.split("train")[0]["x"].shape   # torch.Size([1, 32, 32])
    """

    has_images = True
    has_measurements = False

    def __init__(self, *, img_size: int = 64, channels: int = 1, n_train: int = 256, n_val: int = 32,
                 n_test: int = 32, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                 kind: str = "ellipses") -> None:
        if kind not in GENERATORS:
            raise ValueError(f"unknown data.kind={kind!r}; valid kinds are {', '.join(map(repr, GENERATORS))}")
        self.kind = kind
        if int(img_size) < 8:
            raise ValueError(f"img_size must be an integer >= 8, got {img_size!r}")
        if int(channels) < 1:
            raise ValueError(f"channels must be an integer >= 1, got {channels!r}")
        counts = {"n_train": n_train, "n_val": n_val, "n_test": n_test}
        for key, value in counts.items():
            if int(value) < 0:
                raise ValueError(f"{key} must be a non-negative integer, got {value!r}")
        if int(n_train) < 1:
            raise ValueError(f"n_train must be at least 1, got {n_train!r}")
        self.img_size = int(img_size)
        self.channels = int(channels)
        self.seed = int(seed)
        self.counts = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.cache_path = self.cache_dir / self._file_name()
        self._images = self._load_or_generate()

    # -- cache -----------------------------------------------------------------
    def generation_params(self) -> dict:
        """Every parameter that determines the generated images (hashed into the file name)."""
        return {"generator_version": GENERATOR_VERSION, "kind": self.kind, "img_size": self.img_size,
                "channels": self.channels,
                "seed": self.seed, "n_train": self.counts["train"], "n_val": self.counts["val"],
                "n_test": self.counts["test"]}

    def _params_json(self) -> str:
        return json.dumps(self.generation_params(), sort_keys=True)

    def _file_name(self) -> str:
        digest = hashlib.sha256(self._params_json().encode()).hexdigest()[:16]
        return f"phantoms-v{GENERATOR_VERSION}-{self.img_size}px-{digest}.h5"

    def _load_or_generate(self) -> dict[str, torch.Tensor]:
        if self.cache_path.exists():
            try:
                images = self._read(self.cache_path)
                log.info("Reusing cached phantoms %s", self.cache_path)
                return images
            except (OSError, KeyError, ValueError) as err:
                log.warning("Cached phantom file %s is unreadable (%s); regenerating", self.cache_path, err)
        log.info("Generating phantoms %s into %s", self.generation_params(), self.cache_path)
        generate = GENERATORS[self.kind]
        arrays = {s: generate(self.counts[s], self.img_size, self.channels, _split_rng(self.seed, s)) for s in SPLITS}
        self._write_atomic(arrays)
        return {s: torch.from_numpy(v) for s, v in arrays.items()}

    def _read(self, path: Path) -> dict[str, torch.Tensor]:
        with h5py.File(path, "r") as f:
            if f.attrs.get("params") != self._params_json():
                raise ValueError("generation parameters stored in the file differ")
            images = {s: torch.from_numpy(np.asarray(f[s][...], dtype=np.float32)) for s in SPLITS}
        for s, x in images.items():
            expected = (self.counts[s], self.channels, self.img_size, self.img_size)
            if tuple(x.shape) != expected:
                raise ValueError(f"split {s!r} has shape {tuple(x.shape)}, expected {expected}")
        return images

    def _write_atomic(self, arrays: dict[str, np.ndarray]) -> None:
        with atomic_path(self.cache_path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["params"] = self._params_json()
            for s, v in arrays.items():
                f.create_dataset(s, data=v)

    # -- interface ----------------------------------------------------------------
    def split(self, name: str) -> TensorDictDataset:
        """The phantoms of split ``name`` as a dataset of ``{"x": (C, H, W) float32}`` items."""
        check_split_name(name)
        if self.counts[name] == 0:
            raise ValueError(f"split {name!r} is empty (n_{name}=0); set n_{name} to a positive number")
        return TensorDictDataset({"x": self._images[name]})
