"""S4ND layers."""
from .dplr import DPLRAxisKernel
from .s4nd import S4ND
from .ssm import DiagAxisKernel

__all__ = ['S4ND', 'DiagAxisKernel', 'DPLRAxisKernel']
