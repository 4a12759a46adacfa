"""Denoiser backbones ``(B, C, H, W) → (B, C, H, W)``, built as ``instantiate(cfg.model, channels=C)``."""
from .dncnn import DnCNN
from .spectral import ConvOperatorNorm, conv_operator_norm
from .unet import UNet

__all__ = ["DnCNN", "UNet", "ConvOperatorNorm", "conv_operator_norm"]
