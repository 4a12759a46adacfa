"""Denoiser backbones ``(B, C, H, W) → (B, C, H, W)``, built as ``instantiate(cfg.model, channels=C)``."""
from .averaged import AveragedDenoiser, averaged_dncnn
from .dncnn import DnCNN
from .spectral import ConvOperatorNorm, conv_operator_norm
from .unet import UNet

__all__ = ["AveragedDenoiser", "DnCNN", "UNet", "ConvOperatorNorm", "averaged_dncnn", "conv_operator_norm"]
