"""Convolution and kernel-generation paths for S4ND (installed as ``s4nd_timm.kernels``)."""
from .separable_conv import separable_conv_ref

__all__ = ['separable_conv_ref']
