"""DPLR (S4) axis kernel: diagonal plus low-rank state matrix, bilinear discretization.

Paper: S4, Gu et al. 2022 (arXiv 2111.00396), as used by S4ND (Nguyen et al. 2022, arXiv 2210.06583):
every published S4ND experiment ran this kernel (docs/design.md §6). Math:
docs/design.md §1.2, §3, §4, §5, §8 (reference: state-spaces/s4 ``SSMKernelDPLR``).
Changes from the reference: C̃ is built at construction (or when a raw-C checkpoint is loaded), never
inside ``forward``; a request past the kernel's length is an error instead of a silent doubling of
``l_kernel``; the Cauchy sums use the half-angle form below, which has no 0/0 at the Nyquist node;
deterministic Δ is log-spaced as intended (no exp-of-a-log, docs/design.md §3).

Legend as in ``ssm.py`` (H, N, M = N/2, S, C_k, L, r); R = ``rank`` = 1.

Stored tensors: those of ``ssm.py`` (inv_dt, A_real, A_imag, B, C) plus

=========  ===============  =====================================================
name       shape            meaning
=========  ===============  =====================================================
P          (R, S, M, 2)     low-rank term, complex as (re, im) pairs
l_kernel   ()               int64 buffer: the length L that C̃ was built for (set by ``set_raw_c`` or
                            ``load_state_dict``; ``forward`` reads a Python copy, so no device sync)
C          (C_k, H, M, 2)   holds C̃ = C (I - Ā^L), not the raw C (docs/design.md §1.2)
=========  ===============  =====================================================

System (conjugate-augmented 2M space, both halves of every pair): A = diag(Λ) - P P^*, Λ the diagonal
part (-exp(A_real) - i A_imag), bilinear Ā = (I - ΔA/2)^{-1}(I + ΔA/2), B̄ = Δ (I - ΔA/2)^{-1} B, kernel
K[l] = C Ā^l B̄ (real). With C̃ = C (I - Ā^L) and L_d = round(L / r) nodes ω_k = e^{-iθ_k},
θ_k = 2πk / L_d, k = 0..L_d/2, the generating function Σ_{l<L_d} K[l] ω^l is, per node (Woodbury, R = 1),
    k̂ = e^{iθ/2} [T_BC - cos(θ/2) T_BQ T_PC / (1 + cos(θ/2) T_PQ)],
    T_xy = Σ_{2M modes} Δ x_n y_n / (2i sin(θ/2) - ΔΛ_n cos(θ/2)),   x ∈ {B, P}, y ∈ {C̃, Q = conj(P)},
which is the reference's k̂ = 2/(1+ω) [R_BC - R_BQ R_PC / (1 + R_PQ)] with R = Σ Δxy / (z - ΔΛ),
z = 2(1-ω)/(1+ω), multiplied through by (1+ω)/2 = cos(θ/2) e^{-iθ/2}. Then K = irfft(k̂, L_d)[:length].
At r = 1 this is exactly the first taps of C Ā^l B̄ of the raw C. At r != 1, Δ = exp(inv_dt) r and C̃
stays as built at r = 1 (docs/design.md §5), so the kernel covers the same continuous extent L Δ_base.
Bandlimit (docs/design.md §4): C̃ is masked by the diagonal part's frequencies exp(inv_dt) |Im Λ| / (2π).
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from .ssm import SSMAxisKernel, init_system, kernel_compute_dtype, mark_ssm_param

__all__ = ['DPLRAxisKernel', 'dplr_taps']

_DENSE_POWER_FROM = 32  # set_raw_c: L Sherman-Morrison steps up to this length, dense Ā^L beyond


class DPLRAxisKernel(SSMAxisKernel):
    """DPLR (S4) SSM kernel along one spatial axis; same call interface as ``DiagAxisKernel``.

    Args:
        dim: H, number of features.
        d_state: N (even); M = N/2 complex modes are stored.
        kernel_channels: C_k, independent C per feature (channels x 2 if bidirectional).
        init: one of DPLR_INITS ('legs', 'fourier', 'hippo', 'diag-lin', ...; ``ssm.py``).
        dt_min, dt_max: Δ is log-uniform in [dt_min, dt_max] per feature.
        n_ssm: S, number of (A, B, P) sets tiled over H (must divide H).
        rank: R, rank of the low-rank term; only 1 is supported.
        l_max: the axis base length L; C is replaced by C̃ for it at construction and l_kernel = L.
        bandlimit: None or cutoff (fraction of the base-resolution Nyquist band x 2, docs/design.md §4).
        ssm_lr: learning-rate hint for inv_dt, A_real, A_imag, B, P.
        deterministic: Δ log-spaced over the features in [dt_min, dt_max] (stored as its log; the reference's
            deterministic Δ is exp of the intended Δ, docs/design.md §3, not reproduced here) and C = V^* e_0.
    """
    mode = 'dplr'

    def __init__(
            self,
            dim: int,
            d_state: int = 64,
            kernel_channels: int = 1,
            init: str = 'legs',
            dt_min: float = 1e-3,
            dt_max: float = 1e-1,
            n_ssm: int = 1,
            rank: int = 1,
            l_max: Optional[int] = None,
            bandlimit: Optional[float] = None,
            ssm_lr: Optional[float] = None,
            deterministic: bool = False,
    ):
        if l_max is None or l_max < 1:
            raise ValueError(
                f"a DPLR kernel needs its axis base length l_max >= 1 (C is stored as C̃ = C(I - Ā^l_max), "
                f"docs/design.md §1.2); got l_max={l_max}. Pass l_max (S4ND(..., l_max=...)), or use mode='diag'.")
        if rank != 1:
            raise ValueError(f"only rank=1 DPLR kernels are supported (every S4ND config uses 1); got rank={rank}")
        system = init_system(init, d_state, n_ssm, mode='dplr')
        super().__init__(dim, kernel_channels, system, dt_min, dt_max, bandlimit, ssm_lr, deterministic)
        self.rank, self.l_max = rank, l_max
        self.P = nn.Parameter(torch.view_as_real(system.P).unsqueeze(0).float().contiguous())
        mark_ssm_param(self.P, ssm_lr)
        self.register_buffer('l_kernel', torch.zeros((), dtype=torch.int64))
        self.set_raw_c(self.C.detach().clone())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, l_kernel={self._l_kernel}"

    def low_rank(self, dtype: Optional[torch.dtype] = None) -> Tensor:
        """P tiled over the features: (H, M) complex (R = 1), in ``dtype`` (default: the compute dtype)."""
        dtype = dtype or kernel_compute_dtype(self.C)
        return torch.view_as_complex(self.P.to(dtype).contiguous()[0]).repeat(self.dim // self.n_ssm, 1)

    @torch.no_grad()
    def set_raw_c(self, c: Tensor, length: Optional[int] = None) -> None:
        """Store C̃ = C (I - Ā^L) for a raw C and set l_kernel = L (docs/design.md §1.2); float64, no gradient.

        Ā is the bilinear transition at the current base step (rate 1) in the conjugate-augmented space
        (Sherman-Morrison for (I - ΔA/2)^{-1}): applied L times to the row vectors of C for short kernels, built
        densely per feature and raised to the power L by repeated squaring for long ones (model construction time).
        Args:
            c: (C_k, H, M, 2) raw C as (re, im) pairs.
            length: L; default ``l_max``.
        """
        length = self.l_max if length is None else length
        if tuple(c.shape) != tuple(self.C.shape):
            raise ValueError(
                f"raw C must have the shape of the C parameter (C_k, H, M, 2) = {tuple(self.C.shape)}; "
                f"got {tuple(c.shape)}")
        work = torch.float64
        dt_base, lam, _, _ = self.modes(work)
        p = self.low_rank(work)
        m = lam.shape[-1]
        a = torch.cat([dt_base * lam, dt_base * lam.conj()], dim=-1)  # (H, 2M) ΔΛ, both halves
        p2 = torch.cat([p, p.conj()], dim=-1)
        q2 = p2.conj()
        alpha = dt_base / 2  # (H, 1)
        d, e = 1 - a / 2, 1 + a / 2
        sm_denom = 1 + alpha * (q2 * p2 / d).sum(-1, keepdim=True)  # (H, 1)
        w0 = torch.view_as_complex(c.to(work).contiguous())
        w0 = torch.cat([w0, w0.conj()], dim=-1)  # (C_k, H, 2M)

        def times_a_bar(w):  # row vectors w (..., H, 2M) -> w Ā = w (diag(d) + α p q^T)^{-1} (diag(e) - α p q^T)
            u = w / d
            u = u - alpha * (u * p2).sum(-1, keepdim=True) * (q2 / d) / sm_denom
            return u * e - alpha * (u * p2).sum(-1, keepdim=True) * q2

        if length <= _DENSE_POWER_FROM:
            w = w0
            for _ in range(length):
                w = times_a_bar(w)
        else:  # long kernels: dense Ā_h, raised to the power L by repeated squaring (log2 L batched matmuls)
            eye = torch.eye(2 * m, dtype=w0.dtype).unsqueeze(1).expand(-1, w0.shape[1], -1)  # (2M, H, 2M)
            a_bar = times_a_bar(eye).transpose(0, 1)  # (H, 2M, 2M): row i of Ā_h = e_i Ā_h
            w = torch.einsum('chi,hij->chj', w0, torch.linalg.matrix_power(a_bar, length))  # w0 Ā^L
        self.C.copy_(torch.view_as_real((w0 - w)[..., :m]).to(self.C.dtype))
        self.l_kernel.fill_(length)
        self._l_kernel = int(length)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """A checkpoint with l_kernel = 0 (reference module never run forward) holds the raw C: build C̃."""
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._l_kernel = int(self.l_kernel)
        if prefix + 'l_kernel' in state_dict and self._l_kernel == 0:
            self.set_raw_c(self.C.detach().clone())

    def cauchy_inputs(self, rate: float = 1.0) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """What ``dplr_taps`` needs at this rate: Δ = exp(inv_dt) r (H, 1) and Λ, B, P (H, M), C̃ (C_k, H, M)."""
        dt_base, lam, b, c = self.modes()
        return dt_base * rate, lam, b, c, self.low_rank()

    def nodes(self, length: int, rate: float = 1.0) -> int:
        """L_d = round(l_kernel / rate) frequency nodes; raises unless 1 <= length <= L_d."""
        l_kernel = self._l_kernel
        nodes = round(l_kernel / rate)
        if not 1 <= length <= nodes:
            raise ValueError(
                f"DPLR kernel asked for {length} taps at rate={rate}; its C̃ was built for l_kernel={l_kernel} taps "
                f"at rate 1, so at rate {rate} it has round(l_kernel / rate) = {nodes}. Ask for at most {nodes} taps "
                f"(S4ND caps taps at round(l_max / rate)), or build the layer with a larger l_max.")
        return nodes

    def forward(self, length: int, rate: float = 1.0) -> Tensor:
        """Causal kernel taps: (C_k, H, length), real, float32 (float64 for float64 params); autocast off.

        At most round(l_kernel / rate) taps (the extent C̃ was built for); S4ND never asks for more.
        """
        nodes = self.nodes(length, rate)
        with torch.autocast(self.C.device.type, enabled=False):
            return dplr_taps(*self.cauchy_inputs(rate), nodes, length)


def dplr_taps(dt: Tensor, lam: Tensor, b: Tensor, c: Tensor, p: Tensor, nodes: int, length: int) -> Tensor:
    """The DPLR kernel's first ``length`` taps from its generating function on ``nodes`` nodes (module docstring).

    Args:
        dt: (H, 1) step Δ (base step times rate); lam, b, p: (H, M) complex Λ, B, P; c: (C_k, H, M) complex C̃.
            Several axis kernels with the same ``nodes`` can be stacked along H and computed in one call.
    Returns:
        (C_k, H, length) real, in dt's dtype.
    The Cauchy sums over the 2M modes (both halves of each conjugate pair) are one complex batched matmul:
    with G1 = 1 / (2i sin - ΔΛ cos) and its conjugate-mode twin G2 (H, M, F), Σ v G1 + conj(v) G2 =
    [v, conj v] @ [G1; G2], G built by one fused addcmul and one reciprocal (docs/design.md §12.4).
    """
    real = dt.dtype
    half = torch.arange(nodes // 2 + 1, device=dt.device, dtype=torch.float64) * (math.pi / nodes)
    sin, cos = half.sin().to(real), half.cos().to(real)  # (F,)
    dl = dt * lam  # (H, M)
    modes = torch.cat([dl, dl.conj()], -1)  # (H, 2M): every mode and its conjugate twin
    two_i_sin = torch.complex(torch.zeros_like(sin), 2 * sin)
    g = torch.addcmul(two_i_sin, modes.unsqueeze(-1), cos, value=-1).reciprocal()  # (H, 2M, F)
    x = torch.stack([b, p])  # (2, H, M): B, P
    y = torch.cat([c, p.conj().unsqueeze(0)])  # (C_k + 1, H, M): C̃, Q
    v = (dt * x.unsqueeze(1) * y.unsqueeze(0)).flatten(0, 1)  # (2 (C_k + 1), H, M)
    w = torch.cat([v, v.conj()], -1).transpose(0, 1)  # (H, 2 (C_k + 1), 2M): weights of both halves
    t = torch.bmm(w, g).transpose(0, 1).unflatten(0, (2, -1))  # (2, C_k + 1, H, F)
    k_hat = t[0, :-1] - cos * t[0, -1:] * t[1, :-1] / (1 + cos * t[1, -1:])
    k_hat = k_hat * torch.polar(torch.ones_like(half), half).to(k_hat.dtype)
    return torch.fft.irfft(k_hat, n=nodes)[..., :length]
