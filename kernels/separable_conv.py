"""Separable N-d convolution with per-axis two-sided kernels: the torch paths.

Every S4ND convolution is separable (docs/design.md §2.2): the N-d kernel of output channel (c, h)
is the outer product of one two-sided 1-D kernel per axis. This module holds the FFT path, the
definition every other path is tested against, the Toeplitz matmul path (exact, no FFT, no
complex numbers: traceable by torch.compile, torch.export and ONNX export) and the direct path (one
depthwise convolution per axis through torch's convolution kernels, oneDNN on CPU).

Kernel convention (shared by every path): for an axis of input length L the two-sided kernel has
2L - 1 taps, index L - 1 being offset 0, index L - 1 + j offset j. Output
    y[b, c*H + h, x] = Σ_j Π_i k_i[c, h, L_i - 1 + j_i] u[b, h, x - j] + D[c, h] u[b, h, x]
with zero padding (linear, not circular, "same"-size convolution).

Layouts: 'channels_first' u (B, H, *spatial) -> (B, c*H, *spatial); 'channels_last'
u (B, *spatial, H) -> (B, *spatial, c*H); the channel index is c*H + h in both.
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['LAYOUTS', 'check_conv_args', 'separable_conv_direct', 'separable_conv_matmul', 'separable_conv_ref', 'toeplitz']

LAYOUTS = ('channels_first', 'channels_last')


def _circular_taps(k: Tensor, length: int, period: int) -> Tensor:
    """(..., 2L-1) centred two-sided kernel -> (..., period) circular kernel (lag j at index j mod period)."""
    pad = k.new_zeros(k.shape[:-1] + (period - (2 * length - 1),))
    return torch.cat([k[..., length - 1:], pad, k[..., :length - 1]], dim=-1)


def separable_conv_ref(u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor] = None) -> Tensor:
    """Linear (not circular) separable convolution through FFTs. The definition every other path is tested against.

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


def check_conv_args(u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor], layout: str) -> Tuple[int, ...]:
    """Validate the arguments shared by every path; returns the spatial lengths L_1..L_d."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not supported; expected one of {LAYOUTS}")
    d = u.dim() - 2
    if d not in (1, 2, 3):
        raise ValueError(f"u needs 1 to 3 spatial axes besides batch and channels; got shape {tuple(u.shape)}")
    spatial = tuple(u.shape[2:]) if layout == 'channels_first' else tuple(u.shape[1:-1])
    feat = u.shape[1] if layout == 'channels_first' else u.shape[-1]
    if len(ks) != d:
        raise ValueError(f"need one kernel per spatial axis: got {len(ks)} kernels for input of shape {tuple(u.shape)}")
    c = ks[0].shape[0]
    for i, (k, n) in enumerate(zip(ks, spatial)):
        if k.dim() != 3 or k.shape[:2] != (c, feat) or k.shape[-1] != 2 * n - 1:
            raise ValueError(
                f"kernel {i} must have shape (c, H, 2*L-1) = ({c}, {feat}, {2 * n - 1}) for {layout} input of shape "
                f"{tuple(u.shape)}; got {tuple(k.shape)}. Channels-last input? pass layout='channels_last'.")
    if D is not None and D.shape != (c, feat):
        raise ValueError(f"D must have shape (c, H) = ({c}, {feat}); got {tuple(D.shape)}")
    return spatial


def toeplitz(k: Tensor, length: int) -> Tensor:
    """Two-sided taps (..., 2L-1) -> Toeplitz matrices (..., L, L) with T[p, q] = k[L - 1 + p - q].

    y = T @ x is the "same"-size linear convolution of x (length L) with k along that axis.
    """
    # windows[..., p, t] = k[p + t]; T[p, q] = windows[..., p, L - 1 - q]. A strided view plus one copy;
    # its backward (flip, then unfold_backward) is a diagonal sum, much faster than a gather's scatter-add.
    return k.unfold(-1, length, 1).flip(-1)


def _operand_dtype(u: Tensor) -> torch.dtype:
    """Dtype the matmul path multiplies in: bf16/fp16 stay low precision on CUDA (fp32 accumulation in
    cuBLAS), float64 stays float64, everything else (CPU half precision included) runs in float32."""
    if u.dtype == torch.float64:
        return torch.float64
    if u.dtype in (torch.bfloat16, torch.float16) and u.device.type == 'cuda':
        return u.dtype
    return torch.float32


def separable_conv_matmul(
        u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor] = None, layout: str = 'channels_first') -> Tensor:
    """Linear separable convolution as per-axis Toeplitz mode products (exact; same result as the ref).

    Args:
        u: (B, H, *spatial) for layout='channels_first', (B, *spatial, H) for 'channels_last';
            d = len(spatial) in 1..3, in any memory order.
        ks: d tensors, ks[i]: (c, H, 2 * L_i - 1), two-sided, index L_i - 1 = offset 0.
        D: (c, H) skip term, or None.
        layout: 'channels_first' or 'channels_last'.
    Returns:
        (B, c * H, *spatial) or (B, *spatial, c * H), channel index c * H + h, dtype of u, stored channels
        innermost in both layouts (for 'channels_first': the torch.channels_last memory format).
        bf16/fp16 CUDA inputs multiply in their dtype with fp32 accumulation; other inputs in
        float32 (float64 for float64). Memory: one (c, H, L_i, L_i) matrix per axis.

    One copy brings the input into the order (H, L_1, B, L_2, ..., L_d), where every feature's rows along the first
    axis are one matrix: T_1 multiplies it from the left, the middle axis of 3-D inputs is a broadcast matmul, and
    T_d multiplies from the right in one ``baddbmm`` that also adds D x (computed as one elementwise product).
    One copy takes the result to (B, *spatial, c*H). Autograd's backward is the same steps transposed.
    """
    spatial = check_conv_args(u, ks, D, layout)
    d = len(spatial)
    work = _operand_dtype(u)
    x = u.movedim(1, -1) if layout == 'channels_first' else u  # (B, *spatial, H), a view
    batch, feat, c = x.shape[0], x.shape[-1], ks[0].shape[0]
    ts = [toeplitz(k.to(work), n) for k, n in zip(ks, spatial)]  # (c, H, L_i, L_i)
    xt = x.to(work).permute(d + 1, 1, 0, *range(2, d + 1)).contiguous()  # (H, L_1, B, L_2, .., L_d)
    skip = None if D is None else xt * D.to(work).reshape(c, feat, *(1,) * (d + 1))  # (c, H, L_1, B, L_2, ..)
    if d == 1:  # (c H, P, L) @ (c H, L, B): the only axis leads
        lead = xt.expand(c, *xt.shape).reshape(c * feat, spatial[0], batch)
        t = ts[0].reshape(c * feat, spatial[0], spatial[0])
        y = torch.bmm(t, lead) if skip is None else torch.baddbmm(skip.reshape(c * feat, spatial[0], batch), t, lead)
    else:
        y = torch.matmul(ts[0], xt.reshape(feat, spatial[0], -1))  # (c, H, P_1, B L_2..L_d)
        if d == 3:  # (c, H, 1, P_2, L_2) @ (c, H, P_1 B, L_2, L_3)
            y = torch.matmul(ts[1].unsqueeze(2), y.reshape(c, feat, -1, spatial[1], spatial[2]))
        y = y.reshape(c * feat, -1, spatial[-1])
        last = ts[-1].reshape(c * feat, spatial[-1], spatial[-1]).transpose(1, 2)
        if skip is None:
            y = torch.bmm(y, last)  # (c H, P_1 B P_2.., P_d)
        else:
            y = torch.baddbmm(skip.reshape(c * feat, -1, spatial[-1]), y, last)
    # (c, H, P_1, B, P_2.., P_d) -> (B, P_1, .., P_d, c * H)
    y = y.reshape(c, feat, spatial[0], batch, *spatial[1:]).permute(3, 2, *range(4, d + 3), 0, 1)
    y = y.reshape(batch, *spatial, c * feat).to(u.dtype)
    return y.movedim(-1, 1) if layout == 'channels_first' else y


def _axis_conv(x: Tensor, k: Tensor, axis: int) -> Tensor:
    """One axis of the direct path: x (B, *spatial, H) contiguous (channels innermost), k (H, 2L-1) two-sided
    taps of that axis -> the same-size linear convolution along spatial axis ``axis``, (B, *spatial, H) contiguous.

    The memory of x is read as (outer, L, inner) with inner = H * (the later spatial lengths), i.e. as a
    channels-last (outer, inner, 1, L) image, and convolved along its width by a depthwise conv2d with one
    1 x (2L-1) filter per inner channel (the filter of feature h, repeated over the later axes): the layout
    oneDNN's depthwise kernel reads in place, vectorised over the channels, skipping the zero padding. When those
    repeated filters would outweigh x itself (small batches, the time axis of a clip) the axis is moved next to
    the channels instead (two copies of x, filters of H rows).
    """
    n, feat = x.shape[1 + axis], k.shape[0]
    inner = math.prod(x.shape[axis + 2:])
    if inner != feat and inner * (2 * n - 1) > x.numel():
        moved = _axis_conv(x.movedim(1 + axis, -2).contiguous(), k, x.dim() - 3)
        return moved.movedim(-2, 1 + axis).contiguous()
    w = k.flip(-1)  # conv2d is a cross-correlation
    if inner != feat:
        w = w.repeat(inner // feat, 1)
    v = x.reshape(-1, n, inner).transpose(1, 2).unsqueeze(2)  # (outer, inner, 1, L), strides of channels-last
    y = F.conv2d(v, w.reshape(inner, 1, 1, 2 * n - 1), padding=(0, n - 1), groups=inner)
    return y.squeeze(2).transpose(1, 2).reshape(x.shape)


def separable_conv_direct(
        u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor] = None, layout: str = 'channels_first') -> Tensor:
    """Linear separable convolution as one depthwise convolution per axis (exact; same result as the ref).

    Args:
        u: (B, H, *spatial) for layout='channels_first', (B, *spatial, H) for 'channels_last';
            d = len(spatial) in 1..3.
        ks: d tensors, ks[i]: (c, H, 2 * L_i - 1), two-sided, index L_i - 1 = offset 0.
        D: (c, H) skip term, or None.
        layout: 'channels_first' or 'channels_last'.
    Returns:
        (B, c * H, *spatial) or (B, *spatial, c * H), channel index c * H + h, dtype of u, stored channels
        innermost in both layouts (for 'channels_first': the torch.channels_last memory format), the memory order
        every axis pass works in. A channels-first input stored channels-first costs one copy into that order.
        Computed like the matmul path (float32, float64 for float64, bf16/fp16 on CUDA). Gradients flow through
        torch's convolution backward (slow on CPU for long filters: the path is meant for inference there).
    """
    check_conv_args(u, ks, D, layout)
    work = _operand_dtype(u)
    x = (u.movedim(1, -1) if layout == 'channels_first' else u).to(work).contiguous()  # (B, *spatial, H)
    outs = []
    for j in range(ks[0].shape[0]):  # each of the c kernel sets makes H output channels
        y = x
        for i, k in enumerate(ks):
            y = _axis_conv(y, k[j].to(work), i)
        if D is not None:
            y = torch.addcmul(y, D[j].to(work), x)
        outs.append(y)
    y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
    return (y.movedim(-1, 1) if layout == 'channels_first' else y).to(u.dtype)
