"""s4nd-timm: S4ND multidimensional state-space layers and vision models for timm."""
__version__ = '0.1.0'

from .layers import S4ND

__all__ = ['S4ND', '__version__']
