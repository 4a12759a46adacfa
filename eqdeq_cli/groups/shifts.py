r"""Circular integer shifts :math:`(T_g x)[i, j] = x[(i - g_0) \bmod H, (j - g_1) \bmod W]`."""
from __future__ import annotations

import torch

from ..utils.checks import check_int
from .base import Group, check_images, randint

_FULL_RANGE = 2**40


class Shifts(Group):
    """Circular shifts in both image axes, one ``(dy, dx)`` per sample (``g``: ``(B, 2)`` int64).

    Args:
        max_shift: shifts are uniform integers in ``[-max_shift, max_shift]`` in each axis;
            ``None`` (default): any shift, uniform over the whole group ``[0, H) × [0, W)``
            (elements are in that range when ``sample`` is given ``img_size``, else large
            integers that :meth:`apply` reduces modulo ``(H, W)``).

    Same convention as ``torch.roll(x, shifts=(dy, dx), dims=(-2, -1))``.

    Example:
        >>> x = torch.arange(16.).reshape(1, 1, 4, 4)
        >>> torch.equal(Shifts().apply(x, torch.tensor([[1, 2]])), torch.roll(x, (1, 2), (-2, -1)))
        True
    """

    def __init__(self, *, max_shift: int | None = None) -> None:
        if max_shift is not None:
            check_int("Shifts: max_shift (null: any shift)", max_shift, 1)
        self.max_shift = max_shift

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None,
               img_size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.max_shift is not None:
            return randint(-self.max_shift, self.max_shift + 1, (batch_size, 2), generator, device)
        # Any shift: integers uniform in [0, 2⁴⁰), reduced modulo (H, W) — uniform over the
        # group up to H/2⁴⁰. Reduced here when img_size is known (readable elements, the same
        # group element either way); otherwise apply() reduces them.
        g = randint(0, _FULL_RANGE, (batch_size, 2), generator, None)
        if img_size is not None:
            g = g % torch.tensor([int(img_size[0]), int(img_size[1])])
        return g.to(device or "cpu")

    def apply(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        check_images("Shifts", x, g)
        return _roll_per_sample(x, g.to(x.device))

    def apply_inverse(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        check_images("Shifts", x, g)
        return _roll_per_sample(x, -g.to(x.device))

    def __repr__(self) -> str:
        return f"Shifts(max_shift={self.max_shift})"


def _roll_per_sample(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``torch.roll`` with a different ``(dy, dx)`` per sample, by two gathers."""
    b, c, h, w = x.shape
    rows = (torch.arange(h, device=x.device)[None, :] - g[:, :1]) % h  # (B, H)
    cols = (torch.arange(w, device=x.device)[None, :] - g[:, 1:]) % w  # (B, W)
    x = torch.gather(x, 2, rows[:, None, :, None].expand(b, c, h, w))
    return torch.gather(x, 3, cols[:, None, None, :].expand(b, c, h, w))
