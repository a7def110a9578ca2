"""Per-axis kernel generation in Triton: every two-sided axis kernel of an S4ND layer in one launch.

The diagonal (S4D) kernel is a Vandermonde sum (ssm.py): K[ck, h, l] = 2 Re sum_n W[ck, h, n] exp(s[h, n] l)
with W = C * coef and s = log_step from the zoh/bilinear discretization at step exp(inv_dt) * rate,
bandlimit mask included in C. The small (C_k, H, M) factors W and s stay in torch (autograd to the SSM
parameters is ordinary torch); the (C_k, H, M, L) Vandermonde terms are only ever formed on chip:
    forward:  one program per (axis, kernel channel, h, block of taps), sum over the M modes in blocks,
              written straight into the two-sided layout of ``two_sided`` (s4nd.py): forward channel
              tap l at index L-1+l, backward channel (bidirectional) tap l at index L-2-l;
    backward: one program per (axis, kernel channel, h, block of modes), sum over the taps:
              dW = 2 sum_l g conj(z^l) (as re/im), ds = 2 sum_l g l conj(W z^l), z^l = exp(s l).
Loaded lazily (never import it directly: TRITON_INTERPRET must be read first); float32 only.
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
    l = tl.program_id(1) * BL + tl.arange(0, BL)
    lf = l.to(tl.float32)[:, None]
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
    idx = tl.where(fwd, length - 1 + l, length - 2 - l)
    valid = (l < taps) & (fwd | (l < length - 1))
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
        l = l0 + tl.arange(0, BL)
        idx = tl.where(fwd, length - 1 + l, length - 2 - l)
        valid = (l < taps) & (fwd | (l < length - 1))
        g = tl.load(base + idx, mask=valid, other=0.0)[:, None]
        lf = l.to(tl.float32)[:, None]
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


class VandermondeFn(torch.autograd.Function):
    """Two-sided kernels of every axis, flattened: (sum_i c * H * (2 L_i - 1),) float32."""

    @staticmethod
    def forward(ctx, wr: Tensor, wi: Tensor, sr: Tensor, si: Tensor, lengths: Tuple[int, ...],
                taps: Tuple[int, ...], channels: int) -> Tensor:
        d, ck, h, m = wr.shape
        sizes = [channels * h * (2 * n - 1) for n in lengths]
        geometry = [torch.tensor(v, dtype=torch.int32, device=wr.device)
                    for v in (lengths, taps, [sum(sizes[:i]) for i in range(d)])]
        out = wr.new_zeros(sum(sizes))
        grid = (d * ck * h, triton.cdiv(max(taps), BLOCK_L))
        _vandermonde_fwd_kernel[grid](wr, wi, sr, si, out, *geometry, ck, h, m, channels, BL=BLOCK_L, BM=BLOCK_M)
        ctx.save_for_backward(wr, wi, sr, si, *geometry)
        ctx.channels = channels
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        wr, wi, sr, si, *geometry = ctx.saved_tensors
        d, ck, h, m = wr.shape
        grads = [torch.empty_like(wr) for _ in range(4)]
        grid = (d * ck * h, triton.cdiv(m, BLOCK_M))
        _vandermonde_bwd_kernel[grid](
            g.contiguous(), wr, wi, sr, si, *grads, *geometry, ck, h, m, ctx.channels, BL=BLOCK_L, BM=BLOCK_M)
        dwr, dwi, dsr, dsi = grads
        return dwr, dwi, dsr.sum(1), dsi.sum(1), None, None, None


def _factors(kern, rate: float) -> Tuple[Tensor, Tensor]:
    """W = C * coef (C_k, H, M) and s = log_step (H, M), complex: the discretization of ``DiagAxisKernel``."""
    dt_base, a, b, c = kern.modes()
    dt = dt_base * rate
    da = dt * a
    if kern.disc == 'zoh':
        return c * (b * (da.exp() - 1) / a), da
    return c * (b * dt / (1 - da / 2)), torch.log((1 + da / 2) / (1 - da / 2))


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
    w, s = zip(*[_factors(kern, r) for kern, r in zip(layer.kernel, rates)])
    w, s = torch.stack(w), torch.stack(s)  # (d, C_k, H, M), (d, H, M)
    flat = VandermondeFn.apply(w.real.contiguous(), w.imag.contiguous(), s.real.contiguous(), s.imag.contiguous(),
                               lengths, taps, layer.channels)
    sizes = [layer.channels * layer.dim * (2 * n - 1) for n in lengths]
    return [k.view(layer.channels, layer.dim, 2 * n - 1) for k, n in zip(flat.split(sizes), lengths)]
