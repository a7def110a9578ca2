"""Separable convolution in Triton as per-axis Toeplitz passes, tiled: any length, 1-D, 2-D and 3-D, both layouts.

Same operation and kernel convention as ``separable_conv_ref`` (separable_conv.py). Loaded lazily by
``kernels/__init__.py`` (never import it directly: TRITON_INTERPRET must be read before this module
is imported). Every kernel works on logical channels-first views (B, C, *spatial) through strides, so
channels-last tensors are read and written in place, without permute copies.

The separable operator is a chain of d one-axis passes (last axis first), each a Toeplitz product along one axis
of every row (a row: one (b, channel) and one index of each other axis), T[p, q] = k[L-1+p-q]:
    forward:   Z_1 = T_d X (H -> c H channels, channel c H + h reads h), Z_{i+1} = T_{d-i} Z_i, Y = T_1 Z_{d-1} + D X
    backward:  dZ_{d-1} = T_1^T dY, ..., dX = sum_c T_d^T dZ_1 + sum_c D dY (the adjoint chain, same pass kernel)
               dk_i[L_i-1+j] = sum over rows of sum_{p-q=j} dOut_i[r, p] In_i[r, q] (``_tap_grad_kernel``),
               dD = sum <dY, X> (torch einsum), the pass inputs Z_i recomputed in the backward.
Both kernels are tiled: a program owns a (BR rows, BL outputs) tile and loops over the input axis in blocks of BL
(``_pass_kernel``), or one (BL, BL) block of the Toeplitz gradient summed over a chunk of rows
(``_tap_grad_kernel``), so the tile size, not the axis length, sets the shared memory per block: every length up
to ``MAX_LEN`` runs with BLOCK = 64 tiles (the same tiles on every GPU).
tl.dot multiplies in the input dtype (bf16/fp16 tensor cores, float32 accumulation; intermediates Z_i are stored
in the input dtype, as the matmul path keeps them); float32 inputs use input_precision='ieee' (no TF32), so
results match the torch paths to float32 rounding.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .separable_conv import _operand_dtype, check_conv_args

__all__ = ['BLOCK', 'MAX_LEN', 'fits', 'separable_conv_triton']

BLOCK = 64  # default tile: BL taps per axis block, BR rows per program
MAX_LEN = 4096  # longest axis taken: each pass costs O(L^2) per row (FFT is cheaper beyond, whatever the tiling)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def fits(u: Tensor, ks: Sequence, layout: str) -> bool:
    """True when the Triton kernels take these inputs: float32/bf16/fp16 and every axis <= ``MAX_LEN``.
    ks: the kernels (c, H, 2 L_i - 1) or their shapes."""
    spatial = [tuple(getattr(k, 'shape', k))[-1] // 2 + 1 for k in ks]
    return u.dtype in DTYPES and max(spatial) <= MAX_LEN


def _tile(n: int, block: int) -> int:
    return min(block, max(16, triton.next_power_of_2(n)))


@triton.jit
def _toeplitz_tile(k_ptr, rows, cols, length, TRANSPOSE: tl.constexpr):
    """(len(rows), len(cols)) tile of T[p, q] = k[L-1+p-q] (TRANSPOSE: of T^T), zero outside L x L."""
    if TRANSPOSE:
        idx = length - 1 + cols[None, :] - rows[:, None]
    else:
        idx = length - 1 + rows[:, None] - cols[None, :]
    mask = (rows[:, None] < length) & (cols[None, :] < length)
    return tl.load(k_ptr + idx, mask=mask, other=0.0)


@triton.jit
def _row_offsets(rows, O1, O2, s_n, s_1, s_2):
    """Element offset of each row (n, o1, o2), rows enumerating (n, o1, o2) in C order."""
    return (rows // (O1 * O2)) * s_n + ((rows // O2) % O1) * s_1 + (rows % O2) * s_2


@triton.jit
def _pass_kernel(
        in_ptr, k_ptr, skip_ptr, d_ptr, out_ptr,
        H, G, C_IN, C_SKIP, ROWS, O1, O2, L,
        si_c, si_n, si_1, si_2, si_l, ss_c, ss_n, ss_1, ss_2, ss_l, so_c, so_n, so_1, so_2, so_l,
        ADJOINT: tl.constexpr, HAS_SKIP: tl.constexpr, BR: tl.constexpr, BL: tl.constexpr,
        PRECISION: tl.constexpr):
    """Out[j][r, p] = sum_{g < G} sum_q T_k[p, q] In[k % C_IN][r, q] + D[k] Skip[k % C_SKIP][r, p], k = g H + j,
    T_k[p, q] = k_k[L-1+p-q] (ADJOINT: k_k[L-1+q-p]); one (BR rows, BL outputs p) tile, q looped in blocks of BL."""
    j = tl.program_id(0)
    rows = tl.program_id(1) * BR + tl.arange(0, BR)
    p = tl.program_id(2) * BL + tl.arange(0, BL)
    rmask = rows < ROWS
    r_in = _row_offsets(rows, O1, O2, si_n, si_1, si_2)
    acc = tl.zeros((BR, BL), dtype=tl.float32)
    for g in range(G):
        k = g * H + j
        base = in_ptr + (k % C_IN) * si_c + r_in[:, None]
        for q0 in range(0, L, BL):
            q = q0 + tl.arange(0, BL)
            x = tl.load(base + q[None, :] * si_l, mask=rmask[:, None] & (q[None, :] < L), other=0.0)
            if ADJOINT:  # tile [q, p] = T_k^T[p, q]
                t = _toeplitz_tile(k_ptr + k * (2 * L - 1), q, p, L, False)
            else:  # tile [q, p] = T_k[p, q]
                t = _toeplitz_tile(k_ptr + k * (2 * L - 1), q, p, L, True)
            acc += tl.dot(x, t.to(x.dtype), input_precision=PRECISION)
        if HAS_SKIP:
            r_s = _row_offsets(rows, O1, O2, ss_n, ss_1, ss_2)
            s = tl.load(skip_ptr + (k % C_SKIP) * ss_c + r_s[:, None] + p[None, :] * ss_l,
                        mask=rmask[:, None] & (p[None, :] < L), other=0.0)
            acc += tl.load(d_ptr + k) * s.to(tl.float32)
    r_out = _row_offsets(rows, O1, O2, so_n, so_1, so_2)
    tl.store(out_ptr + j * so_c + r_out[:, None] + p[None, :] * so_l, acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & (p[None, :] < L))


@triton.jit
def _tap_grad_kernel(
        g_ptr, in_ptr, dk_ptr, C_IN, ROWS, O1, O2, L, ROWS_PER_PROG,
        sg_c, sg_n, sg_1, sg_2, sg_l, si_c, si_n, si_1, si_2, si_l,
        BR: tl.constexpr, BL: tl.constexpr, PRECISION: tl.constexpr):
    """dk_j[L-1+p-q] += sum_r dOut[j][r, p] In[j % C_IN][r, q] for one (BL, BL) block of (p, q), over this program's
    ROWS_PER_PROG rows (float32 atomics: the Toeplitz gradient reduced to its taps)."""
    j = tl.program_id(0)
    blocks = tl.cdiv(L, BL)
    p = (tl.program_id(1) // blocks) * BL + tl.arange(0, BL)
    q = (tl.program_id(1) % blocks) * BL + tl.arange(0, BL)
    r_start = tl.program_id(2) * ROWS_PER_PROG
    r_end = tl.minimum(r_start + ROWS_PER_PROG, ROWS)
    acc = tl.zeros((BL, BL), dtype=tl.float32)
    for r0 in range(r_start, r_end, BR):
        rows = r0 + tl.arange(0, BR)
        rmask = rows < r_end
        r_g = _row_offsets(rows, O1, O2, sg_n, sg_1, sg_2)
        r_i = _row_offsets(rows, O1, O2, si_n, si_1, si_2)
        x = tl.load(in_ptr + (j % C_IN) * si_c + r_i[:, None] + q[None, :] * si_l,
                    mask=rmask[:, None] & (q[None, :] < L), other=0.0)
        g = tl.load(g_ptr + j * sg_c + r_g[:, None] + p[None, :] * sg_l,
                    mask=rmask[:, None] & (p[None, :] < L), other=0.0)
        acc += tl.dot(tl.trans(g.to(x.dtype)), x, input_precision=PRECISION)
    mask = (p[:, None] < L) & (q[None, :] < L)
    tl.atomic_add(dk_ptr + j * (2 * L - 1) + L - 1 + p[:, None] - q[None, :], acc, mask=mask)


def _axis_view(v: Tensor, axis: int) -> Tuple[Tuple[int, int, int, int], Tuple[int, int, int, int, int]]:
    """(ROWS, O1, O2, L) and (channel, n, o1, o2, l) strides of logical channels-first v for a pass along ``axis``
    (a dim of v, >= 2); the rows enumerate (n, o1, o2) over the other spatial axes (size 1 where fewer)."""
    others = [(v.shape[a], v.stride(a)) for a in range(2, v.dim()) if a != axis]
    (o1, s1), (o2, s2) = others + [(1, 0)] * (2 - len(others))
    return (v.shape[0] * o1 * o2, o1, o2, v.shape[axis]), (v.stride(1), v.stride(0), s1, s2, v.stride(axis))


def _precision(dtype: torch.dtype) -> str:
    """float32: exact float32 products (no TF32); bf16/fp16: tensor cores (the setting is ignored)."""
    return 'ieee' if dtype == torch.float32 else 'tf32'


def _toeplitz_pass(x: Tensor, k: Tensor, out: Tensor, axis: int, groups: int, adjoint: bool, block: int,
                   skip: Optional[Tensor] = None, D: Optional[Tensor] = None) -> Tensor:
    """out[:, j] = sum_{g < groups} T_{gC+j} x[:, (gC+j) % C_x] along ``axis`` (+ D[gC+j] skip[:, (gC+j) % C_s]),
    C = out channels; k: (taps channels, 2L-1) float32. All logical channels-first views; returns out."""
    (rows, o1, o2, length), si = _axis_view(x, axis)
    _, so = _axis_view(out, axis)
    ss = _axis_view(skip, axis)[1] if skip is not None else si
    br, bl = _tile(rows, block), _tile(length, block)
    grid = (out.shape[1], triton.cdiv(rows, br), triton.cdiv(length, bl))
    _pass_kernel[grid](
        x, k, skip if skip is not None else x, D if D is not None else k, out,
        out.shape[1], groups, x.shape[1], skip.shape[1] if skip is not None else 1, rows, o1, o2, length,
        *si, *ss, *so, ADJOINT=adjoint, HAS_SKIP=skip is not None, BR=br, BL=bl, PRECISION=_precision(x.dtype))
    return out


def _tap_grad(g: Tensor, x: Tensor, axis: int, block: int) -> Tensor:
    """(channels of g, 2L-1) float32 gradient of the taps of a pass along ``axis`` with input x and output grad g."""
    (rows, o1, o2, length), si = _axis_view(x, axis)
    _, sg = _axis_view(g, axis)
    br, bl = _tile(rows, block), _tile(length, block)
    rows_per_prog = triton.cdiv(triton.cdiv(rows, br), 16) * br  # up to 16 programs per (channel, block) over rows
    dk = torch.zeros(g.shape[1], 2 * length - 1, device=g.device, dtype=torch.float32)
    grid = (g.shape[1], triton.cdiv(length, bl) ** 2, triton.cdiv(rows, rows_per_prog))
    _tap_grad_kernel[grid](g, x, dk, x.shape[1], rows, o1, o2, length, rows_per_prog, *sg, *si,
                           BR=br, BL=bl, PRECISION=_precision(x.dtype))
    return dk


def _empty(like: Tensor, channels: int, layout: str) -> Tensor:
    """New tensor shaped like logical channels-first ``like`` with ``channels`` channels, stored in ``layout``;
    returns its channels-first view."""
    shape = (like.shape[0], channels) + tuple(like.shape[2:])
    if layout == 'channels_first':
        return like.new_empty(shape)
    return like.new_empty((shape[0],) + shape[2:] + (channels,)).movedim(-1, 1)


def _flat_taps(ks: Sequence[Tensor]) -> List[Tensor]:
    """ks[i] (c, H, 2L-1) -> (c H, 2L-1) float32 contiguous, row c H + h."""
    return [k.float().reshape(-1, k.shape[-1]).contiguous() for k in ks]


def _chain_inputs(v: Tensor, kf: Sequence[Tensor], channels: int, layout: str, block: int) -> List[Tensor]:
    """Inputs of the d passes, [X, Z_1, .., Z_{d-1}] (pass i along spatial axis d-1-i, dim v.dim()-1-i)."""
    ins = [v]
    for i in range(len(kf) - 1):
        axis = v.dim() - 1 - i
        ins.append(_toeplitz_pass(ins[-1], kf[axis - 2], _empty(v, channels, layout), axis, 1, False, block))
    return ins


def _separable_conv_fwd(u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor], layout: str, block: int) -> Tensor:
    v = u if layout == 'channels_first' else u.movedim(-1, 1)
    kf = _flat_taps(ks)
    c_out = ks[0].shape[0] * ks[0].shape[1]
    z = _chain_inputs(v, kf, c_out, layout, block)[-1]
    dd = D.float().reshape(-1).contiguous() if D is not None else None
    y = _toeplitz_pass(z, kf[0], _empty(v, c_out, layout), 2, 1, False, block, skip=v if D is not None else None, D=dd)
    return y if layout == 'channels_first' else y.movedim(1, -1)


def _separable_conv_bwd(
        g: Tensor, u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor], layout: str, block: int
) -> Tuple[Tensor, List[Tensor], Optional[Tensor]]:
    v = u if layout == 'channels_first' else u.movedim(-1, 1)
    gv = g if layout == 'channels_first' else g.movedim(-1, 1)
    c, H = ks[0].shape[:2]
    d = len(ks)
    kf = _flat_taps(ks)
    ins = _chain_inputs(v, kf, c * H, layout, block)
    dks: List[Optional[Tensor]] = [None] * d
    grad = gv
    for i in reversed(range(d)):  # pass i ran along spatial axis d-1-i
        axis = v.dim() - 1 - i
        dks[axis - 2] = _tap_grad(grad, ins[i], axis, block).view(c, H, -1).to(ks[axis - 2].dtype)
        if i > 0:
            grad = _toeplitz_pass(grad, kf[axis - 2], _empty(v, c * H, layout), axis, 1, True, block)
    dd = D.float().reshape(-1).contiguous() if D is not None else None
    dx = _toeplitz_pass(grad, kf[-1], _empty(v, H, layout), v.dim() - 1, c, True, block,
                        skip=gv if D is not None else None, D=dd)
    dD = None
    if D is not None:
        axes = 'xyz'[:d]
        work = _operand_dtype(u)  # bf16 / fp16 on CUDA (fp32 accumulation), else float32, as the matmul path
        dD = torch.einsum(f'nch{axes},nh{axes}->ch', gv.unflatten(1, (c, H)).to(work), v.to(work)).to(D.dtype)
    return (dx if layout == 'channels_first' else dx.movedim(1, -1)), dks, dD


@torch.library.custom_op('s4nd_timm::separable_conv_triton_fwd', mutates_args=())
def _fwd_op(u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor], layout: str, block: int) -> Tensor:
    return _separable_conv_fwd(u, ks, D, layout, block)


@_fwd_op.register_fake
def _(u, ks, D, layout, block):
    c, H = ks[0].shape[:2]
    shape = (u.shape[0], c * H) + tuple(u.shape[2:]) if layout == 'channels_first' else tuple(u.shape[:-1]) + (c * H,)
    return u.new_empty(shape)


@torch.library.custom_op('s4nd_timm::separable_conv_triton_bwd', mutates_args=())
def _bwd_op(
        g: Tensor, u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor], layout: str, block: int
) -> Tuple[Tensor, list[Tensor], Tensor]:
    dx, dks, dD = _separable_conv_bwd(g, u, ks, D, layout, block)  # any strides, expanded gradients included
    return dx, dks, (dD if dD is not None else u.new_zeros(()))


@_bwd_op.register_fake
def _(g, u, ks, D, layout, block):
    dD = D.new_empty(D.shape) if D is not None else u.new_empty(())
    return u.new_empty(u.shape), [k.new_empty(k.shape) for k in ks], dD


def _setup_context(ctx, inputs, output):
    u, ks, D, layout, block = inputs
    ctx.save_for_backward(u, D, *ks)
    ctx.layout, ctx.has_d, ctx.block = layout, D is not None, block


def _backward(ctx, g):
    u, D, *ks = ctx.saved_tensors
    dx, dks, dD = _bwd_op(g, u, ks, D if ctx.has_d else None, ctx.layout, ctx.block)
    return dx, dks, (dD if ctx.has_d else None), None, None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def separable_conv_triton(
        u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor] = None, layout: str = 'channels_first',
        block: int = BLOCK) -> Tensor:
    """Separable convolution (Triton Toeplitz passes), forward and backward; a torch custom op (torch.compile-safe).

    Args:
        u: (B, H, *spatial) for layout='channels_first', (B, *spatial, H) for 'channels_last'; d = 1, 2 or 3,
            every axis <= ``MAX_LEN``; float32, bfloat16 or float16.
        ks: d tensors, ks[i]: (c, H, 2 * L_i - 1), two-sided, index L_i - 1 = offset 0.
        D: (c, H) skip term, or None.
        layout: 'channels_first' or 'channels_last', read and written in place (no permute copies).
        block: tile size, a power of two in 16..64 (the default 64 for use; tests force 16 to run several tiles
            per axis on small inputs).
    Returns:
        (B, c * H, *spatial) or (B, *spatial, c * H), channel index c * H + h, dtype of u. Gradients:
        input in u's dtype, kernels and D reduced over the batch in float32, returned in their dtype.
    """
    check_conv_args(u, ks, D, layout)
    if block not in (16, 32, 64):
        raise ValueError(f"block must be 16, 32 or 64 (tile size); got {block}")
    if not fits(u, ks, layout):
        raise ValueError(
            f"backend='triton' supports float32/bf16/fp16 inputs with every axis <= {MAX_LEN}; got {u.dtype} input "
            f"of shape {tuple(u.shape)} ({layout}). Use backend='auto', 'matmul' or 'fft'.")
    return _fwd_op(u, list(ks), D, layout, block)
