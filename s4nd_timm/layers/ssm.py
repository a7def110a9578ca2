"""Per-axis 1-D SSM kernels for S4ND: inits and the diagonal (S4D) kernel.

Paper: S4ND, Nguyen et al. 2022 (arXiv 2210.06583); S4D, Gu et al. 2022 (arXiv 2206.11893).
Origin: written from ../shared/design/s4nd-spec.md §1.1, §3, §4, §5 (reference: state-spaces/s4).

Legend: H model channels (``dim``), N ``d_state``, M = N/2 complex modes kept (conjugate
symmetry), S ``n_ssm`` independent (A, B) sets tiled over H, C_k kernel channels
(``channels`` x 2 when bidirectional), L kernel length (taps), r rate (step multiplier).

Stored tensors of one axis kernel (names and shapes of the reference's current layout, spec §8):

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
Bandlimit (spec §4): mode n of channel h is kept iff exp(inv_dt_h) |Im A_n| / (2π) < bandlimit / 2
(frequency in cycles per base-resolution sample, independent of the rate); masked modes get C = 0.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ['DIAG_INITS', 'ssm_init', 'hippo_legs', 'DiagAxisKernel', 'kernel_compute_dtype', 'mark_ssm_param']

# Accepted names of the diagonal inits; the `diag-` spellings are the reference's.
DIAG_INITS = {
    'legs': 'legs', 'diag-legs': 'legs',
    'lin': 'lin', 'diag-lin': 'lin',
    'inv': 'inv', 'diag-inv': 'inv',
    'real': 'real', 'diag-real': 'real',
}
DISCRETIZATIONS = ('zoh', 'bilinear')
_CLAMP = 1e-4  # -Re A and -Im A are clamped to at least this at init (spec §3)


def hippo_legs(d_state: int) -> Tuple[Tensor, Tensor, Tensor]:
    """HiPPO-LegS in its normal-plus-low-rank form, diagonalized (float64).

    A_legs = V diag(Λ) V^* - P P^T with Λ = -1/2 + i w (w from the skew part of A_legs + P P^T).
    Returns the M = d_state/2 modes with Im Λ < 0, ordered by ascending |Im Λ|:
        Lambda: (M,) complex128, B: (M,) complex128 (V^* B_legs), P: (M,) complex128 (V^* P_legs).
    """
    n = torch.arange(d_state, dtype=torch.float64)
    r = torch.sqrt(2 * n + 1)
    a_legs = -torch.tril(r[:, None] * r[None, :], diagonal=-1) - torch.diag(n + 1)
    b_legs = r
    p_legs = torch.sqrt(n + 0.5)
    skew = a_legs + p_legs[:, None] * p_legs[None, :] + 0.5 * torch.eye(d_state, dtype=torch.float64)
    w, v = torch.linalg.eigh(skew.to(torch.complex128) * -1j)  # skew v = i w v
    order = torch.argsort(w)[: d_state // 2].flip(0)  # most negative first, then flip: ascending |w|
    w, v = w[order], v[:, order]
    lam = torch.complex(torch.full_like(w, -0.5), w)
    vh = v.conj().T
    return lam, vh @ b_legs.to(torch.complex128), vh @ p_legs.to(torch.complex128)


def _diag_init_one(name: str, d_state: int) -> Tuple[Tensor, Tensor]:
    """(A, B) for one SSM set: (M,) complex128 each, Im A <= 0."""
    m = d_state // 2
    n = torch.arange(m, dtype=torch.float64)
    ones = torch.ones(m, dtype=torch.complex128)
    if name == 'legs':
        lam, b, _ = hippo_legs(d_state)
        b = torch.complex(b.real, b.imag.clamp(-2.0, 2.0))  # reference's B_clip
        return lam, b
    if name == 'lin':
        return torch.complex(torch.full_like(n, -0.5), -math.pi * n), ones
    if name == 'inv':
        return torch.complex(torch.full_like(n, -0.5), -(d_state / math.pi) * (d_state / (2 * n + 1) - 1)), ones
    if name == 'real':
        return torch.complex(-(n + 1), torch.zeros_like(n)), ones
    raise ValueError(f"unknown init {name!r}; expected one of {sorted(DIAG_INITS)}")


def ssm_init(init: str, d_state: int, n_ssm: int) -> Tuple[Tensor, Tensor]:
    """A, B for `n_ssm` sets of a diagonal SSM: (S, M) complex128 each, Im A <= 0."""
    if init not in DIAG_INITS:
        raise ValueError(f"init={init!r} is not a diagonal init; expected one of {sorted(DIAG_INITS)}")
    a, b = _diag_init_one(DIAG_INITS[init], d_state)
    return a.expand(n_ssm, -1).clone(), b.expand(n_ssm, -1).clone()


def kernel_compute_dtype(t: Tensor) -> torch.dtype:
    """Real dtype kernels are generated in: float64 stays float64, everything else runs in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def mark_ssm_param(p: Tensor, lr: Optional[float]) -> None:
    """Attach the optimizer hint read by the training code: own lr (None = global), no weight decay."""
    p._optim = {'weight_decay': 0.0} if lr is None else {'lr': lr, 'weight_decay': 0.0}


class DiagAxisKernel(nn.Module):
    """Diagonal (S4D) SSM kernel along one spatial axis.

    Args:
        dim: H, number of features.
        d_state: N (even); M = N/2 complex modes are stored.
        kernel_channels: C_k, independent C per feature (channels x 2 if bidirectional).
        init: one of DIAG_INITS.
        dt_min, dt_max: Δ is log-uniform in [dt_min, dt_max] per feature.
        n_ssm: S, number of (A, B) sets tiled over H (must divide H).
        disc: 'zoh' or 'bilinear'.
        bandlimit: None or cutoff (fraction of the base-resolution Nyquist band x 2, spec §4).
        ssm_lr: learning-rate hint for inv_dt, A_real, A_imag, B.
    """

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
    ):
        super().__init__()
        if disc not in DISCRETIZATIONS:
            raise ValueError(f"disc={disc!r} is not supported; expected one of {DISCRETIZATIONS}")
        if dim % n_ssm:
            raise ValueError(f"n_ssm={n_ssm} must divide dim={dim}")
        self.dim, self.d_state, self.kernel_channels = dim, d_state, kernel_channels
        self.n_ssm, self.disc, self.bandlimit = n_ssm, disc, bandlimit
        a, b = ssm_init(init, d_state, n_ssm)
        log_dt = torch.rand(dim, 1, dtype=torch.float64) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        c = torch.randn(kernel_channels, dim, d_state // 2, dtype=torch.complex128)
        self.inv_dt = nn.Parameter(log_dt.float())
        self.A_real = nn.Parameter(torch.log((-a.real).clamp(min=_CLAMP)).float())
        self.A_imag = nn.Parameter((-a.imag).clamp(min=_CLAMP).float())
        self.B = nn.Parameter(torch.view_as_real(b).unsqueeze(0).float().contiguous())
        self.C = nn.Parameter(torch.view_as_real(c).float().contiguous())
        for p in (self.inv_dt, self.A_real, self.A_imag, self.B):
            mark_ssm_param(p, ssm_lr)

    def modes(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Assembled, tiled system in the compute dtype.

        Returns dt_base (H, 1) real, A (H, M) complex, B (H, M) complex, C (C_k, H, M) complex
        with the bandlimit mask applied to C.
        """
        dtype = kernel_compute_dtype(self.C)
        reps = self.dim // self.n_ssm
        dt_base = self.inv_dt.to(dtype).exp()
        a_imag = self.A_imag.to(dtype).repeat(reps, 1)
        a = torch.complex(-self.A_real.to(dtype).exp(), -self.A_imag.to(dtype)).repeat(reps, 1)
        b = torch.view_as_complex(self.B.to(dtype)[0]).repeat(reps, 1)
        c = torch.view_as_complex(self.C.to(dtype))
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

    def forward(self, length: int, rate: float = 1.0) -> Tensor:
        """Causal kernel taps: (C_k, H, length), real, float32 (float64 for float64 params)."""
        dt_base, a, b, c = self.modes()
        dt = dt_base * rate
        da = dt * a
        if self.disc == 'zoh':
            coef = b * (da.exp() - 1) / a
            log_step = da
        else:
            coef = b * dt / (1 - da / 2)
            log_step = torch.log((1 + da / 2) / (1 - da / 2))
        pos = torch.arange(length, device=a.device, dtype=a.real.dtype)
        vandermonde = torch.exp(log_step.unsqueeze(-1) * pos)  # (H, M, L)
        return 2 * torch.einsum('chm,hml->chl', c * coef, vandermonde).real
