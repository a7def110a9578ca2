"""Convolution paths for S4ND (installed as ``s4nd_timm.kernels``).

This is the only module that knows about Triton: ``HAS_TRITON`` says whether it is installed, and the
Triton implementation is imported lazily on first use, so ``import s4nd_timm`` works on CPU-only torch
without Triton. ``TRITON_INTERPRET=1`` (set before the first Triton call) runs the Triton kernels on
CPU tensors through the Triton interpreter, for tests.

Paths: 'fft' (``separable_conv_ref``, the spec), 'matmul' (``separable_conv_matmul``, Toeplitz mode
products), 'triton' (fused kernels, CUDA or the interpreter). ``separable_conv(..., backend='auto')``
picks one per call, see ``select_backend``.
"""
import importlib
import importlib.util
import os
from typing import Optional, Sequence

from torch import Tensor

from .separable_conv import LAYOUTS, check_conv_args, separable_conv_matmul, separable_conv_ref, toeplitz

__all__ = [
    'BACKENDS', 'HAS_TRITON', 'LAYOUTS', 'MATMUL_MAX_LEN', 'separable_conv', 'separable_conv_matmul',
    'separable_conv_ref', 'select_backend', 'toeplitz', 'triton_interpret']

BACKENDS = ('auto', 'fft', 'matmul', 'triton')
HAS_TRITON = importlib.util.find_spec('triton') is not None

# 'auto' uses the matmul path while every axis is at most this long, the FFT path beyond.
# cpu: measured crossover (docs/benchmarks.md, benchmarks/bench_layer.py --section scaling).
# cuda: NOT measured yet (no GPU run); chosen from the FLOP model in performance.md §1.
MATMUL_MAX_LEN = {'cpu': 0, 'cuda': 256}
# and while the Toeplitz matrices (c * H * sum L_i^2 elements) stay below this many elements.
MATMUL_MAX_TOEPLITZ = 1 << 27


def triton_interpret() -> bool:
    """True when TRITON_INTERPRET=1: Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def _triton_impl():
    """The Triton implementation module, imported on first use (after TRITON_INTERPRET is read)."""
    if not HAS_TRITON:
        raise RuntimeError("backend='triton' needs Triton: pip install triton (Linux x86_64 wheels ship with torch), "
                           "or use backend='matmul' / 'fft'.")
    return importlib.import_module('.separable_conv_triton', __name__)


def _triton_usable(u: Tensor) -> bool:
    return HAS_TRITON and (u.device.type == 'cuda' or (triton_interpret() and u.device.type == 'cpu'))


def select_backend(u: Tensor, ks: Sequence[Tensor], layout: str = 'channels_first') -> str:
    """The path 'auto' takes for these arguments: 'triton', 'matmul' or 'fft'.

    Triton on CUDA when the fused kernel supports the shapes (``separable_conv_triton.fits``); otherwise
    matmul while every axis length is at most ``MATMUL_MAX_LEN[device]`` and the Toeplitz matrices fit
    ``MATMUL_MAX_TOEPLITZ`` elements; otherwise FFT.
    """
    spatial = [k.shape[-1] // 2 + 1 for k in ks]
    if u.device.type == 'cuda' and HAS_TRITON and _triton_impl().fits(u, ks, layout):
        return 'triton'
    limit = MATMUL_MAX_LEN.get(u.device.type, MATMUL_MAX_LEN['cuda'])
    toeplitz_elems = ks[0].shape[0] * ks[0].shape[1] * sum(n * n for n in spatial)
    if max(spatial) <= limit and toeplitz_elems <= MATMUL_MAX_TOEPLITZ:
        return 'matmul'
    return 'fft'


def separable_conv(
        u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor] = None, backend: str = 'auto',
        layout: str = 'channels_first') -> Tensor:
    """Linear separable convolution with per-axis two-sided kernels, through the chosen path.

    Args:
        u: (B, H, *spatial) for layout='channels_first', (B, *spatial, H) for 'channels_last';
            d = len(spatial) in 1..3.
        ks: d tensors, ks[i]: (c, H, 2 * L_i - 1), two-sided, index L_i - 1 = offset 0.
        D: (c, H) skip term, or None.
        backend: 'auto', 'fft', 'matmul' or 'triton' (see ``select_backend``).
        layout: 'channels_first' or 'channels_last'.
    Returns:
        (B, c * H, *spatial) or (B, *spatial, c * H), channel index c * H + h, dtype of u.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not supported; expected one of {BACKENDS}")
    check_conv_args(u, ks, D, layout)
    if backend == 'auto':
        backend = select_backend(u, ks, layout)
    if backend == 'matmul':
        return separable_conv_matmul(u, ks, D, layout=layout)
    if backend == 'triton':
        if not _triton_usable(u):
            raise RuntimeError(
                f"backend='triton' runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1, for tests); "
                f"got a {u.device.type} tensor{'' if HAS_TRITON else ' and Triton is not installed'}. "
                "Use backend='auto', 'matmul' or 'fft'.")
        return _triton_impl().separable_conv_triton(u, ks, D, layout=layout)
    if layout == 'channels_first':
        return separable_conv_ref(u, ks, D)
    return separable_conv_ref(u.movedim(-1, 1), ks, D).movedim(1, -1)
