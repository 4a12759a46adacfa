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
        identity: draw the identity too. Off by default: with ``x₂ = x₁`` the EI term sees
            nothing ``A`` hides (it only asks for stability to a new noise draw), so an identity
            draw wastes its sample, as for rotations (``Rotations(turns=...)``). Without it,
            ``axes="horizontal"`` (``"vertical"``) flips every sample.

    Elements are uniform over the drawn ones. Every element is its own inverse.

    Raises:
        ValueError: an unknown ``axes``.
    """

    def __init__(self, *, axes: str = "both", identity: bool = False) -> None:
        if axes not in _AXES:
            raise ValueError(f"Reflections: axes must be one of {', '.join(_AXES)}, got {axes!r}")
        self.axes = axes
        self.identity = bool(identity)
        flips = {"horizontal": [(True, False)], "vertical": [(False, True)],
                 "both": [(True, False), (False, True), (True, True)]}[axes]
        #: The drawn elements, one row each.
        self.elements = torch.tensor(([(False, False)] if self.identity else []) + flips, dtype=torch.bool)

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None,
               img_size: tuple[int, int] | None = None) -> torch.Tensor:
        index = randint(0, len(self.elements), (batch_size,), generator, None)
        return self.elements[index].to(device or "cpu")

    def apply(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        check_images("Reflections", x, g)
        g = g.to(x.device).bool()
        x = torch.where(g[:, 0, None, None, None], x.flip(-1), x)
        return torch.where(g[:, 1, None, None, None], x.flip(-2), x)

    def apply_inverse(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.apply(x, g)

    def __repr__(self) -> str:
        return f"Reflections(axes={self.axes!r}, identity={self.identity})"
