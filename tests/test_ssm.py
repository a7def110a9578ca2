"""Diagonal (S4D) axis kernels against an explicit recurrence; inits; bandlimit mask."""
import math

import pytest
import torch

from s4nd_timm.layers.ssm import DiagAxisKernel, hippo_legs
from _reference import recurrence_kernel


@pytest.mark.parametrize('disc', ['zoh', 'bilinear'])
@pytest.mark.parametrize('init', ['legs', 'lin', 'inv', 'real'])
@pytest.mark.parametrize('rate', [0.5, 1.0, 2.0])
def test_kernel_matches_recurrence(disc, init, rate):
    kern = DiagAxisKernel(6, d_state=16, kernel_channels=2, init=init, dt_min=0.01, dt_max=0.5, disc=disc).double()
    dt_base, a, b, c = kern.modes()
    want = recurrence_kernel(a, b, c, dt_base * rate, 40, disc)
    got = kern(40, rate)
    assert got.dtype == torch.float64
    # docs/design.md §10: float64 max abs error <= 1e-10 max|K|
    assert (got - want).abs().max() <= 1e-10 * want.abs().max()
    got32 = DiagAxisKernel(6, 16, 2, init=init, dt_min=0.01, dt_max=0.5, disc=disc)
    got32.load_state_dict({k: v.float() for k, v in kern.state_dict().items()})
    # float32: Vandermonde powers exp(l * log lambda) lose ~l * eps relative; 1e-5 of max|K| (docs/design.md §10)
    assert (got32(40, rate).double() - want).abs().max() <= 1e-5 * want.abs().max()


def test_hippo_legs_spectrum():
    lam, b, p = hippo_legs(64)
    assert lam.shape == (32,)
    assert torch.allclose(lam.real, torch.full((32,), -0.5, dtype=torch.float64))
    # imaginary parts ascending in magnitude, all negative; LegS N=64 spans ~0.26 .. ~1300 (docs/design.md §3)
    assert (lam.imag < 0).all() and (lam.imag.abs().diff() > 0).all()
    assert 0.2 < lam.imag.abs()[0] < 0.3 and 1200 < lam.imag.abs()[-1] < 1400
    # V diag(Λ) V^* - P P^T reconstructs A_legs on the full 2M space (conjugate pairs)
    lam_full = torch.cat([lam, lam.conj()])
    bfull, pfull = torch.cat([b, b.conj()]), torch.cat([p, p.conj()])
    n = torch.arange(64, dtype=torch.float64)
    assert torch.allclose((pfull.conj() * pfull).sum().real, (n + 0.5).sum(), rtol=1e-9)
    assert torch.allclose((bfull.conj() * bfull).sum().real, (2 * n + 1).sum(), rtol=1e-9)
    assert torch.isfinite(lam_full).all()


def test_init_values_and_clamps():
    lin = DiagAxisKernel(4, d_state=8, init='lin')
    assert torch.allclose(lin.A_imag[0], torch.tensor([1e-4, math.pi, 2 * math.pi, 3 * math.pi]))
    assert torch.allclose(lin.A_real.exp(), torch.full((1, 4), 0.5))
    real = DiagAxisKernel(4, d_state=8, init='diag-real')
    assert torch.allclose(real.A_real.exp()[0], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.allclose(real.A_imag, torch.full((1, 4), 1e-4))
    inv = DiagAxisKernel(4, d_state=8, init='inv')
    n = torch.arange(4.0)
    assert torch.allclose(inv.A_imag[0], (8 / math.pi) * (8 / (2 * n + 1) - 1))


def test_dt_log_uniform_range():
    kern = DiagAxisKernel(4000, d_state=2, dt_min=1e-3, dt_max=1e-1)
    dt = kern.inv_dt.exp()
    assert dt.shape == (4000, 1)
    assert dt.min() >= 1e-3 and dt.max() <= 1e-1
    # log-uniform: median near the geometric mean 1e-2
    assert 0.8e-2 < dt.median() < 1.25e-2


def test_bandlimit_mask_is_exactly_the_cutoff():
    kern = DiagAxisKernel(16, d_state=32, kernel_channels=2, init='lin', dt_min=0.01, dt_max=1.0, bandlimit=0.3)
    freq = kern.inv_dt.exp() * kern.A_imag / (2 * math.pi)  # (H, M), cycles per base sample
    want = freq < 0.15
    assert 0 < want.sum() < want.numel()  # the test exercises both kept and masked modes
    assert torch.equal(kern.bandlimit_mask(), want)
    # the kernel equals an unlimited kernel whose C is zeroed on exactly those modes
    free = DiagAxisKernel(16, d_state=32, kernel_channels=2, init='lin')
    state = kern.state_dict()
    state['C'] = state['C'] * want[None, :, :, None]
    free.load_state_dict(state)
    for rate in (0.5, 1.0, 2.0):  # the mask does not depend on the rate
        torch.testing.assert_close(kern(20, rate), free(20, rate))
    # a different cutoff masks a different set and changes the kernel
    kern.bandlimit = 0.6
    assert kern.bandlimit_mask().sum() > want.sum()
    assert not torch.allclose(kern(20), free(20))


def test_ssm_params_carry_optimizer_hints():
    kern = DiagAxisKernel(4, d_state=8, ssm_lr=1e-3)
    for name in ('inv_dt', 'A_real', 'A_imag', 'B'):
        assert getattr(kern, name)._optim == {'lr': 1e-3, 'weight_decay': 0.0}
    assert not hasattr(kern.C, '_optim')
    assert DiagAxisKernel(4, d_state=8).A_real._optim == {'weight_decay': 0.0}


@pytest.mark.parametrize('kwargs, match', [
    (dict(disc='euler'), 'disc'),
    (dict(init='hyperbolic'), 'init'),
    (dict(n_ssm=3), 'n_ssm'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiagAxisKernel(4, d_state=8, **kwargs)
