"""Fused separable convolution in Triton: forward and backward for 1-D, 2-D and 3-D inputs, both layouts.

Same operation and kernel convention as ``separable_conv_ref`` (separable_conv.py). Loaded lazily by
``kernels/__init__.py`` (never import it directly: TRITON_INTERPRET must be read before this module
is imported). Every kernel works on the logical channels-first view (B, C, [T,] L_1, L_2) through strides,
so channels-last tensors are read and written in place, without permute copies.

A program owns one (b, h) plane (2-D), one (b, h, t) plane (3-D) or a block of batch rows of one channel h
(1-D, where the batch plays the role of axis 1 and no convolution is applied along it). Per output channel c
it builds the per-axis Toeplitz tiles T_i[p, q] = k_i[c, h, L_i - 1 + p - q] on chip from the two-sided taps
(gathered loads, never written to memory) and computes
    forward:   Y_c = T_1 X T_2^T + D_c X                       (written once, every c)
    backward:  dX  = sum_c T_1^T dY_c T_2 + D_c dY_c             (one kernel, written once)
               dT_1 = sum_b dY_c (X T_2^T)^T, dT_2 = sum_b dY_c^T (T_1 X), dD_c = sum_b <dY_c, X>
               (second kernel; each Toeplitz gradient is reduced to its taps, k_i[L_i-1+j] += sum of
               diagonal j, with atomic adds into a float32 buffer).
3-D (T, L_1, L_2): the T axis is mixed first with scalar taps, A_c[t] = sum_s k_0[c, h, T-1+t-s] X[s] (float32,
T plane loads from cache per output plane), then Y_c[t] = T_1 A_c[t] T_2^T + D_c X[t]; the backward mixes dY
with the transposed taps the same way, uses A_c[t] for X in dT_1, dT_2, and adds
dk_0[T-1+t-s] += <T_1^T dY_c[t] T_2, X[s]>.
tl.dot multiplies in the input dtype (bf16/fp16 tensor cores, float32 accumulation); float32 inputs
use input_precision='ieee' (no TF32), so results match the torch paths to float32 rounding.
Tiles are padded to powers of two >= 16; ``fits`` says which shapes the kernels take.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .separable_conv import check_conv_args

__all__ = ['fits', 'separable_conv_triton']

MAX_TILE_2D = 64  # largest in-plane axis length in 2-D and 3-D: the (L_1, L_2) plane sits in one (64, 64) tile
MAX_LEN_T = 64  # largest leading axis length in 3-D (T planes mixed with scalar taps; T^2 plane loads per channel)
MAX_LEN_1D = 128  # largest length in 1-D: one (128, 128) Toeplitz tile
ROWS_1D = 16  # batch rows per program in 1-D
# Shared memory per block (compiled sm_80 / sm_90 metadata, tests/test_triton_compile.py, docs/benchmarks.md):
# 1-D tiles of 128 need up to 144 KiB and 2-D float32 (64, 64) planes up to 112 KiB; every other admitted tile at
# most 80 KiB. GPUs that give a block less than FULL_TILES_SHARED_BYTES (sm_86 / sm_89: 99 KiB) get smaller limits.
FULL_TILES_SHARED_BYTES = 144 * 1024
SMALL_SHARED_MAX_LEN_1D = 64
SMALL_SHARED_MAX_TILE_2D_FP32 = 32


@torch.compiler.assume_constant_result  # a device property: torch.compile reads it once, no graph break
def shared_memory_limit(device: torch.device) -> Optional[int]:
    """Bytes of shared memory one block may use on a CUDA device (opt-in maximum); None for other devices and
    without a CUDA driver (fake CUDA tensors)."""
    if device.type != 'cuda' or not torch.cuda.is_available():
        return None
    return getattr(torch.cuda.get_device_properties(device), 'shared_memory_per_block_optin', None)


def tile_limits(dtype: torch.dtype, ndim: int, shared_limit: Optional[int]) -> Tuple[int, int]:
    """(largest length per convolved in-plane axis, largest T in 3-D) for inputs of ``dtype`` and rank ``ndim`` on a
    device whose blocks get ``shared_limit`` bytes of shared memory (None: no limit, e.g. the interpreter)."""
    small = shared_limit is not None and shared_limit < FULL_TILES_SHARED_BYTES
    if ndim == 1:
        return (SMALL_SHARED_MAX_LEN_1D if small else MAX_LEN_1D), 1
    if small and ndim == 2 and dtype == torch.float32:
        return SMALL_SHARED_MAX_TILE_2D_FP32, 1
    return MAX_TILE_2D, (MAX_LEN_T if ndim == 3 else 1)


def fits(u: Tensor, ks: Sequence, layout: str, shared_limit: Optional[int] = None) -> bool:
    """True when the fused kernels take these shapes on u's device (``tile_limits``: 1-D up to 128, 2-D and 3-D up
    to 64 per axis; less on GPUs with under 144 KiB of shared memory per block).
    ks: the kernels (c, H, 2 L_i - 1) or their shapes; shared_limit: bytes per block (default: u's device)."""
    spatial = [tuple(getattr(k, 'shape', k))[-1] // 2 + 1 for k in ks]
    if u.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    limit = shared_limit if shared_limit is not None else shared_memory_limit(u.device)
    max_len, max_t = tile_limits(u.dtype, len(spatial), limit)
    if len(spatial) == 3 and spatial[0] > max_t:
        return False
    return max(spatial[-2:]) <= max_len


def _tile(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


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
def _mix_axis0(p_ptr, s_t, offs, mask, k0_ptr, t, T, BR: tl.constexpr, BW: tl.constexpr, TRANSPOSE: tl.constexpr):
    """sum_s k0[T-1+t-s] P[s] (TRANSPOSE: k0[T-1+s-t]) over the T planes P[s] at p_ptr + s * s_t + offs, float32."""
    acc = tl.zeros((BR, BW), dtype=tl.float32)
    for s in range(T):
        if TRANSPOSE:
            tap = tl.load(k0_ptr + T - 1 + s - t)
        else:
            tap = tl.load(k0_ptr + T - 1 + t - s)
        acc += tap * tl.load(p_ptr + s * s_t + offs, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _plane_rows(R, L2, AXIS: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr):
    """This program's plane t and block of BR rows (program axis AXIS enumerates (t, block)), the columns, and the
    (BR, BW) mask of elements inside the (R, L2) plane."""
    n_blocks = tl.cdiv(R, BR)
    t, block = tl.program_id(AXIS) // n_blocks, tl.program_id(AXIS) % n_blocks
    rows = block * BR + tl.arange(0, BR)
    cols = tl.arange(0, BW)
    return t, rows, cols, (rows[:, None] < R) & (cols[None, :] < L2)


@triton.jit
def _channel_operator(base, s_t, offs, mask, tile, k0_ptr, k1_ptr, k2_ptr, d_ptr, ch, t, T, rows, cols, L1, L2,
                      CONV0: tl.constexpr, CONV1: tl.constexpr, HAS_D: tl.constexpr, BR: tl.constexpr,
                      BW: tl.constexpr, ADJOINT: tl.constexpr, PRECISION: tl.constexpr):
    """Channel ch of the separable operator at plane t, float32 (BR, BW), for the T planes at base + s * s_t + offs
    (tile: plane t, already loaded): T_1 (T_0-mixed X)[t] T_2^T + D X[t]; ADJOINT: the transposed taps,
    T_1^T (T_0^T-mixed dY)[t] T_2 + D dY[t]."""
    dt = tile.dtype
    if CONV0:  # 3-D: mix the T planes first (scalar taps), then the two in-plane Toeplitz products
        a = _mix_axis0(base, s_t, offs, mask, k0_ptr + ch * (2 * T - 1), t, T, BR, BW, ADJOINT).to(dt)
    else:
        a = tile
    if ADJOINT:
        t2 = _toeplitz_tile(k2_ptr + ch * (2 * L2 - 1), cols, cols, L2, False)
    else:
        t2 = _toeplitz_tile(k2_ptr + ch * (2 * L2 - 1), cols, cols, L2, True)
    z = tl.dot(a, t2.to(dt), input_precision=PRECISION)
    if CONV1:
        t1 = _toeplitz_tile(k1_ptr + ch * (2 * L1 - 1), rows, rows, L1, ADJOINT)
        z = tl.dot(t1.to(dt), z.to(dt), input_precision=PRECISION)
    if HAS_D:
        z += tl.load(d_ptr + ch) * tile.to(tl.float32)
    return z


@triton.jit
def _separable_conv_fwd_kernel(
        x_ptr, k0_ptr, k1_ptr, k2_ptr, d_ptr, y_ptr,
        H, C, T, R, L1, L2,
        sx_n, sx_h, sx_t, sx_r, sx_w, sy_n, sy_h, sy_t, sy_r, sy_w,
        CONV0: tl.constexpr, CONV1: tl.constexpr, HAS_D: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr,
        PRECISION: tl.constexpr):
    """Y[n, c*H + h, t, r, w] for one (n, h), one t and a block of BR rows r (rows: axis -2, or the batch in 1-D)."""
    pid = tl.program_id(0)
    n, h = pid // H, pid % H
    t, rows, cols, mask = _plane_rows(R, L2, 1, BR, BW)
    x_offs = rows[:, None] * sx_r + cols[None, :] * sx_w
    x_base = x_ptr + n * sx_n + h * sx_h
    x = tl.load(x_base + t * sx_t + x_offs, mask=mask, other=0.0)
    for c in range(C):
        z = _channel_operator(x_base, sx_t, x_offs, mask, x, k0_ptr, k1_ptr, k2_ptr, d_ptr, c * H + h, t, T, rows,
                              cols, L1, L2, CONV0, CONV1, HAS_D, BR, BW, False, PRECISION)
        y_off = n * sy_n + (c * H + h) * sy_h + t * sy_t + rows[:, None] * sy_r + cols[None, :] * sy_w
        tl.store(y_ptr + y_off, z.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _separable_conv_bwd_dx_kernel(
        dy_ptr, k0_ptr, k1_ptr, k2_ptr, d_ptr, dx_ptr,
        H, C, T, R, L1, L2,
        sg_n, sg_h, sg_t, sg_r, sg_w, sx_n, sx_h, sx_t, sx_r, sx_w,
        CONV0: tl.constexpr, CONV1: tl.constexpr, HAS_D: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr,
        PRECISION: tl.constexpr):
    """dX[n, h, t] = sum_c (T_0^T-mixed dY)[n, c*H + h, t] through T_1^T, T_2 + D[c, h] dY[n, c*H + h, t]."""
    pid = tl.program_id(0)
    n, h = pid // H, pid % H
    t, rows, cols, mask = _plane_rows(R, L2, 1, BR, BW)
    g_offs = rows[:, None] * sg_r + cols[None, :] * sg_w
    acc = tl.zeros((BR, BW), dtype=tl.float32)
    for c in range(C):
        g_base = dy_ptr + n * sg_n + (c * H + h) * sg_h
        g = tl.load(g_base + t * sg_t + g_offs, mask=mask, other=0.0)
        acc += _channel_operator(g_base, sg_t, g_offs, mask, g, k0_ptr, k1_ptr, k2_ptr, d_ptr, c * H + h, t, T, rows,
                                 cols, L1, L2, CONV0, CONV1, HAS_D, BR, BW, True, PRECISION)
    x_off = n * sx_n + h * sx_h + t * sx_t + rows[:, None] * sx_r + cols[None, :] * sx_w
    tl.store(dx_ptr + x_off, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _scatter_diagonals(dk_ptr, dt, rows, cols, length):
    """dk[L-1+p-q] += dT[p, q] for p, q < L (the Toeplitz gradient reduced to its taps)."""
    mask = (rows[:, None] < length) & (cols[None, :] < length)
    tl.atomic_add(dk_ptr + length - 1 + rows[:, None] - cols[None, :], dt, mask=mask)


@triton.jit
def _separable_conv_bwd_dk_kernel(
        x_ptr, dy_ptr, k0_ptr, k1_ptr, k2_ptr, dk0_ptr, dk1_ptr, dk2_ptr, dd_ptr,
        H, N, T, R, L1, L2, N_PER_PROG,
        sx_n, sx_h, sx_t, sx_r, sx_w, sg_n, sg_h, sg_t, sg_r, sg_w,
        CONV0: tl.constexpr, CONV1: tl.constexpr, HAS_D: tl.constexpr, BR: tl.constexpr, BW: tl.constexpr,
        BT: tl.constexpr, PRECISION: tl.constexpr):
    """Kernel and D gradients of output channel (c, h) from output plane t, summed over N_PER_PROG outer indices n
    and BR rows. 3-D: with A = T_0-mixed X at t, dT_1 and dT_2 are the 2-D ones with A for X, and
    dk_0[T-1+t-s] += <T_1^T dY[t] T_2, X[s]> for every s."""
    ch = tl.program_id(0)
    h = ch % H
    t, rows, cols, mask = _plane_rows(R, L2, 2, BR, BW)
    x_offs = rows[:, None] * sx_r + cols[None, :] * sx_w
    t2t = _toeplitz_tile(k2_ptr + ch * (2 * L2 - 1), cols, cols, L2, True)
    if CONV1:
        t1 = _toeplitz_tile(k1_ptr + ch * (2 * L1 - 1), rows, rows, L1, False)
    else:
        t1 = tl.zeros((BR, BR), dtype=tl.float32)
    dt1 = tl.zeros((BR, BR), dtype=tl.float32)
    dt2 = tl.zeros((BW, BW), dtype=tl.float32)
    dd = tl.zeros((BR, BW), dtype=tl.float32)
    dt0 = tl.zeros((BT,), dtype=tl.float32)  # dt0[s] = <T_1^T dY[t] T_2, X[s]>, 3-D only
    planes = tl.arange(0, BT)
    n_start = tl.program_id(1) * N_PER_PROG
    for n in range(n_start, tl.minimum(n_start + N_PER_PROG, N)):
        x_base = x_ptr + n * sx_n + h * sx_h
        x = tl.load(x_base + t * sx_t + x_offs, mask=mask, other=0.0)
        g = tl.load(dy_ptr + n * sg_n + ch * sg_h + t * sg_t + rows[:, None] * sg_r + cols[None, :] * sg_w,
                    mask=mask, other=0.0)
        dt = x.dtype
        g = g.to(dt)
        if CONV0:
            back = tl.dot(g, tl.trans(t2t).to(dt), input_precision=PRECISION)  # dY T_2
            back = tl.dot(tl.trans(t1).to(dt), back.to(dt), input_precision=PRECISION)  # T_1^T dY T_2
            a = tl.zeros((BR, BW), dtype=tl.float32)
            for s in range(T):  # one pass over the T planes: the mix A and the T_0 gradient
                xs = tl.load(x_base + s * sx_t + x_offs, mask=mask, other=0.0).to(tl.float32)
                a += tl.load(k0_ptr + ch * (2 * T - 1) + T - 1 + t - s) * xs
                dt0 += tl.where(planes == s, tl.sum(tl.sum(back * xs, axis=1), axis=0), 0.0)
            a = a.to(dt)
        else:
            a = x
        if CONV1:
            z = tl.dot(a, t2t.to(dt), input_precision=PRECISION)  # A T_2^T
            dt1 += tl.dot(g, tl.trans(z.to(dt)), input_precision=PRECISION)
            w = tl.dot(t1.to(dt), a, input_precision=PRECISION).to(dt)  # T_1 A
        else:
            w = a
        dt2 += tl.dot(tl.trans(g), w, input_precision=PRECISION)
        if HAS_D:
            dd += g.to(tl.float32) * x.to(tl.float32)
    _scatter_diagonals(dk2_ptr + ch * (2 * L2 - 1), dt2, cols, cols, L2)
    if CONV1:
        _scatter_diagonals(dk1_ptr + ch * (2 * L1 - 1), dt1, rows, rows, L1)
    if CONV0:
        tl.atomic_add(dk0_ptr + ch * (2 * T - 1) + T - 1 + t - planes, dt0, mask=planes < T)
    if HAS_D:
        tl.atomic_add(dd_ptr + ch, tl.sum(tl.sum(dd, axis=1), axis=0))


class _Geometry(NamedTuple):
    """Launch geometry of a logical channels-first view: N outer indices, T planes (axis 0 in 3-D), R rows of BR."""
    view: Tensor
    N: int
    T: int
    R: int
    L1: int
    L2: int
    BR: int


def _views(u: Tensor, layout: str, d: int) -> _Geometry:
    """Logical channels-first view of u (a view, never a copy) and the launch geometry.

    3-D: N = B, T = L_0 planes of (R = L_1 rows, L_2); 2-D: T = 1; 1-D: N = 1, T = 1 and the B batch elements
    are the rows (L1 = 1 unused).
    """
    v = u if layout == 'channels_first' else u.movedim(-1, 1)
    if d == 1:
        return _Geometry(v, 1, 1, v.shape[0], 1, v.shape[2], ROWS_1D)
    return _Geometry(v, v.shape[0], v.shape[2] if d == 3 else 1, v.shape[-2], v.shape[-2], v.shape[-1],
                     _tile(v.shape[-2]))


def _strides(v: Tensor, d: int) -> Tuple[int, int, int, int, int]:
    """(n, h, t, row, col) element strides of a logical channels-first view (t: 0 below 3-D)."""
    if d == 3:
        return v.stride(0), v.stride(1), v.stride(2), v.stride(3), v.stride(4)
    if d == 2:
        return v.stride(0), v.stride(1), 0, v.stride(2), v.stride(3)
    return 0, v.stride(1), 0, v.stride(0), v.stride(2)


def _empty(shape_cf: Sequence[int], layout: str, like: Tensor) -> Tensor:
    """New tensor of logical channels-first shape, stored in `layout`; returns its channels-first view."""
    if layout == 'channels_first':
        return like.new_empty(shape_cf)
    return like.new_empty((shape_cf[0],) + tuple(shape_cf[2:]) + (shape_cf[1],)).movedim(-1, 1)


def _precision(dtype: torch.dtype) -> str:
    """float32: exact float32 products (no TF32); bf16/fp16: tensor cores (the setting is ignored)."""
    return 'ieee' if dtype == torch.float32 else 'tf32'


def _kernels(ks: Sequence[Tensor]) -> List[Tensor]:
    """[k_0, k_1, k_2] float32 contiguous, the last d being ks; the others are unused placeholders (below 3-D
    the missing leading axes are not convolved; in 1-D axis 1 is the batch)."""
    kf = [k.float().contiguous() for k in ks]
    return [kf[-1]] * (3 - len(kf)) + kf


def _flags(u: Tensor, geo: _Geometry, d: int, D: Optional[Tensor]) -> dict:
    return dict(CONV0=d == 3, CONV1=d >= 2, HAS_D=D is not None, BR=geo.BR, BW=_tile(geo.L2),
                PRECISION=_precision(u.dtype))


def _separable_conv_fwd(u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor], layout: str) -> Tensor:
    d = len(ks)
    c, H = ks[0].shape[:2]
    geo = _views(u, layout, d)
    v = geo.view
    y = _empty((v.shape[0], c * H) + tuple(v.shape[2:]), layout, u)
    k0, k1, k2 = _kernels(ks)
    dd = D.float().contiguous() if D is not None else k2
    grid = (geo.N * H, geo.T * triton.cdiv(geo.R, geo.BR))
    _separable_conv_fwd_kernel[grid](
        v, k0, k1, k2, dd, y, H, c, geo.T, geo.R, geo.L1, geo.L2, *_strides(v, d), *_strides(y, d),
        **_flags(u, geo, d, D))
    return y if layout == 'channels_first' else y.movedim(1, -1)


def _separable_conv_bwd(
        g: Tensor, u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor], layout: str
) -> Tuple[Tensor, Sequence[Tensor], Optional[Tensor]]:
    d = len(ks)
    c, H = ks[0].shape[:2]
    geo = _views(u, layout, d)
    v = geo.view
    gv = g if layout == 'channels_first' else g.movedim(-1, 1)
    kf = _kernels(ks)
    dd_in = D.float().contiguous() if D is not None else kf[2]
    dx = _empty(tuple(v.shape), layout, u)
    flags = _flags(u, geo, d, D)
    blocks = triton.cdiv(geo.R, geo.BR)
    _separable_conv_bwd_dx_kernel[(geo.N * H, geo.T * blocks)](
        gv, *kf, dd_in, dx, H, c, geo.T, geo.R, geo.L1, geo.L2, *_strides(gv, d), *_strides(dx, d), **flags)
    dkf = [torch.zeros_like(k) for k in kf]
    dD = torch.zeros(c, H, device=u.device, dtype=torch.float32)
    n_per_prog = max(1, triton.cdiv(geo.N, 16))  # up to 16 programs per channel along the batch
    grid = (c * H, triton.cdiv(geo.N, n_per_prog), geo.T * blocks)
    _separable_conv_bwd_dk_kernel[grid](
        v, gv, *kf, *dkf, dD, H, geo.N, geo.T, geo.R, geo.L1, geo.L2, n_per_prog, *_strides(v, d),
        *_strides(gv, d), BT=_tile(geo.T), **flags)
    dks = [dk.to(k.dtype) for dk, k in zip(dkf[3 - d:], ks)]
    return (dx if layout == 'channels_first' else dx.movedim(1, -1)), dks, (dD.to(D.dtype) if D is not None else None)


@torch.library.custom_op('s4nd_timm::separable_conv_triton_fwd', mutates_args=())
def _fwd_op(u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor], layout: str) -> Tensor:
    return _separable_conv_fwd(u, ks, D, layout)


@_fwd_op.register_fake
def _(u, ks, D, layout):
    c, H = ks[0].shape[:2]
    shape = (u.shape[0], c * H) + tuple(u.shape[2:]) if layout == 'channels_first' else tuple(u.shape[:-1]) + (c * H,)
    return u.new_empty(shape)


@torch.library.custom_op('s4nd_timm::separable_conv_triton_bwd', mutates_args=())
def _bwd_op(
        g: Tensor, u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor], layout: str
) -> Tuple[Tensor, list[Tensor], Tensor]:
    dx, dks, dD = _separable_conv_bwd(g, u, ks, D, layout)  # any strides, expanded gradients included
    return dx, dks, (dD if dD is not None else u.new_zeros(()))


@_bwd_op.register_fake
def _(g, u, ks, D, layout):
    dD = D.new_empty(D.shape) if D is not None else u.new_empty(())
    return u.new_empty(u.shape), [k.new_empty(k.shape) for k in ks], dD


def _setup_context(ctx, inputs, output):
    u, ks, D, layout = inputs
    ctx.save_for_backward(u, D, *ks)
    ctx.layout, ctx.has_d = layout, D is not None


def _backward(ctx, g):
    u, D, *ks = ctx.saved_tensors
    dx, dks, dD = _bwd_op(g, u, ks, D if ctx.has_d else None, ctx.layout)
    return dx, dks, (dD if ctx.has_d else None), None


_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def separable_conv_triton(
        u: Tensor, ks: Sequence[Tensor], D: Optional[Tensor] = None, layout: str = 'channels_first') -> Tensor:
    """Fused separable convolution (Triton), forward and backward; a torch custom op (torch.compile-safe).

    Args:
        u: (B, H, *spatial) for layout='channels_first', (B, *spatial, H) for 'channels_last'; d = 1, 2 or 3
            (``fits``: L <= 128 in 1-D, L_i <= 64 in 2-D and 3-D, less on GPUs with little shared memory);
            float32, bfloat16 or float16.
        ks: d tensors, ks[i]: (c, H, 2 * L_i - 1), two-sided, index L_i - 1 = offset 0.
        D: (c, H) skip term, or None.
        layout: 'channels_first' or 'channels_last', read and written in place (no permute copies).
    Returns:
        (B, c * H, *spatial) or (B, *spatial, c * H), channel index c * H + h, dtype of u. Gradients:
        input in u's dtype, kernels and D reduced over the batch in float32, returned in their dtype.
    """
    check_conv_args(u, ks, D, layout)
    if not fits(u, ks, layout):
        limit = shared_memory_limit(u.device)
        max_len, max_t = tile_limits(u.dtype, len(ks), limit)
        where = f" on this GPU ({limit // 1024} KiB of shared memory per block)" if limit else ''
        raise ValueError(
            f"backend='triton' supports float32/bf16/fp16 inputs with every convolved axis <= {max_len}"
            f"{f' and T <= {max_t}' if len(ks) == 3 else ''} for {u.dtype} {len(ks)}-D inputs{where}; got "
            f"{u.dtype} input of shape {tuple(u.shape)} ({layout}). Use backend='auto', 'matmul' or 'fft'.")
    return _fwd_op(u, list(ks), D, layout)
