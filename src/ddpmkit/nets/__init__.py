"""Noise-prediction networks."""

from .unet import PRESETS, UNet, build_unet, count_parameters

__all__ = ["UNet", "PRESETS", "build_unet", "count_parameters"]
