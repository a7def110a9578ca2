"""Independent, slow, obviously-right references for the tests (float64, no FFT).

Never edited to agree with the code under test.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def outer_kernel(ks: Sequence[Tensor]) -> Tensor:
    """Per-axis two-sided kernels ks[i]: (c, H, K_i) -> N-d kernel (c, H, K_1, ..., K_d)."""
    full = ks[0]
    for k in ks[1:]:
        full = full.unsqueeze(-1) * k.reshape(k.shape[:2] + (1,) * (full.dim() - 2) + (k.shape[-1],))
    return full


def direct_conv_nd(u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor] = None) -> Tensor:
    """Direct zero-padded "same" convolution with the outer product of two-sided kernels, float64.

    Args:
        u: (B, H, *spatial).
        ks: ks[i]: (c, H, 2 L_i - 1), index L_i - 1 = offset 0.
        D: (c, H) or None.
    Returns:
        (B, c*H, *spatial) float64: y[b, cH+h, x] = sum_j K[c, h, j] u[b, h, x - j] + D[c, h] u[b, h, x].
    """
    u = u.double()
    d = u.dim() - 2
    full = outer_kernel([k.double() for k in ks])
    pads = [k.shape[-1] // 2 for k in ks]
    # conv computes cross-correlation; flipping the taps turns it into convolution.
    weight = full.flip(list(range(2, 2 + d)))
    out = []
    for c in range(full.shape[0]):
        y = _CONV[d](u, weight[c].unsqueeze(1), padding=pads, groups=u.shape[1])
        if D is not None:
            y = y + D[c].double().reshape((-1,) + (1,) * d) * u
        out.append(y)
    return torch.stack(out, 1).flatten(1, 2)


def recurrence_kernel(a: Tensor, b: Tensor, c: Tensor, dt: Tensor, length: int, disc: str) -> Tensor:
    """Impulse response of the discretized diagonal SSM by explicit recurrence, float64.

    x_0 = B_bar, x_{l+1} = A_bar x_l, K[l] = 2 Re(C . x_l).
    Args: a (H, M) complex A, b (H, M) complex B, c (C_k, H, M) complex C, dt (H, 1) step.
    Returns: (C_k, H, length) float64.
    """
    a, b, c, dt = a.to(torch.complex128), b.to(torch.complex128), c.to(torch.complex128), dt.double()
    if disc == 'zoh':
        a_bar = torch.exp(dt * a)
        b_bar = (a_bar - 1) / a * b
    else:
        a_bar = (1 + dt * a / 2) / (1 - dt * a / 2)
        b_bar = dt * b / (1 - dt * a / 2)
    x, taps = b_bar, []
    for _ in range(length):
        taps.append(2 * (c * x).sum(-1).real)
        x = a_bar * x
    return torch.stack(taps, -1)
