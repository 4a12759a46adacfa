"""Base class for symmetry groups acting on images ``(B, C, H, W)``."""
from __future__ import annotations

import torch


class Group:
    """A group of image transforms ``T_g``, sampled independently for each sample.

    Subclasses implement :meth:`sample` (one element per sample, as a tensor whose
    first dimension is the batch) and :meth:`apply` / :meth:`apply_inverse`.
    """

    def sample(self, batch_size: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply_inverse(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply a freshly sampled element per sample; returns ``(T_g x, g)``."""
        g = self.sample(x.shape[0], generator=generator, device=x.device)
        return self.apply(x, g), g
