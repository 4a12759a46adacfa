"""The fixed set of measurements a run trains and evaluates on.

In practice a measurement set is acquired once: each ``y`` carries one draw of the
noise. The runner mirrors this by simulating ``y = physics(x, generator)`` **once** per
split at start-up, from a CPU generator seeded per split, and keeps the result in
memory. Data sources that already store measurements (``"y"``) are used as they are.
"""
from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from ..data import TensorDictDataset
from ..physics.base import LinearPhysics

log = logging.getLogger(__name__)


def stack_dataset(dataset: Dataset, keys: tuple[str, ...] = ("x", "y")) -> dict[str, torch.Tensor]:
    """All items of ``dataset`` stacked along a new first axis, for the ``keys`` present."""
    if isinstance(dataset, TensorDictDataset):
        return {k: v for k, v in dataset.tensors.items() if k in keys}
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        return {}
    items = [dataset[i] for i in range(n)]
    return {k: torch.stack([it[k] for it in items]) for k in keys if k in items[0]}


@torch.no_grad()
def simulate_measurements(dataset: Dataset, physics: LinearPhysics, *, seed: int, batch_size: int = 64,
                          split: str = "") -> TensorDictDataset:
    """A dataset of ``{"x", "y"}`` (or ``{"y"}``) items with ``y`` fixed once.

    Items with a stored ``"y"`` keep it (checked against ``physics.meas_shape``); items
    with only ``"x"`` get ``y = physics(x, generator)`` with a CPU generator seeded by
    ``seed``, computed in batches of ``batch_size`` in sample order (so the result does
    not depend on how the training loop batches later). ``physics`` must be on the CPU.

    Raises ``ValueError`` when the images do not have the operator's shape or the split
    is empty.
    """
    tensors = stack_dataset(dataset)
    if not tensors:
        raise ValueError(f"the {split or 'data'} split is empty; the data config must provide samples for it")
    if "x" in tensors:
        x = tensors["x"].float()
        if tuple(x.shape[1:]) != tuple(physics.img_shape):
            raise ValueError(
                f"{split} images have shape {tuple(x.shape[1:])} (C, H, W) but the operator "
                f"{type(physics).__name__} expects {tuple(physics.img_shape)}; set data.img_size / data.channels "
                f"to match, or the physics' img_size / channels")
        tensors["x"] = x
    if "y" in tensors:
        physics.check_measurement(tensors["y"])
        return TensorDictDataset(tensors)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    ys = [physics(x[i:i + batch_size], generator=g) for i in range(0, x.shape[0], batch_size)]
    tensors["y"] = torch.cat(ys)
    log.info("simulated %d %s measurements of shape %s (noise seed %d)", x.shape[0], split,
             tuple(tensors["y"].shape[1:]), seed)
    return TensorDictDataset(tensors)
