"""The data-source interface shared by every dataset, and small helpers.

A *data source* is built from a ``configs/data/*.yaml`` node and hands out one
:class:`torch.utils.data.Dataset` per split (``"train"``, ``"val"``, ``"test"``).
Items are dicts of float32 tensors: ``{"x": (C, H, W)}`` for images,
``{"y": measurement}`` for measurement-only data, both keys when both exist.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

SPLITS: tuple[str, ...] = ("train", "val", "test")


def check_split_name(name: str) -> str:
    """Return ``name`` if it is a valid split, else raise a ``ValueError`` listing the valid ones."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; valid splits are {', '.join(repr(s) for s in SPLITS)}")
    return name


def default_cache_dir() -> Path:
    """``$EQDEQ_CACHE_DIR`` if set, else ``~/.cache/eqdeq`` (``~`` expanded)."""
    env = os.environ.get("EQDEQ_CACHE_DIR")
    return Path(env).expanduser() if env else Path("~/.cache/eqdeq").expanduser()


class TensorDictDataset(Dataset):
    """A map-style dataset over tensors that share their first (sample) dimension.

    ``dataset[i]`` is ``{key: tensor[i] for key, tensor in tensors.items()}``.
    """

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            raise ValueError("TensorDictDataset needs at least one tensor")
        lengths = {k: int(v.shape[0]) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"tensors must have the same number of samples, got {lengths}")
        self.tensors = dict(tensors)
        self._len = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}


class DataSource:
    """Base class of data sources.

    Attributes
    ----------
    img_size:
        Side of the square images ``H = W`` in pixels.
    channels:
        Number of image channels ``C``.
    has_images:
        Whether items carry ground-truth images under ``"x"``.
    has_measurements:
        Whether items carry stored measurements under ``"y"``.
    """

    img_size: int
    channels: int
    has_images: bool = True
    has_measurements: bool = False

    def split(self, name: str) -> Dataset:
        """The dataset of split ``name`` (one of ``"train"``, ``"val"``, ``"test"``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(img_size={self.img_size}, channels={self.channels}, "
                f"has_images={self.has_images}, has_measurements={self.has_measurements})")
