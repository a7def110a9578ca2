"""S4ND layers."""
from .s4nd import S4ND
from .ssm import DiagAxisKernel

__all__ = ['S4ND', 'DiagAxisKernel']
