"""Reflections (mirror flips) of images."""
from __future__ import annotations

import torch

from .base import Group, check_images, randint

_AXES = ("horizontal", "vertical", "both")


class Reflections(Group):
    """Mirror flips, one element per sample (``g``: ``(B, 2)`` bool = (flip left-right, flip up-down)).

    Args:
        axes: ``"horizontal"`` — {identity, left-right flip (reverses W)};
            ``"vertical"`` — {identity, up-down flip (reverses H)};
            ``"both"`` — the four elements {identity, left-right, up-down, both (= rotation by 180°)}.

    Elements are uniform over the group, identity included. Every element is its own inverse.
    """

    def __init__(self, *, axes: str = "both") -> None:
        if axes not in _AXES:
            raise ValueError(f"Reflections: axes must be one of {', '.join(_AXES)}, got {axes!r}")
        self.axes = axes

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None,
               img_size: tuple[int, int] | None = None) -> torch.Tensor:
        g = randint(0, 2, (batch_size, 2), generator, device).bool()
        if self.axes == "horizontal":
            g[:, 1] = False
        elif self.axes == "vertical":
            g[:, 0] = False
        return g

    def apply(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        check_images("Reflections", x, g)
        g = g.to(x.device).bool()
        x = torch.where(g[:, 0, None, None, None], x.flip(-1), x)
        return torch.where(g[:, 1, None, None, None], x.flip(-2), x)

    def apply_inverse(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.apply(x, g)

    def __repr__(self) -> str:
        return f"Reflections(axes={self.axes!r})"
