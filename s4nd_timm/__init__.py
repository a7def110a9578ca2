"""s4nd-timm: S4ND multidimensional state-space layers and vision models for timm."""
__version__ = '0.1.0'

from .layers import S4ND
from . import models  # noqa: F401  (registers the s4nd_* models with timm)
from . import hub  # noqa: F401  (s4nd_timm.hub.save_pretrained, PretrainedWeightsError, ...)
from .models import inflate_2d_to_3d

__all__ = ['S4ND', 'inflate_2d_to_3d', '__version__']
