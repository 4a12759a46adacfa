"""Checkpoints: written atomically, read back with ``weights_only=True``.

A checkpoint is a dict of plain data and tensors:

``model``, ``optimizer``, ``scheduler`` (state dicts), ``step`` (optimizer steps
taken), ``rng`` (see :mod:`eqdeq_cli.engine.rng`), ``config`` (the resolved run
config as plain containers), ``best`` (best monitored value and its step),
``bad_steps``, ``train_time_s`` and ``format`` (:data:`FORMAT`). The model's state is
:func:`model_state`: the learned tensors only, without the operator's buffers.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..deq import DEQ
from ..errors import CheckpointError
from ..physics.base import LinearPhysics
from ..utils.files import atomic_write

#: Version of the checkpoint layout; bumped when it changes incompatibly.
FORMAT = 1
REQUIRED_KEYS = ("model", "step", "config")


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder + ``os.replace``).

    A crash while writing leaves the previous file at ``path`` intact.
    """
    with atomic_write(path, "wb") as fh:
        torch.save({"format": FORMAT, **payload}, fh)
    return Path(path)


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` itself if it is a file; ``path/checkpoints/last.pt`` if it is a run directory."""
    p = Path(path).expanduser()
    if p.is_dir():
        candidate = p / "checkpoints" / "last.pt"
        if candidate.is_file():
            return candidate
        raise CheckpointError(f"no checkpoint found: {str(p)!r} is a directory without checkpoints/last.pt")
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {str(p)!r} (give a .pt file or a run directory)")
    return p


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an eqdeq checkpoint (a ``.pt`` file or a run directory) with ``weights_only=True``.

    Raises :class:`~eqdeq_cli.errors.CheckpointError` with a clear message when the file is
    missing, truncated or corrupt, or not an eqdeq checkpoint.
    """
    p = resolve_checkpoint_path(path)
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for damaged files
        others = "; ".join(f"{q} (step {step})" for q, step in readable_beside(p))
        raise CheckpointError(f"cannot read checkpoint {str(p)!r}: the file is corrupt or not a "
                              f"PyTorch checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                              + (f"; readable beside it: {others}" if others else "")) from exc
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        raise CheckpointError(f"{str(p)!r} is not an eqdeq checkpoint: expected a dict with keys {list(REQUIRED_KEYS)}")
    if not isinstance(payload["config"], dict):
        raise CheckpointError(f"{str(p)!r} is not an eqdeq checkpoint: its config is a "
                              f"{type(payload['config']).__name__}, not a mapping")
    if payload.get("format", 0) > FORMAT:
        raise CheckpointError(f"{str(p)!r} was written by a newer eqdeq (format {payload['format']} > {FORMAT})")
    return payload


def readable_beside(path: str | os.PathLike) -> list[tuple[Path, int]]:
    """The other readable checkpoints (``*.pt``) in ``path``'s folder, as ``(file, step)``, most steps first.

    What to offer when ``path`` cannot be read: in a run's ``checkpoints/``, ``best.pt`` (which
    may be older than ``last.pt``).
    """
    found = []
    for other in sorted(Path(path).parent.glob("*.pt")):
        if other == Path(path):
            continue
        try:
            payload = torch.load(other, map_location="cpu", weights_only=True)
            found.append((other, int(payload["step"])))
        except Exception:  # unreadable too: nothing to offer
            continue
    return sorted(found, key=lambda item: -item[1])


def model_state(deq: DEQ) -> dict[str, torch.Tensor]:
    """``deq.state_dict()`` without the physics' buffers (rebuilt from the config, never learned)."""
    prefixes = tuple(f"{name}." for name, m in deq.named_modules() if isinstance(m, LinearPhysics) and name)
    return {k: v for k, v in deq.state_dict().items() if not k.startswith(prefixes)}


def load_model_state(deq: DEQ, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`model_state` dict; every learned tensor must be present and of the same shape.

    Raises ``ValueError`` naming the missing, unexpected or differently shaped parameters.
    """
    own = deq.state_dict()
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if shapes:
        more = f" and {len(shapes) - 3} more" if len(shapes) > 3 else ""
        raise ValueError(f"checkpoint does not match the model built from the config: parameter shapes differ "
                         f"(checkpoint vs config) for {', '.join(shapes[:3])}{more} "
                         "(was it trained with another model / map, e.g. model.width or model.depth?)")
    missing, unexpected = deq.load_state_dict(state, strict=False)
    learned = set(model_state(deq))
    missing = [k for k in missing if k in learned]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model built from the config: missing {missing[:5]}, "
                         f"unexpected {list(unexpected)[:5]} (was it trained with another model / map?)")
