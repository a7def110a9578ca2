"""Per-axis 1-D SSM kernels for S4ND: the init table, shared parameters and the diagonal (S4D) kernel.

Paper: S4ND, Nguyen et al. 2022 (arXiv 2210.06583); S4D, Gu et al. 2022 (arXiv 2206.11893);
HiPPO / S4, Gu et al. 2020, 2022 (arXiv 2008.07669, 2111.00396, 2206.12037 for FouT).
Math: docs/design.md §1.1, §3, §4, §5 (reference: state-spaces/s4).
The DPLR (S4) kernel sharing these parameters lives in ``dplr.py``.

Legend: H model channels (``dim``), N ``d_state``, M = N/2 complex modes kept (conjugate
symmetry), S ``n_ssm`` independent (A, B) sets tiled over H (channel h uses set h mod S), C_k kernel
channels (``channels`` x 2 when bidirectional), L kernel length (taps), r rate (step multiplier).

Stored tensors of one axis kernel (names and shapes of the reference's current layout, docs/design.md §8):

=========  ===============  =====================================================
name       shape            meaning
=========  ===============  =====================================================
inv_dt     (H, 1)           log of the base step size Δ_h (transform exp)
A_real     (S, M)           log(-Re A_n) (transform exp)
A_imag     (S, M)           -Im A_n >= 0
B          (1, S, M, 2)     complex B as (re, im) pairs
C          (C_k, H, M, 2)   complex C as (re, im) pairs
=========  ===============  =====================================================

The kernel for length L and rate r, with Δ = exp(inv_dt) r and a = Δ A:
    zoh:       K[c, h, l] = 2 Re Σ_n C B (e^a - 1) / A · e^{a l}
    bilinear:  K[c, h, l] = 2 Re Σ_n C B Δ / (1 - a/2) · λ^l,   λ = (1 + a/2) / (1 - a/2)
Bandlimit (docs/design.md §4): mode n of channel h is kept iff exp(inv_dt_h) |Im A_n| / (2π) < bandlimit / 2
(frequency in cycles per base-resolution sample, independent of the rate); masked modes get C = 0.

Inits (docs/design.md §3, table ``INITS``; Δ log-uniform in [dt_min, dt_max], C complex standard normal):
    lin  / diag-lin    A_n = -1/2 - iπn, B = 1
    inv  / diag-inv    A_n = -1/2 - i(N/π)(N/(2n+1) - 1), B = 1
    real / diag-real   A_n = -(n+1), B = 1
    legs / diag-legs   HiPPO-LegS diagonalized: A = Λ (Re -1/2), B = V^* B_legs with Im B clipped to ±2;
                       'legs' keeps the low-rank P = V^* P_legs (DPLR mode), 'diag-legs' has P = 0
    fourier            HiPPO-FouT diagonalized: A_n = -iπn (Re clamped to -1e-4), B = P = V^* B_fout;
                       DPLR mode only (its kernel does not decay without the low-rank term)
    hippo / diag       combinations: legs + fourier / inv + lin, each on half of the S sets
At storage -Re A and -Im A are clamped to >= 1e-4. ``deterministic=True``: log Δ evenly spaced over
the H channels in [log dt_min, log dt_max] and stored as a log (the reference stores exp of the
log there, so its Δ ends up exp(Δ), docs/design.md §3; here Δ is what dt_min/dt_max say), and C = V^* e_0
(the unit first coordinate of the HiPPO basis; e_0 for lin/inv/real) for every channel.
"""
import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

__all__ = [
    'INITS', 'DIAG_INITS', 'DPLR_INITS', 'SSMInit', 'check_init', 'init_system', 'hippo_nplr',
    'hippo_legs', 'SSMAxisKernel', 'DiagAxisKernel', 'diag_taps', 'kernel_compute_dtype', 'mark_ssm_param']

# The one init table (docs/design.md §3): name -> the single inits that split the S sets evenly, in order. A single
# init is (family, low_rank): the (A, B) family and whether its DPLR form keeps the HiPPO low-rank P
# (False: P = 0). The 'diag-' spellings are the reference's; the diag mode ignores P.
INITS = {
    'legs': (('legs', True),),
    'fourier': (('fourier', True),),
    'hippo': (('legs', True), ('fourier', True)),
    'diag-legs': (('legs', False),),
    'diag-lin': (('lin', False),),
    'diag-inv': (('inv', False),),
    'diag-real': (('real', False),),
    'diag': (('inv', False), ('lin', False)),
    'lin': (('lin', False),),
    'inv': (('inv', False),),
    'real': (('real', False),),
}
# FouT has a (clamped) zero eigenvalue: its kernel is a window of length l_kernel only with DPLR (docs/design.md §3).
_DPLR_ONLY = ('fourier',)
DIAG_INITS = tuple(sorted(name for name, parts in INITS.items() if all(f not in _DPLR_ONLY for f, _ in parts)))
DPLR_INITS = tuple(sorted(INITS))
DISCRETIZATIONS = ('zoh', 'bilinear')
_CLAMP = 1e-4  # -Re A and -Im A are clamped to at least this at init (docs/design.md §3)
_B_CLIP = 2.0  # |Im B| of the LegS init is clipped to this (reference's B_clip)


def check_init(init: str, mode: str) -> None:
    """Raise a ValueError unless ``init`` is an init of axis-kernel mode 'diag' or 'dplr'."""
    allowed = DIAG_INITS if mode == 'diag' else DPLR_INITS
    if init in allowed:
        return
    if init in INITS:
        raise ValueError(
            f"init={init!r} needs mode='dplr': it contains HiPPO-FouT, whose diagonal part has a (clamped) zero "
            f"eigenvalue, so its kernel only makes sense with the low-rank term and a finite l_kernel (docs/design.md §3). "
            f"Pass mode='dplr' (with l_max), or a diagonal init: {DIAG_INITS}")
    raise ValueError(f"init={init!r} is not an SSM init of mode={mode!r}; expected one of {allowed}")


def hippo_nplr(name: str, d_state: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """HiPPO matrix (A, B) in normal-plus-low-rank form, diagonalized (float64).

    A_hippo = V diag(Λ) V^* - P_h P_h^T with V unitary (conjugate pairs: only the M columns with Im Λ <= 0
    are returned, the other half is their complex conjugate). 'legs' (LegS): Λ = -1/2 + i w, w from ``eigh``
    of the skew part of A_legs + P_h P_h^T, P_h = sqrt(n + 1/2), B_h = sqrt(2n + 1). 'fourier' (FouT, docs/design.md §3):
    A_fout = J - b b^T with J block diagonal, blocks [[0, -πk], [πk, 0]] on rows (2k, 2k+1), and
    b = P_h = B_h = (1, 0, √2, 0, √2, 0, ...); its normal part J has Λ_k = -iπk with eigenvector
    (e_2k + i e_2k+1) / √2 (k = 0 included: the reference's choice in the double zero eigenspace).
    Modes ordered by ascending |Im Λ|.
    Returns:
        Lambda (M,), B (M,) = V^* B_h, P (M,) = V^* P_h, V (N, M); complex128.
    """
    m = d_state // 2
    n = torch.arange(d_state, dtype=torch.float64)
    if name == 'legs':
        r = torch.sqrt(2 * n + 1)
        a_legs = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(n + 1)
        b_h, p_h = r, torch.sqrt(n + 0.5)
        skew = a_legs + p_h[:, None] * p_h[None, :] + 0.5 * torch.eye(d_state, dtype=torch.float64)
        w, v = torch.linalg.eigh(skew.to(torch.complex128) * -1j)  # skew v = i w v
        order = torch.argsort(w)[:m].flip(0)  # the M most negative, then flipped: ascending |w|
        w, v = w[order], v[:, order]
        lam = torch.complex(torch.full_like(w, -0.5), w)
    elif name == 'fourier':
        k = torch.arange(m)
        lam = torch.complex(torch.zeros(m, dtype=torch.float64), -math.pi * k.to(torch.float64))
        v = torch.zeros(d_state, m, dtype=torch.complex128)
        v[2 * k, k] = 2 ** -0.5
        v[2 * k + 1, k] = 1j * 2 ** -0.5
        b_h = torch.zeros(d_state, dtype=torch.float64)
        b_h[0::2] = 2 ** 0.5
        b_h[0] = 1.0
        p_h = b_h
    else:
        raise ValueError(f"hippo_nplr knows 'legs' and 'fourier'; got {name!r}")
    vh = v.conj().T
    return lam, vh @ b_h.to(torch.complex128), vh @ p_h.to(torch.complex128), v


def hippo_legs(d_state: int) -> Tuple[Tensor, Tensor, Tensor]:
    """HiPPO-LegS diagonalized: Lambda, B = V^* B_legs, P = V^* P_legs, each (M,) complex128 (see hippo_nplr)."""
    return hippo_nplr('legs', d_state)[:3]


class SSMInit(NamedTuple):
    """Initial system of S sets, each (S, M) complex128.

    A: diagonal part, Im A <= 0 (before the storage clamps). B: input vector. P: low-rank term
    (A_full = diag(A) - P P^*; zeros where the init has none). C0: deterministic C = V^* e_0.
    """
    A: Tensor
    B: Tensor
    P: Tensor
    C0: Tensor


def _init_one(family: str, low_rank: bool, d_state: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(A, B, P, C0) of one single init, each (M,) complex128."""
    m = d_state // 2
    if family in ('legs', 'fourier'):
        lam, b, p, v = hippo_nplr(family, d_state)
        if family == 'legs':
            b = torch.complex(b.real, b.imag.clamp(-_B_CLIP, _B_CLIP))
        return lam, b, p if low_rank else torch.zeros_like(p), v[0].conj()
    n = torch.arange(m, dtype=torch.float64)
    half = torch.full_like(n, -0.5)
    if family == 'lin':
        a = torch.complex(half, -math.pi * n)
    elif family == 'inv':
        a = torch.complex(half, -(d_state / math.pi) * (d_state / (2 * n + 1) - 1))
    else:
        assert family == 'real', family
        a = torch.complex(-(n + 1), torch.zeros_like(n))
    c0 = torch.zeros(m, dtype=torch.complex128)
    c0[0] = 1.0
    return a, torch.ones(m, dtype=torch.complex128), torch.zeros(m, dtype=torch.complex128), c0


def init_system(init: str, d_state: int, n_ssm: int, mode: str = 'dplr') -> SSMInit:
    """The init table entry ``init`` for ``n_ssm`` sets (S, M); validated for axis-kernel ``mode``."""
    check_init(init, mode)
    if d_state < 2 or d_state % 2:
        raise ValueError(f"d_state must be a positive even number (N/2 complex modes are kept); got {d_state}")
    parts = INITS[init]
    if n_ssm < 1 or n_ssm % len(parts):
        raise ValueError(
            f"init={init!r} splits the n_ssm sets into {len(parts)} equal parts; got n_ssm={n_ssm}. "
            f"Pass n_ssm a multiple of {len(parts)} (e.g. n_ssm=dim).")
    per = n_ssm // len(parts)
    sets = [torch.stack(_init_one(family, low_rank, d_state)).unsqueeze(1).expand(-1, per, -1)
            for family, low_rank in parts]
    return SSMInit(*torch.cat(sets, dim=1).clone())


def kernel_compute_dtype(t: Tensor) -> torch.dtype:
    """Real dtype kernels are generated in: float64 stays float64, everything else runs in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def mark_ssm_param(p: Tensor, lr: Optional[float]) -> None:
    """Attach the optimizer hint read by the training code: own lr (None = global), no weight decay."""
    p._optim = {'weight_decay': 0.0} if lr is None else {'lr': lr, 'weight_decay': 0.0}


class SSMAxisKernel(nn.Module):
    """Parameters shared by the axis kernels (table in the module docstring) and their assembly.

    Subclasses set ``mode`` ('diag' or 'dplr') and add ``forward(length, rate) -> (C_k, H, length)``.
    Loading a state dict of the other mode (a DPLR kernel has ``P``, a diagonal one has not) is refused:
    in a DPLR checkpoint ``C`` holds C̃, not C (docs/design.md §8).

    Args:
        dim: H, number of features.
        kernel_channels: C_k, independent C per feature.
        system: the init (``init_system``), S sets.
        dt_min, dt_max: range of the base step Δ (log-uniform per feature, or log-spaced if deterministic).
        bandlimit: None or cutoff (fraction of the base-resolution Nyquist band x 2, docs/design.md §4).
        ssm_lr: learning-rate hint for inv_dt, A_real, A_imag, B.
        deterministic: log-spaced Δ (stored as a log; no exp-of-a-log as in the reference) and C = V^* e_0.
    """
    mode: str

    def __init__(
            self,
            dim: int,
            kernel_channels: int,
            system: SSMInit,
            dt_min: float,
            dt_max: float,
            bandlimit: Optional[float],
            ssm_lr: Optional[float],
            deterministic: bool,
    ):
        super().__init__()
        n_ssm, m = system.A.shape
        if dim % n_ssm:
            raise ValueError(f"n_ssm={n_ssm} must divide dim={dim} (the S sets are tiled over the H features)")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max; got dt_min={dt_min}, dt_max={dt_max}")
        self.dim, self.d_state, self.kernel_channels = dim, 2 * m, kernel_channels
        self.n_ssm, self.bandlimit = n_ssm, bandlimit
        lo, hi = math.log(dt_min), math.log(dt_max)
        if deterministic:
            log_dt = torch.linspace(lo, hi, dim, dtype=torch.float64).unsqueeze(-1)
            c = system.C0.repeat(dim // n_ssm, 1).expand(kernel_channels, -1, -1)
        else:
            log_dt = torch.rand(dim, 1, dtype=torch.float64) * (hi - lo) + lo
            c = torch.randn(kernel_channels, dim, m, dtype=torch.complex128)
        a = system.A
        self.inv_dt = nn.Parameter(log_dt.float())
        self.A_real = nn.Parameter(torch.log((-a.real).clamp(min=_CLAMP)).float())
        self.A_imag = nn.Parameter((-a.imag).clamp(min=_CLAMP).float())
        self.B = nn.Parameter(torch.view_as_real(system.B).unsqueeze(0).float().contiguous())
        self.C = nn.Parameter(torch.view_as_real(c).float().contiguous())
        for p in (self.inv_dt, self.A_real, self.A_imag, self.B):
            mark_ssm_param(p, ssm_lr)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, d_state={self.d_state}, kernel_channels={self.kernel_channels}, n_ssm={self.n_ssm}, "
                f"bandlimit={self.bandlimit}")

    def modes(self, dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Assembled, tiled system in ``dtype`` (default: the compute dtype of the parameters).

        Returns dt_base (H, 1) real, A (H, M) complex, B (H, M) complex, C (C_k, H, M) complex
        with the bandlimit mask applied to C.
        """
        dtype = dtype or kernel_compute_dtype(self.C)
        reps = self.dim // self.n_ssm
        dt_base = self.inv_dt.to(dtype).exp()
        a_imag = self.A_imag.to(dtype).repeat(reps, 1)
        a = torch.complex(-self.A_real.to(dtype).exp(), -self.A_imag.to(dtype)).repeat(reps, 1)
        b = torch.view_as_complex(self.B.to(dtype).contiguous()[0]).repeat(reps, 1)
        c = torch.view_as_complex(self.C.to(dtype).contiguous())  # contiguous: model.to(channels_last) restrides 4-D tensors
        if self.bandlimit is not None:
            freq = dt_base * a_imag / (2 * math.pi)
            c = c * (freq < self.bandlimit / 2).to(dtype)
        return dt_base, a, b, c

    def bandlimit_mask(self) -> Tensor:
        """(H, M) bool, True where a mode is kept (all True without a bandlimit)."""
        dt_base, a, _, _ = self.modes()
        if self.bandlimit is None:
            return torch.ones_like(a.real, dtype=torch.bool)
        return dt_base * a.imag.abs() / (2 * math.pi) < self.bandlimit / 2

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if prefix + 'C' in state_dict:
            saved = 'dplr' if prefix + 'P' in state_dict else 'diag'
            if saved != self.mode:
                error_msgs.append(
                    f"{prefix.rstrip('.') or 'axis kernel'}: the checkpoint holds a mode={saved!r} axis kernel "
                    f"({'with' if saved == 'dplr' else 'without'} the low-rank tensor '{prefix}P'), this module has "
                    f"mode={self.mode!r}. Build the layer with S4ND(..., mode={saved!r}) to load it (a DPLR "
                    f"checkpoint stores C̃ = C(I - Ā^L) in 'C', docs/design.md §8, so it cannot serve as a diagonal C).")
                return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


class DiagAxisKernel(SSMAxisKernel):
    """Diagonal (S4D) SSM kernel along one spatial axis.

    Args:
        dim: H, number of features.
        d_state: N (even); M = N/2 complex modes are stored.
        kernel_channels: C_k, independent C per feature (channels x 2 if bidirectional).
        init: one of DIAG_INITS.
        dt_min, dt_max: Δ is log-uniform in [dt_min, dt_max] per feature.
        n_ssm: S, number of (A, B) sets tiled over H (must divide H).
        disc: 'zoh' or 'bilinear'.
        bandlimit: None or cutoff (fraction of the base-resolution Nyquist band x 2, docs/design.md §4).
        ssm_lr: learning-rate hint for inv_dt, A_real, A_imag, B.
        deterministic: log-spaced Δ and C = V^* e_0 (module docstring).
    """
    mode = 'diag'

    def __init__(
            self,
            dim: int,
            d_state: int = 64,
            kernel_channels: int = 1,
            init: str = 'legs',
            dt_min: float = 1e-3,
            dt_max: float = 1e-1,
            n_ssm: int = 1,
            disc: str = 'zoh',
            bandlimit: Optional[float] = None,
            ssm_lr: Optional[float] = None,
            deterministic: bool = False,
    ):
        if disc not in DISCRETIZATIONS:
            raise ValueError(f"disc={disc!r} is not supported; expected one of {DISCRETIZATIONS}")
        super().__init__(
            dim, kernel_channels, init_system(init, d_state, n_ssm, mode='diag'), dt_min, dt_max, bandlimit,
            ssm_lr, deterministic)
        self.disc = disc

    def discretize(self, rate: float = 1.0) -> Tuple[Tensor, Tensor]:
        """The zoh/bilinear discretization at step Δ = exp(inv_dt) * rate, so that K[c, h, l] = 2 Re Σ_n W e^{s l}.

        Returns:
            W (C_k, H, M) complex: C (bandlimit mask applied) times the per-mode coefficient;
            s (H, M) complex: the log-step (log of the discrete eigenvalue). Shared by ``forward`` and the
            Triton kernel generator (``s4nd_timm.kernels.axis_kernels_triton``).
        """
        dt_base, a, b, c = self.modes()
        dt = dt_base * rate
        da = dt * a
        if self.disc == 'zoh':
            return c * (b * (da.exp() - 1) / a), da
        return c * (b * dt / (1 - da / 2)), torch.log((1 + da / 2) / (1 - da / 2))

    def forward(self, length: int, rate: float = 1.0) -> Tensor:
        """Causal kernel taps: (C_k, H, length), real, float32 (float64 for float64 params)."""
        return diag_taps(*self.discretize(rate), length)


def diag_taps(w: Tensor, log_step: Tensor, length: int) -> Tensor:
    """K[c, h, l] = 2 Re Σ_n W[c, h, n] e^{s[h, n] l} for l < length, as one real batched matmul.

    Args:
        w: (C_k, H, M) complex; log_step: (H, M) complex (``DiagAxisKernel.discretize``). Several axis kernels
            can be stacked along H and computed in one call.
    Returns:
        (C_k, H, length) real: 2 [Re W, -Im W] @ [e^{Re s l} cos(Im s l); e^{Re s l} sin(Im s l)].
    """
    pos = torch.arange(length, device=w.device, dtype=w.real.dtype)
    mag = torch.exp(log_step.real.unsqueeze(-1) * pos)  # (H, M, L)
    ang = log_step.imag.unsqueeze(-1) * pos
    vandermonde = torch.cat([mag * ang.cos(), mag * ang.sin()], -2)  # (H, 2M, L)
    coef = torch.cat([w.real, -w.imag], -1).transpose(0, 1)  # (H, C_k, 2M)
    return 2 * torch.bmm(coef, vandermonde).transpose(0, 1)
