"""Per-axis kernel generation in Triton: every two-sided axis kernel of an S4ND layer in one launch.

The diagonal (S4D) kernel is a Vandermonde sum (ssm.py): K[ck, h, l] = 2 Re sum_n W[ck, h, n] exp(s[h, n] tap)
with W = C * coef and s = log_step from ``DiagAxisKernel.discretize`` (zoh/bilinear) at step exp(inv_dt) * rate,
bandlimit mask included in C. The small (C_k, H, M) factors W and s stay in torch (autograd to the SSM
parameters is ordinary torch); the (C_k, H, M, L) Vandermonde terms are only ever formed on chip:
    forward:  one program per (axis, kernel channel, h, block of taps), sum over the M modes in blocks,
              written straight into the two-sided layout of ``two_sided`` (s4nd.py): forward channel
              tap tap at index L-1+l, backward channel (bidirectional) tap tap at index L-2-l;
    backward: one program per (axis, kernel channel, h, block of modes), sum over the taps:
              dW = 2 sum_l g conj(z^tap) (as re/im), ds = 2 sum_l g tap conj(W z^tap), z^tap = exp(s tap).
Both are torch custom ops (``s4nd_timm::vandermonde_fwd`` / ``_bwd``, autograd registered), so the generator
runs under torch.compile(fullgraph=True). Loaded lazily (never import it directly: TRITON_INTERPRET must be read
first); float32 only. ``S4ND.axis_kernels`` uses it in diag mode for backend='triton'; DPLR stays on torch.
"""
from typing import List, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ['axis_kernels_triton']

BLOCK_L = 64
BLOCK_M = 32


@triton.jit
def _vandermonde_fwd_kernel(
        wr_ptr, wi_ptr, sr_ptr, si_ptr, out_ptr, lengths_ptr, taps_ptr, offsets_ptr,
        CK, H, M, CHANNELS, BL: tl.constexpr, BM: tl.constexpr):
    pid = tl.program_id(0)
    axis, ck, h = pid // (CK * H), (pid // H) % CK, pid % H
    length, taps, offset = tl.load(lengths_ptr + axis), tl.load(taps_ptr + axis), tl.load(offsets_ptr + axis)
    tap = tl.program_id(1) * BL + tl.arange(0, BL)
    lf = tap.to(tl.float32)[:, None]
    acc = tl.zeros((BL,), dtype=tl.float32)
    for m0 in range(0, M, BM):
        n = m0 + tl.arange(0, BM)
        nm = n < M
        w_off = ((axis * CK + ck) * H + h) * M + n
        s_off = (axis * H + h) * M + n
        wr = tl.load(wr_ptr + w_off, mask=nm, other=0.0)
        wi = tl.load(wi_ptr + w_off, mask=nm, other=0.0)
        sr = tl.load(sr_ptr + s_off, mask=nm, other=0.0)
        si = tl.load(si_ptr + s_off, mask=nm, other=0.0)
        e = tl.exp(sr[None, :] * lf)
        ang = si[None, :] * lf
        acc += tl.sum(wr[None, :] * e * tl.cos(ang) - wi[None, :] * e * tl.sin(ang), axis=1)
    fwd = ck < CHANNELS
    c = tl.where(fwd, ck, ck - CHANNELS)
    idx = tl.where(fwd, length - 1 + tap, length - 2 - tap)
    valid = (tap < taps) & (fwd | (tap < length - 1))
    tl.store(out_ptr + offset + (c * H + h) * (2 * length - 1) + idx, 2 * acc, mask=valid)


@triton.jit
def _vandermonde_bwd_kernel(
        g_ptr, wr_ptr, wi_ptr, sr_ptr, si_ptr, dwr_ptr, dwi_ptr, dsr_ptr, dsi_ptr, lengths_ptr, taps_ptr, offsets_ptr,
        CK, H, M, CHANNELS, BL: tl.constexpr, BM: tl.constexpr):
    pid = tl.program_id(0)
    axis, ck, h = pid // (CK * H), (pid // H) % CK, pid % H
    length, taps, offset = tl.load(lengths_ptr + axis), tl.load(taps_ptr + axis), tl.load(offsets_ptr + axis)
    n = tl.program_id(1) * BM + tl.arange(0, BM)
    nm = n < M
    w_off = ((axis * CK + ck) * H + h) * M + n
    s_off = (axis * H + h) * M + n
    wr = tl.load(wr_ptr + w_off, mask=nm, other=0.0)[None, :]
    wi = tl.load(wi_ptr + w_off, mask=nm, other=0.0)[None, :]
    sr = tl.load(sr_ptr + s_off, mask=nm, other=0.0)[None, :]
    si = tl.load(si_ptr + s_off, mask=nm, other=0.0)[None, :]
    fwd = ck < CHANNELS
    c = tl.where(fwd, ck, ck - CHANNELS)
    base = g_ptr + offset + (c * H + h) * (2 * length - 1)
    dwr = tl.zeros((BM,), dtype=tl.float32)
    dwi = tl.zeros((BM,), dtype=tl.float32)
    dsr = tl.zeros((BM,), dtype=tl.float32)
    dsi = tl.zeros((BM,), dtype=tl.float32)
    for l0 in range(0, taps, BL):
        tap = l0 + tl.arange(0, BL)
        idx = tl.where(fwd, length - 1 + tap, length - 2 - tap)
        valid = (tap < taps) & (fwd | (tap < length - 1))
        g = tl.load(base + idx, mask=valid, other=0.0)[:, None]
        lf = tap.to(tl.float32)[:, None]
        e = tl.exp(sr * lf)
        zr = e * tl.cos(si * lf)
        zi = e * tl.sin(si * lf)
        dwr += tl.sum(g * zr, axis=0)
        dwi -= tl.sum(g * zi, axis=0)
        dsr += tl.sum(g * lf * (wr * zr - wi * zi), axis=0)
        dsi -= tl.sum(g * lf * (wr * zi + wi * zr), axis=0)
    tl.store(dwr_ptr + w_off, 2 * dwr, mask=nm)
    tl.store(dwi_ptr + w_off, 2 * dwi, mask=nm)
    tl.store(dsr_ptr + w_off, 2 * dsr, mask=nm)  # per kernel channel; summed over ck in torch
    tl.store(dsi_ptr + w_off, 2 * dsi, mask=nm)


def _geometry(lengths: Sequence[int], taps: Sequence[int], channels: int, h: int, device) -> List[Tensor]:
    """int32 (lengths, taps, offsets into the flat output), one entry per axis."""
    sizes = [channels * h * (2 * n - 1) for n in lengths]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    return [torch.tensor(v, dtype=torch.int32, device=device) for v in (lengths, taps, offsets)]


def _flat_size(lengths: Sequence[int], channels: int, h: int) -> int:
    return sum(channels * h * (2 * n - 1) for n in lengths)


@torch.library.custom_op('s4nd_timm::vandermonde_fwd', mutates_args=())
def _vandermonde_fwd(wr: Tensor, wi: Tensor, sr: Tensor, si: Tensor, lengths: List[int], taps: List[int],
                     channels: int) -> Tensor:
    """Two-sided kernels of every axis, flattened: (sum_i c * H * (2 L_i - 1),) float32.
    wr, wi: (d, C_k, H, M) real and imaginary part of W; sr, si: (d, H, M) of s."""
    d, ck, h, m = wr.shape
    out = wr.new_zeros(_flat_size(lengths, channels, h))
    grid = (d * ck * h, triton.cdiv(max(taps), BLOCK_L))
    _vandermonde_fwd_kernel[grid](wr, wi, sr, si, out, *_geometry(lengths, taps, channels, h, wr.device),
                                  ck, h, m, channels, BL=BLOCK_L, BM=BLOCK_M)
    return out


@_vandermonde_fwd.register_fake
def _(wr, wi, sr, si, lengths, taps, channels):
    return wr.new_empty(_flat_size(lengths, channels, wr.shape[2]))


@torch.library.custom_op('s4nd_timm::vandermonde_bwd', mutates_args=())
def _vandermonde_bwd(g: Tensor, wr: Tensor, wi: Tensor, sr: Tensor, si: Tensor, lengths: List[int],
                     taps: List[int], channels: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (dwr, dwi, dsr, dsi) of ``_vandermonde_fwd`` for the flat output gradient g."""
    d, ck, h, m = wr.shape
    grads = [torch.empty_like(wr) for _ in range(4)]
    grid = (d * ck * h, triton.cdiv(m, BLOCK_M))
    _vandermonde_bwd_kernel[grid](g.contiguous(), wr, wi, sr, si, *grads,
                                  *_geometry(lengths, taps, channels, h, wr.device), ck, h, m, channels,
                                  BL=BLOCK_L, BM=BLOCK_M)
    dwr, dwi, dsr, dsi = grads
    return dwr, dwi, dsr.sum(1), dsi.sum(1)  # s is shared by the C_k kernel channels


@_vandermonde_bwd.register_fake
def _(g, wr, wi, sr, si, lengths, taps, channels):
    return wr.new_empty(wr.shape), wr.new_empty(wr.shape), sr.new_empty(sr.shape), si.new_empty(si.shape)


def _setup_context(ctx, inputs, output):
    wr, wi, sr, si, lengths, taps, channels = inputs
    ctx.save_for_backward(wr, wi, sr, si)
    ctx.lengths, ctx.taps, ctx.channels = lengths, taps, channels


def _backward(ctx, g):
    wr, wi, sr, si = ctx.saved_tensors
    return *_vandermonde_bwd(g, wr, wi, sr, si, ctx.lengths, ctx.taps, ctx.channels), None, None, None


_vandermonde_fwd.register_autograd(_backward, setup_context=_setup_context)


def axis_kernels_triton(layer, lengths: Sequence[int], rate=None) -> List[Tensor]:
    """Same result as ``S4ND.axis_kernels`` (diag mode, float32), the Vandermonde sums in one Triton launch.

    Args:
        layer: an ``S4ND`` with mode='diag' and float32 parameters.
        lengths: L_1..L_d.
        rate: as in ``S4ND.axis_kernels``.
    Returns:
        d tensors, kernels[i]: (channels, dim, 2 L_i - 1), index L_i - 1 = offset 0, float32.
    """
    lengths = tuple(int(n) for n in lengths)
    if layer.mode != 'diag' or layer.D.dtype != torch.float32:
        raise ValueError(f"axis_kernels_triton needs mode='diag' and float32 parameters; got mode={layer.mode!r}, "
                         f"{layer.D.dtype}. Use layer.axis_kernels.")
    if len(lengths) != layer.ndim:
        raise ValueError(f"lengths needs {layer.ndim} entries (one per spatial axis); got {lengths}")
    rates = layer.rates(lengths, rate)
    taps = layer.kernel_lengths(lengths, rates)
    w, s = zip(*[kern.discretize(r) for kern, r in zip(layer.kernel, rates)])
    w, s = torch.stack(w), torch.stack(s)  # (d, C_k, H, M), (d, H, M)
    flat = _vandermonde_fwd(w.real.contiguous(), w.imag.contiguous(), s.real.contiguous(), s.imag.contiguous(),
                            list(lengths), list(taps), layer.channels)
    sizes = [layer.channels * layer.dim * (2 * n - 1) for n in lengths]
    return [k.view(layer.channels, layer.dim, 2 * n - 1) for k, n in zip(flat.split(sizes), lengths)]
