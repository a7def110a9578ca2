"""Per-axis kernel generation in Triton: every two-sided axis kernel of an S4ND layer in one launch.

Tensor in, tensor out: ``axis_kernels_triton(w, log_step, lengths, taps, channels)`` takes the discretized factors
of each axis and returns the two-sided kernels; ``axis_kernels_ref`` beside it is the plain-torch definition with
the same signature. The diagonal (S4D) kernel is a Vandermonde sum: K[ck, h, l] = 2 Re sum_n W[ck, h, n]
exp(s[h, n] tap) with W and s = log_step from ``DiagAxisKernel.discretize`` (the layer computes them, at its
rates; docs/design.md §1.1). The small (C_k, H, M) factors stay in torch (autograd to the SSM parameters is
ordinary torch); the (C_k, H, M, L) Vandermonde terms are only ever formed on chip:
    forward:  one program per (axis, kernel channel, h, block of taps), sum over the M modes in blocks,
              written straight into the two-sided layout (``axis_kernels_ref``): forward channel
              tap l at index L-1+l, backward channel (bidirectional) tap l at index L-2-l;
    backward: one program per (axis, kernel channel, h, block of modes), sum over the taps:
              dW = 2 sum_l g conj(z^tap) (as re/im), ds = 2 sum_l g tap conj(W z^tap), z^tap = exp(s tap).
Both are torch custom ops (``s4nd_timm::vandermonde_fwd`` / ``_bwd``, autograd registered), so the generator
runs under torch.compile(fullgraph=True). Loaded lazily (never import it directly: TRITON_INTERPRET must be read
first); float32 only. ``S4ND.axis_kernels`` calls it in diag mode for backend='triton'; DPLR stays on torch.
"""
from typing import List, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ['axis_kernels_ref', 'axis_kernels_triton']

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


def _check_factors(w: Sequence[Tensor], log_step: Sequence[Tensor], lengths: Sequence[int], taps: Sequence[int],
                   channels: int) -> None:
    d = len(lengths)
    if not (len(w) == len(log_step) == len(taps) == d >= 1):
        raise ValueError(f"need one W, log-step, length and taps count per axis; got {len(w)}, {len(log_step)}, "
                         f"{d}, {len(taps)}")
    ck, h, m = w[0].shape
    if ck not in (channels, 2 * channels):
        raise ValueError(f"W has {ck} kernel channels; expected channels = {channels} (causal) or "
                         f"2 * channels = {2 * channels} (bidirectional)")
    for i, (wi, si, n, t) in enumerate(zip(w, log_step, lengths, taps)):
        if wi.shape != (ck, h, m) or si.shape != (h, m):
            raise ValueError(f"axis {i}: W must be (C_k, H, M) = {(ck, h, m)} and the log-step (H, M) = {(h, m)}; "
                             f"got {tuple(wi.shape)}, {tuple(si.shape)}")
        if not 1 <= t <= n:
            raise ValueError(f"axis {i}: taps must be in 1..length = {n}; got {t}")


def axis_kernels_ref(w: Sequence[Tensor], log_step: Sequence[Tensor], lengths: Sequence[int], taps: Sequence[int],
                     channels: int) -> List[Tensor]:
    """Plain-torch definition of ``axis_kernels_triton`` (same signature and result); the parity tests' reference.

    Per axis: causal taps K[ck, h, l] = 2 Re sum_n W[ck, h, n] exp(s[h, n] l) for l < taps, then the two-sided
    layout: kernel channel ck < channels at index L-1+l, ck >= channels (bidirectional) at index L-2-l.
    """
    _check_factors(w, log_step, lengths, taps, channels)
    out = []
    for wi, si, n, t in zip(w, log_step, lengths, taps):
        pos = torch.arange(t, device=wi.device, dtype=wi.real.dtype)
        k = 2 * torch.einsum('chm,hml->chl', wi, torch.exp(si.unsqueeze(-1) * pos)).real  # (C_k, H, taps)
        two = torch.nn.functional.pad(k[:channels], (n - 1, n - t))
        if k.shape[0] > channels:
            back = min(t, n - 1)
            two = two + torch.nn.functional.pad(k[channels:, :, :back].flip(-1), (n - 1 - back, n))
        out.append(two)
    return out


def axis_kernels_triton(w: Sequence[Tensor], log_step: Sequence[Tensor], lengths: Sequence[int],
                        taps: Sequence[int], channels: int) -> List[Tensor]:
    """Two-sided kernels of every axis from their discretized factors, the Vandermonde sums in one Triton launch.

    Args:
        w: per axis, W (C_k, H, M) complex64 (``DiagAxisKernel.discretize``); C_k = channels (causal) or
            2 * channels (bidirectional: the last channels are the backward taps).
        log_step: per axis, s (H, M) complex64.
        lengths: L_1..L_d, the input lengths; taps: L_k,i <= L_i causal taps per axis.
        channels: c.
    Returns:
        d tensors, kernels[i]: (c, H, 2 L_i - 1), index L_i - 1 = offset 0, float32; differentiable in w and
        log_step (the Triton backward). Same result as ``axis_kernels_ref``.
    """
    lengths, taps = [int(n) for n in lengths], [int(t) for t in taps]
    _check_factors(w, log_step, lengths, taps, channels)
    if any(t.dtype != torch.complex64 for t in (*w, *log_step)):
        raise ValueError("axis_kernels_triton needs complex64 factors (float32 parameters); use axis_kernels_ref "
                         "or the layer's torch path for float64.")
    w, s = torch.stack(list(w)), torch.stack(list(log_step))  # (d, C_k, H, M), (d, H, M)
    flat = _vandermonde_fwd(w.real.contiguous(), w.imag.contiguous(), s.real.contiguous(), s.imag.contiguous(),
                            lengths, taps, channels)
    h = w.shape[2]
    sizes = [channels * h * (2 * n - 1) for n in lengths]
    return [k.view(channels, h, 2 * n - 1) for k, n in zip(flat.split(sizes), lengths)]
