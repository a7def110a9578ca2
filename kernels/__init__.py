"""Convolution paths for S4ND (installed as ``s4nd_timm.kernels``).

This is the only module that knows about Triton: ``HAS_TRITON`` says whether it is installed, and the
Triton implementation is imported lazily on first use, so ``import s4nd_timm`` works on CPU-only torch
without Triton. ``TRITON_INTERPRET=1`` (set before the first Triton call) runs the Triton kernels on
CPU tensors through the Triton interpreter, for tests.

Paths: 'fft' (``separable_conv_ref``, the reference definition), 'matmul' (``separable_conv_matmul``, Toeplitz mode
products), 'direct' (``separable_conv_direct``, one depthwise convolution per axis), 'triton' (tiled Toeplitz-pass
kernels, CUDA or the interpreter). ``separable_conv(..., backend='auto')``
picks one per call, see ``select_backend``. Kernel generation in Triton: ``axis_kernels_triton``.
"""
import importlib.util
import math
import os
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from .separable_conv import (
    LAYOUTS, check_conv_args, separable_conv_direct, separable_conv_matmul, separable_conv_ref, toeplitz)

__all__ = [
    'AUTO_USES_TRITON',
    'BACKENDS',
    'CPU_COST',
    'CUDA_MATMUL_MAX_LEN',
    'HAS_TRITON',
    'LAYOUTS',
    'MATMUL_MAX_TOEPLITZ',
    'axis_kernels_triton',
    'check_backend',
    'select_backend',
    'separable_conv',
    'separable_conv_direct',
    'separable_conv_matmul',
    'separable_conv_ref',
    'toeplitz',
    'triton_interpret',
    'triton_usable',
]

BACKENDS = ('auto', 'direct', 'fft', 'matmul', 'triton')
HAS_TRITON = importlib.util.find_spec('triton') is not None

# 'auto' on CPU: a cost model whose three constants were measured on CPU (seconds per unit, fwd+bwd; see
# docs/benchmarks.md "CPU crossover"): matmul = mac * B*c*H*prod(L)*sum(L) + toeplitz * c*H*sum(L^2),
# fft = fft * B*c*H*prod(2L)*log2(prod(2L)). The Toeplitz term (building the matrices, and in the backward
# reducing their gradient to the taps) is paid once per call, so matmul wins when enough rows share each
# matrix: every 2-D/3-D size measured (up to 512 px) and 1-D with large batches.
# Checked on every layer shape of ConvNeXt-T, ViT-S and 3-D ConvNeXt-T at batch 1, 8, 32 (docs/benchmarks.md
# "CPU path choice", `bench_layer.py --sections auto`): it picks the faster measured path in each case.
CPU_COST = {'mac': 6.5e-11, 'toeplitz': 6.8e-9, 'fft': 1.5e-9}
# 'auto' on CUDA takes the fused Triton kernel (where ``fits``) only once it has been validated and timed on a
# GPU: so far it has run only in the Triton interpreter, so this stays False until docs/benchmarks.md has GPU rows.
AUTO_USES_TRITON = False
# 'auto' on CUDA: NOT measured yet (no GPU run). Matmul while every axis is at most this long.
CUDA_MATMUL_MAX_LEN = 256
# Either device: never build Toeplitz matrices (c * H * sum L_i^2 elements) larger than this.
MATMUL_MAX_TOEPLITZ = 1 << 27


def check_backend(backend: str) -> str:
    """``backend`` if it names a convolution path (``BACKENDS``), else a ValueError saying which do."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not supported; expected one of {BACKENDS}")
    return backend


def triton_interpret() -> bool:
    """True when TRITON_INTERPRET=1: Triton kernels run on CPU tensors through the interpreter."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def _triton_impl():
    """The Triton implementation module, imported on first use (after TRITON_INTERPRET is read)."""
    if not HAS_TRITON:
        raise RuntimeError("backend='triton' needs Triton: pip install triton (Linux x86_64 wheels ship with torch), "
                           "or use backend='matmul' / 'fft'.")
    from . import separable_conv_triton  # an import statement (not importlib): torch.compile traces it
    return separable_conv_triton


def axis_kernels_triton(w: Sequence[Tensor], log_step: Sequence[Tensor], lengths: Sequence[int],
                        taps: Sequence[int], channels: int) -> List[Tensor]:
    """Two-sided per-axis kernels (c, H, 2 L_i - 1) from each axis' discretized factors W (C_k, H, M) and log-step
    (H, M), complex64, in one Triton launch (``ssm_kernel_gen_triton``: a torch custom op with its backward, beside
    its plain-torch definition ``axis_kernels_ref``); CUDA, or CPU with TRITON_INTERPRET=1. ``S4ND.axis_kernels``
    computes the factors (``DiagAxisKernel.discretize`` at its rates) and calls it when its path is 'triton'."""
    if not HAS_TRITON:
        raise RuntimeError("axis_kernels_triton needs Triton; use layer.axis_kernels (the torch path).")
    from . import ssm_kernel_gen_triton
    return ssm_kernel_gen_triton.axis_kernels_triton(w, log_step, lengths, taps, channels)


def triton_usable(t: Tensor) -> bool:
    """True when Triton kernels can run on t's device: CUDA, or CPU with TRITON_INTERPRET=1 (tests)."""
    return HAS_TRITON and (t.device.type == 'cuda' or (triton_interpret() and t.device.type == 'cpu'))


def select_backend(u: Tensor, ks: Sequence, layout: str = 'channels_first', grad: Optional[bool] = None) -> str:
    """The path 'auto' takes for these arguments: 'direct', 'triton', 'matmul' or 'fft'.

    ``ks`` may be the kernels (c, H, 2 L_i - 1) or just their shapes (only shapes are read), so a layer can
    choose the path, and with it the kernel generator, before generating the kernels. ``grad``: whether the call
    will be differentiated (None: gradients enabled and u or a kernel requires grad).

    CUDA: Triton when ``AUTO_USES_TRITON`` and the tiled Triton passes support the shapes
    (``separable_conv_triton.fits``), else matmul while every axis is at most ``CUDA_MATMUL_MAX_LEN``
    (unmeasured guess), else FFT. CPU (and other devices) without gradients: direct (oneDNN depthwise
    convolutions; measured fastest at every layer shape of the registered models at batch 1, 8 and 32). CPU with
    gradients: the cheaper path under the measured fwd+bwd cost model ``CPU_COST`` (the direct path's convolution
    backward is several times slower than matmul's). FFT whenever the Toeplitz matrices
    would exceed ``MATMUL_MAX_TOEPLITZ`` elements (the Triton passes build none in memory, but do the same O(L^2)
    work per row; whether they beat FFT there is unmeasured, so the cap applies to them too).
    """
    if grad is None:
        grad = torch.is_grad_enabled() and any(getattr(t, 'requires_grad', False) for t in (u, *ks))
    ks = [tuple(getattr(k, 'shape', k)) for k in ks]
    spatial = [k[-1] // 2 + 1 for k in ks]
    kernels = ks[0][0] * ks[0][1]  # c * H
    if u.device.type != 'cuda' and not grad:
        return 'direct'
    if kernels * sum(n * n for n in spatial) > MATMUL_MAX_TOEPLITZ:
        return 'fft'
    if u.device.type == 'cuda':
        if AUTO_USES_TRITON and HAS_TRITON and _triton_impl().fits(u, ks, layout):
            return 'triton'
        return 'matmul' if max(spatial) <= CUDA_MATMUL_MAX_LEN else 'fft'
    rows = u.shape[0] * kernels  # B * c * H * prod(L)
    for n in spatial:
        rows = rows * n
    matmul = CPU_COST['mac'] * rows * sum(spatial) + CPU_COST['toeplitz'] * kernels * sum(n * n for n in spatial)
    fft = CPU_COST['fft'] * rows * 2 ** len(spatial) * sum(math.log2(2 * n) for n in spatial)
    return 'matmul' if matmul <= fft else 'fft'


def separable_conv(
        u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor] = None, backend: str = 'auto',
        layout: str = 'channels_first') -> Tensor:
    """Linear separable convolution with per-axis two-sided kernels, through the chosen path.

    Args:
        u: (B, H, *spatial) for layout='channels_first', (B, *spatial, H) for 'channels_last';
            d = len(spatial) in 1..3.
        ks: d tensors, ks[i]: (c, H, 2 * L_i - 1), two-sided, index L_i - 1 = offset 0.
        D: (c, H) skip term, or None.
        backend: 'auto', 'direct', 'fft', 'matmul' or 'triton' (see ``select_backend``).
        layout: 'channels_first' or 'channels_last'.
    Returns:
        (B, c * H, *spatial) or (B, *spatial, c * H), channel index c * H + h, dtype of u.
    """
    check_backend(backend)
    check_conv_args(u, ks, D, layout)
    if backend == 'auto':
        backend = select_backend(u, ks, layout)
    if backend == 'matmul':
        return separable_conv_matmul(u, ks, D, layout=layout)
    if backend == 'direct':
        return separable_conv_direct(u, ks, D, layout=layout)
    if backend == 'triton':
        if not triton_usable(u):
            raise RuntimeError(
                f"backend='triton' runs on CUDA tensors (or CPU tensors with TRITON_INTERPRET=1, for tests); "
                f"got a {u.device.type} tensor{'' if HAS_TRITON else ' and Triton is not installed'}. "
                "Use backend='auto', 'matmul' or 'fft'.")
        return _triton_impl().separable_conv_triton(u, ks, D, layout=layout)
    if layout == 'channels_first':
        return separable_conv_ref(u, ks, D)
    return separable_conv_ref(u.movedim(-1, 1), ks, D).movedim(1, -1)
