"""S4ND models registered with timm (every name starts with ``s4nd_``; ``timm.list_models('s4nd_*')``)."""
from ._export import FrozenAxisKernel, freeze_s4nd_kernels
from ._inflate import inflate_2d_to_3d
from .s4nd_convnext import S4NDConvNeXt
from .s4nd_iso import S4NDIsotropic
from .s4nd_vit import S4NDVisionTransformer

__all__ = [
    'FrozenAxisKernel', 'S4NDConvNeXt', 'S4NDIsotropic', 'S4NDVisionTransformer', 'freeze_s4nd_kernels',
    'inflate_2d_to_3d']
