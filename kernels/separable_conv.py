"""Separable N-d convolution with per-axis two-sided kernels: the torch paths.

Every S4ND convolution is separable (s4nd-spec.md §2.2): the N-d kernel of output channel (c, h)
is the outer product of one two-sided 1-D kernel per axis. This module holds the FFT path, the
definition every other path is tested against.

Kernel convention (shared by every path): for an axis of input length L the two-sided kernel has
2L - 1 taps, index L - 1 being offset 0, index L - 1 + j offset j. Output
    y[b, c*H + h, x] = Σ_j Π_i k_i[c, h, L_i - 1 + j_i] u[b, h, x - j] + D[c, h] u[b, h, x]
with zero padding (linear, not circular, "same"-size convolution).
"""
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ['separable_conv_ref']


def _circular_taps(k: Tensor, length: int, period: int) -> Tensor:
    """(..., 2L-1) centred two-sided kernel -> (..., period) circular kernel (lag j at index j mod period)."""
    pad = k.new_zeros(k.shape[:-1] + (period - (2 * length - 1),))
    return torch.cat([k[..., length - 1:], pad, k[..., :length - 1]], dim=-1)


def separable_conv_ref(u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor] = None) -> Tensor:
    """Linear (not circular) separable convolution through FFTs. The spec for every other path.

    Args:
        u: (B, H, *spatial), d = len(spatial) in 1..3, channels first.
        ks: d tensors, ks[i]: (c, H, 2 * L_i - 1), two-sided, index L_i - 1 = offset 0.
        D: (c, H) skip term, or None.
    Returns:
        (B, c * H, *spatial), channel index c * H + h, dtype of u. Computed in float32
        (float64 when u is float64).
    """
    spatial = tuple(u.shape[2:])
    d = len(spatial)
    if len(ks) != d:
        raise ValueError(f"need one kernel per spatial axis: got {len(ks)} kernels for input of shape {tuple(u.shape)}")
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    x = u.to(work)
    periods = [2 * n for n in spatial]
    axes = tuple(range(-d, 0))
    spectrum = torch.fft.rfftn(x, s=periods, dim=axes).unsqueeze(1)  # (B, 1, H, *freq)
    for i, (k, n, p) in enumerate(zip(ks, spatial, periods)):
        if k.shape[-1] != 2 * n - 1:
            raise ValueError(f"kernel {i} has {k.shape[-1]} taps; axis length {n} needs 2*{n}-1 = {2 * n - 1}")
        circ = _circular_taps(k.to(work), n, p)
        kf = torch.fft.rfft(circ) if i == d - 1 else torch.fft.fft(circ)
        view = [kf.shape[0], kf.shape[1]] + [1] * d
        view[2 + i] = kf.shape[-1]
        spectrum = spectrum * kf.reshape(view)
    y = torch.fft.irfftn(spectrum, s=periods, dim=axes)
    y = y[(Ellipsis,) + tuple(slice(0, n) for n in spatial)]
    if D is not None:
        y = y + D.to(work).reshape(D.shape + (1,) * d) * x.unsqueeze(1)
    return y.flatten(1, 2).to(u.dtype)
