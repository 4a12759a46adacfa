r"""Axial slices of the MNI ICBM152 2009 T1 brain template, shipped inside nilearn's wheel.

The template (Fonov et al., "Unbiased average age-appropriate atlases for pediatric
studies", NeuroImage 2011; Fonov et al., OHBM 2009) is the skull-stripped average of 152
adult T1-weighted MR scans on a 1 mm grid of 197 × 233 × 189 voxels. nilearn's
``load_mni152_template`` reads it from the package's own data folder: nothing is
downloaded, so the slices are the same on every machine with the ``brain`` extra
(``pip install 'eqdeq[brain]'``).

From the volume to images ``(1, img_size, img_size)``:

1. Each axial plane ``volume[:, :, z]`` is turned so that rows run posterior → anterior
   from the bottom (anterior at the top) and columns left → right.
2. Every plane is cut to one square, centred on the centre of the brain's bounding box,
   whose inscribed disc holds every non-zero voxel of the volume: a parallel-beam scan of
   any angle, and any rotation about the centre, sees the whole brain.
3. The square is area-averaged to ``img_size × img_size`` and scaled so that the
   volume's brightest voxel is ``data_range`` (one scale for all slices, as in one scan).
4. Slices whose brain area is below ``min_area_fraction`` of the largest one (the top of
   the head and the base of the skull, mostly empty) are left out.

**Splits without leakage.** Neighbouring slices are 1 mm apart, a third of a pixel at 64²:
two of them are near duplicates. The kept slices are cut into blocks of ``block_size``
consecutive slices; ``round(val_fraction · n_blocks)`` of them go to ``val`` and
``round(test_fraction · n_blocks)`` to ``test`` (at least one each when the fraction is
positive), spread evenly along the head (alternately test, val, …) so that held-out
slices come from several levels of the brain; the others go to ``train``. Then ``gap`` slices are
dropped at every boundary between two splits (from the train side, else from the later
block), so any two slices in different splits are more than ``gap`` mm apart. The split
is a fixed function of these parameters: no seed.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from ..errors import UserError
from ..utils.checks import check_int, check_real
from .base import SPLITS, DataSource, TensorDictDataset, check_split_name
from .preprocess import area_resize

log = logging.getLogger(__name__)

#: What to tell a user whose environment lacks nilearn.
INSTALL_HINT = "pip install 'eqdeq[brain]'"

#: Voxels above this fraction of the volume's maximum count as brain (the template is
#: skull-stripped: the background is exactly 0, the dimmest tissue near 0.1).
_BRAIN_THRESHOLD = 0.02


def load_template_volume() -> np.ndarray:
    """The MNI152 T1 template as float32 ``(197, 233, 189)`` ``(x: left → right, y: posterior →
    anterior, z: inferior → superior)``, 1 mm voxels, values in [0, 1].

    Raises :class:`~eqdeq_cli.errors.UserError` (one line, with the install command) when
    nilearn is not installed.
    """
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError as err:
        raise UserError(f"data=brain reads the MNI152 template shipped with nilearn, which is not installed "
                        f"({err}); install it with: {INSTALL_HINT}") from err
    return np.asarray(load_mni152_template(resolution=1).get_fdata(dtype=np.float32))


def axial_planes(volume: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` volume → ``(Z, Y, X)`` axial images, anterior at the top (row 0)."""
    return np.ascontiguousarray(np.transpose(volume, (2, 1, 0))[:, ::-1, :])


def square_field_of_view(planes: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """``(top, left, side)`` of the square, centred on the brain's bounding box, whose inscribed
    disc holds every voxel above ``threshold`` in ``planes`` ``(Z, H, W)``; it may reach outside
    the planes (padded with zeros by :func:`cut_square`)."""
    _, rows, cols = np.nonzero(planes > threshold)
    cy = (int(rows.min()) + int(rows.max())) / 2.0
    cx = (int(cols.min()) + int(cols.max())) / 2.0
    radius = float(np.sqrt((rows - cy) ** 2 + (cols - cx) ** 2).max()) + 1.0  # +1: a voxel is a square
    side = 2 * math.ceil(radius)
    return int(round(cy - side / 2.0)), int(round(cx - side / 2.0)), side


def cut_square(planes: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """The ``side × side`` window at ``(top, left)`` of every plane ``(Z, H, W)``, zero outside them."""
    z, h, w = planes.shape
    out = np.zeros((z, side, side), dtype=planes.dtype)
    r0, r1 = max(top, 0), min(top + side, h)
    c0, c1 = max(left, 0), min(left + side, w)
    out[:, r0 - top:r1 - top, c0 - left:c1 - left] = planes[:, r0:r1, c0:c1]
    return out


def block_split(n: int, *, block_size: int, val_fraction: float, test_fraction: float,
                gap: int) -> dict[str, np.ndarray]:
    """Indices ``0 … n−1`` of consecutive slices → ``{"train", "val", "test"}`` index arrays.

    Blocks of ``block_size`` consecutive indices; the held-out blocks are spread evenly
    (alternately test and val) and ``gap`` indices are dropped at each boundary between
    splits, so indices of different splits differ by more than ``gap``. Raises
    ``ValueError`` if a split would be empty or hold no train slice.
    """
    n_blocks = math.ceil(n / block_size)
    n_val = max(1, round(val_fraction * n_blocks)) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n_blocks)) if test_fraction > 0 else 0
    held = n_val + n_test
    if held >= n_blocks:
        raise ValueError(f"the brain data has {n} slices in {n_blocks} blocks of data.block_size={block_size}: "
                         f"too few to hold out {n_val} val and {n_test} test blocks and keep a train block; "
                         f"lower data.block_size, data.val_fraction or data.test_fraction")
    labels: list[str] = []
    left = {"test": n_test, "val": n_val}
    while any(left.values()):
        for name in ("test", "val"):
            if left[name]:
                labels.append(name)
                left[name] -= 1
    block_label = ["train"] * n_blocks
    for k, name in enumerate(labels):
        block_label[int((k + 0.5) * n_blocks / held)] = name
    label = np.array([block_label[i // block_size] for i in range(n)])
    keep = np.ones(n, dtype=bool)
    for i in np.nonzero(label[:-1] != label[1:])[0]:  # a boundary between slices i and i + 1
        if label[i] == "train":
            keep[max(0, i + 1 - gap):i + 1] = False
        else:
            keep[i + 1:i + 1 + gap] = False
    return {s: np.nonzero(keep & (label == s))[0] for s in SPLITS}


class BrainTemplateData(DataSource):
    """Axial slices of the MNI152 T1 template (see the module docstring): ``{"x": (1, H, W)}``
    float32 items in ``[0, data_range]``, with the slice-block split described there.

    Parameters
    ----------
    img_size:
        Side ``H = W`` of the images in pixels (≥ 8); the inscribed disc holds the whole
        brain, which spans about 97 % of the height (the 1 mm template's square is 186 voxels).
    channels:
        Must be 1 (one contrast); kept as a parameter because the physics configs read it.
    min_area_fraction:
        Slices whose brain area is below this fraction of the largest axial brain area
        are left out (0 keeps every slice that holds some brain).
    block_size, val_fraction, test_fraction, gap:
        The split: blocks of consecutive slices, the fractions of blocks held out, and the
        slices (mm) dropped at each boundary between splits.
    data_range:
        The images' range; the config sets it to ``evaluation.data_range``.

    Raises ``ValueError`` naming the key for a bad parameter, and
    :class:`~eqdeq_cli.errors.UserError` when nilearn is missing.

    Example::

        data = BrainTemplateData(img_size=64)
        len(data.split("train")), data.split("test")[0]["x"].shape   # (…, torch.Size([1, 64, 64]))
    """

    has_images = True
    has_measurements = False

    def __init__(self, *, img_size: int = 64, channels: int = 1, min_area_fraction: float = 0.2,
                 block_size: int = 12, val_fraction: float = 0.1, test_fraction: float = 0.2, gap: int = 3,
                 data_range: float = 1.0) -> None:
        self.img_size = check_int("data.img_size", img_size, 8)
        if channels != 1:
            raise ValueError(f"data.channels must be 1 for the brain template (one T1 contrast), got {channels!r}")
        self.channels = 1
        self.min_area_fraction = check_real("data.min_area_fraction", min_area_fraction, low=0.0, high=1.0,
                                            low_inclusive=True, high_inclusive=False)
        self.block_size = check_int("data.block_size", block_size, 1)
        self.val_fraction = check_real("data.val_fraction", val_fraction, low=0.0, high=1.0, low_inclusive=True,
                                       high_inclusive=False)
        self.test_fraction = check_real("data.test_fraction", test_fraction, low=0.0, high=1.0,
                                        low_inclusive=True, high_inclusive=False)
        self.gap = check_int("data.gap", gap, 0)
        self.data_range = check_real("data.data_range", data_range, low=0.0)

        planes = axial_planes(load_template_volume())
        peak = float(planes.max())
        brain = planes > _BRAIN_THRESHOLD * peak
        area = brain.sum(axis=(1, 2))
        kept = np.nonzero((area > 0) & (area >= self.min_area_fraction * area.max()))[0]
        kept = np.arange(kept.min(), kept.max() + 1)  # one contiguous run, so blocks are contiguous in z
        top, left, side = square_field_of_view(planes, 0.0)
        square = torch.from_numpy(cut_square(planes[kept], top, left, side))[:, None]
        images = area_resize(square, self.img_size).clamp_(0.0, peak) * (self.data_range / peak)

        #: Axial index (mm above the volume's lowest plane) of every image of each split.
        self.slice_index = {}
        self._images = {}
        for name, idx in block_split(len(kept), block_size=self.block_size, val_fraction=self.val_fraction,
                                     test_fraction=self.test_fraction, gap=self.gap).items():
            self.slice_index[name] = kept[idx]
            self._images[name] = images[torch.from_numpy(idx)].contiguous()
        log.info("MNI152 brain slices %s: %s", tuple(images.shape[-2:]),
                 ", ".join(f"{s} {len(v)}" for s, v in self.slice_index.items()))

    def split(self, name: str) -> TensorDictDataset:
        """The slices of split ``name`` as a dataset of ``{"x": (1, H, W) float32}`` items."""
        check_split_name(name)
        if len(self.slice_index[name]) == 0:
            raise ValueError(f"split {name!r} of the brain data is empty; raise data.{name}_fraction")
        return TensorDictDataset({"x": self._images[name]})
