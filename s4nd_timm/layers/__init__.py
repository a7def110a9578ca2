"""S4ND layers."""
from .dplr import DPLRAxisKernel
from .s4nd import LAYOUTS, RESOLUTIONS, S4ND, resolution_rates
from .ssm import DiagAxisKernel

__all__ = ['S4ND', 'DiagAxisKernel', 'DPLRAxisKernel', 'LAYOUTS', 'RESOLUTIONS', 'resolution_rates']
