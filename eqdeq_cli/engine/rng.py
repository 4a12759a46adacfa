"""Seeding, the seeded order of the training data, and random-number-generator state that survives a checkpoint.

Every RNG state is stored as plain data (tensors, lists, tuples, ints), so a checkpoint
loads with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_order(n_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch ``epoch`` visits ``n_samples`` samples.

    A permutation drawn from a fresh generator seeded by ``(seed, epoch)`` only, so a
    resumed run needs no sampler state to visit the same samples in the same order.
    """
    g = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n_samples, generator=g)


def capture_rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The state of every global RNG, plus the named (CPU) generators, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng_state`; ``generators`` are restored in place. The byte
    tensors may sit on any device (a checkpoint loaded with ``map_location="cuda"``): the
    setters read them from the CPU."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for name, g in (generators or {}).items():
        if name not in state["generators"]:
            raise KeyError(f"checkpoint holds no state for the generator {name!r}; "
                           f"it has {sorted(state['generators'])}")
        g.set_state(state["generators"][name].cpu())
