"""DPLR (S4) axis kernel and S4ND(mode='dplr'): docs/design.md §1.2, §3, §4, §5, §8, §10."""
import math

import pytest
import torch

from s4nd_timm import S4ND
from s4nd_timm.layers.dplr import DPLRAxisKernel
from s4nd_timm.layers.ssm import DiagAxisKernel, hippo_nplr, init_system
from _reference import direct_conv_nd


def rel_err(got, want):
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def dense_system(kern, rate=1.0):
    """Dense conjugate-augmented bilinear system of a kernel, float64 (independent of dplr.py's algorithm).

    Returns Ā (H, 2M, 2M), B̄ (H, 2M), A (H, 2M, 2M): A = diag(Λ, conj Λ) - P P^*.
    """
    dt_base, lam, b, _ = kern.modes(torch.float64)
    p = torch.view_as_complex(kern.P.double()[0]).repeat(kern.dim // kern.n_ssm, 1)
    dt = (dt_base * rate).unsqueeze(-1)
    aug = lambda x: torch.cat([x, x.conj()], -1)  # noqa: E731
    lam2, p2, b2 = aug(lam), aug(p), aug(b)
    a = torch.diag_embed(lam2) - p2.unsqueeze(-1) * p2.conj().unsqueeze(-2)
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    back = eye - dt / 2 * a
    a_bar = torch.linalg.solve(back, eye + dt / 2 * a)
    b_bar = dt[..., 0] * torch.linalg.solve(back, b2.unsqueeze(-1))[..., 0]
    return a_bar, b_bar, a


def krylov(c_aug, a_bar, b_bar, length):
    """K[c, h, l] = C Ā^l B̄ by explicit matrix powers, (C_k, H, length) float64 (imaginary part checked ~0)."""
    states, power = b_bar.unsqueeze(-1), a_bar  # states[..., l] = Ā^l B̄ for l < 2^j; power = Ā^(2^j)
    while states.shape[-1] < length:
        states, power = torch.cat([states, power @ states], -1), power @ power
    k = torch.einsum('chn,hnl->chl', c_aug, states[..., :length])
    assert k.imag.abs().max() <= 1e-9 * k.real.abs().max()
    return k.real


def c_aug_of(c_pairs):
    c = torch.view_as_complex(c_pairs.double().contiguous())
    return torch.cat([c, c.conj()], -1)


@pytest.mark.parametrize('init, n_ssm', [('legs', 1), ('fourier', 1), ('hippo', 2), ('diag-lin', 1)])
@pytest.mark.parametrize('length', [16, 63])
def test_kernel_float64_matches_dense_bilinear_powers(init, n_ssm, length):
    """Spec §10: ≤ 1e-8 relative to C Ā^l B̄ with the raw C kept before the C̃ transform (measured ≤ 3e-14)."""
    kern = DPLRAxisKernel(4, 64, 2, init=init, n_ssm=n_ssm, l_max=length, dt_min=0.01, dt_max=0.5).double()
    c_raw = torch.randn_like(kern.C)
    kern.set_raw_c(c_raw)
    assert int(kern.l_kernel) == length
    a_bar, b_bar, _ = dense_system(kern)
    want = krylov(c_aug_of(c_raw), a_bar, b_bar, length)
    assert rel_err(kern(length), want) <= 1e-8
    assert rel_err(kern(length // 2), want[..., :length // 2]) <= 1e-8  # fewer taps: the first ones


@pytest.mark.parametrize('init, dt', [('legs', (1e-3, 0.1)), ('fourier', (0.1, 1.0)), ('fourier', (1e-3, 0.1))])
@pytest.mark.parametrize('length', [16, 512])
def test_kernel_float32_matches_dense_bilinear_powers(init, dt, length):
    """Spec §10: float32 ≤ 1e-4 relative for L ≤ 512 (measured ≤ 5e-5; FouT's near-zero eigenvalue dominates)."""
    kern = DPLRAxisKernel(8, 64, 2, init=init, l_max=length, dt_min=dt[0], dt_max=dt[1])
    c_raw = torch.randn_like(kern.C)
    kern.set_raw_c(c_raw)
    got = kern(length)
    assert got.dtype == torch.float32
    a_bar, b_bar, _ = dense_system(kern)  # the float32 parameter values, in float64
    assert rel_err(got, krylov(c_aug_of(c_raw), a_bar, b_bar, length)) <= 1e-4


@pytest.mark.parametrize('rate, l_max', [(2.0, 32), (0.5, 16), (1.5, 30)])
@pytest.mark.parametrize('init', ['legs', 'fourier'])
def test_rate_uses_round_l_kernel_over_rate_nodes_with_fixed_c_tilde(rate, l_max, init):
    """Spec §5: at rate r the kernel is the truncated generating function on L_d = round(l_kernel / r) nodes
    with Δ r and C̃ kept from r = 1, i.e. the first L_d taps of C_r Ā_r^l B̄_r, C_r = C̃ (I - Ā_r^{L_d})^{-1}."""
    kern = DPLRAxisKernel(4, 16, 2, init=init, l_max=l_max, dt_min=0.05, dt_max=0.5).double()
    nodes = round(l_max / rate)
    a_bar, b_bar, _ = dense_system(kern, rate)
    eye = torch.eye(a_bar.shape[-1], dtype=a_bar.dtype)
    gap = eye - torch.linalg.matrix_power(a_bar, nodes)
    c_rate = torch.linalg.solve(gap.mT.unsqueeze(0), c_aug_of(kern.C).unsqueeze(-1))[..., 0]
    assert rel_err(kern(nodes, rate), krylov(c_rate, a_bar, b_bar, nodes)) <= 1e-9


def test_zero_p_is_the_diagonal_kernel_with_bilinear_discretization():
    """Spec §1.2 / §6: P = 0 gives S4D with bilinear discretization; at P = 0 the gradient of P is exactly 0."""
    for init in ('diag-lin', 'legs'):
        dplr = DPLRAxisKernel(6, 16, 2, init=init, l_max=40, dt_min=0.01, dt_max=0.5).double()
        with torch.no_grad():
            dplr.P.zero_()
        diag = DiagAxisKernel(6, 16, 2, init='diag-lin', disc='bilinear').double()
        c_raw = torch.randn_like(dplr.C)
        dplr.set_raw_c(c_raw)
        diag.load_state_dict({**{n: dplr.state_dict()[n] for n in ('inv_dt', 'A_real', 'A_imag', 'B')}, 'C': c_raw})
        assert rel_err(dplr(40), diag(40)) <= 1e-10
    dplr(40).square().sum().backward()
    assert dplr.P.grad.abs().max() == 0
    assert dplr.A_imag.grad.abs().max() > 0


def test_gradcheck_through_the_kernel():
    kern = DPLRAxisKernel(2, 4, 2, init='legs', l_max=6, dt_min=0.1, dt_max=0.5).double()
    names = ('inv_dt', 'A_real', 'A_imag', 'B', 'C', 'P')
    params = tuple(getattr(kern, n).detach().clone().requires_grad_() for n in names)

    def taps(*values):
        out = torch.func.functional_call(kern, dict(zip(names, values)), (6, 1.0))
        resampled = torch.func.functional_call(kern, dict(zip(names, values)), (4, 1.5))
        return torch.cat([out.flatten(), resampled.flatten()])

    assert torch.autograd.gradcheck(taps, params, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_bandlimit_masks_c_tilde_by_the_diagonal_frequencies():
    """Spec §4: keep mode n of channel h iff exp(inv_dt_h) |Im Λ_n| / (2π) < bandlimit / 2, at every rate."""
    kern = DPLRAxisKernel(6, 16, 2, init='legs', l_max=24, dt_min=0.01, dt_max=0.5, bandlimit=0.3).double()
    freq = kern.inv_dt.exp() * kern.A_imag.repeat(6, 1) / (2 * math.pi)
    keep = freq < 0.15
    assert keep.any() and not keep.all()
    assert torch.equal(kern.bandlimit_mask(), keep)
    plain = DPLRAxisKernel(6, 16, 2, init='legs', l_max=24).double()
    plain.load_state_dict(kern.state_dict())
    with torch.no_grad():
        plain.C.mul_(keep.unsqueeze(-1).double())
    for length, rate in ((24, 1.0), (12, 2.0), (48, 0.5)):
        assert rel_err(kern(length, rate), plain(length, rate)) <= 1e-12


def test_dc_gain_of_legs_kernels_is_kept_from_16_to_32_pixels():
    """The sum of the L_d = round(l_kernel / r) taps is the generating function at ω = 1, C̃ (-A)^{-1} B, for
    every rate (Δ cancels), so going 16 -> 32 px keeps it exactly. Tolerance: 1e-5 of the kernel's L1 norm in
    float32 (measured ~1e-7), 1e-10 in float64 (measured ~1e-15)."""
    layer = S4ND(16, ndim=2, l_max=16, mode='dplr', init='legs', activation=None)
    kern64 = DPLRAxisKernel(16, 64, 2, init='legs', l_max=16).double()
    kern64.load_state_dict(layer.kernel[0].state_dict())
    _, _, a = dense_system(kern64)
    _, _, b, _ = kern64.modes()
    b2 = torch.cat([b, b.conj()], -1)
    closed = (c_aug_of(kern64.C) * torch.linalg.solve(-a, b2.unsqueeze(-1))[..., 0]).sum(-1).real
    for kern, tol in ((layer.kernel[0], 1e-5), (layer.kernel[1], 1e-5), (kern64, 1e-10)):
        k16, k32 = kern(16, 1.0).double(), kern(32, 0.5).double()
        norm = k16.abs().sum(-1)
        assert ((k16.sum(-1) - k32.sum(-1)).abs() / norm).max() <= tol
    assert ((kern64(32, 0.5).sum(-1) - closed).abs() / kern64(16).abs().sum(-1)).max() <= 1e-10
    # the layer asks for exactly those taps: 32 px at base 16 is rate 0.5, round(16 / 0.5) = 32 taps
    assert layer.kernel_lengths((32, 32), layer.rates((32, 32))) == (32, 32)


def test_too_many_taps_is_an_error_and_nothing_is_mutated():
    kern = DPLRAxisKernel(4, 8, 2, init='fourier', l_max=10)
    before = {n: t.clone() for n, t in kern.state_dict().items()}
    with pytest.raises(ValueError, match=r'round\(l_kernel / rate\) = 10'):
        kern(11)
    with pytest.raises(ValueError, match=r'round\(l_kernel / rate\) = 5'):
        kern(6, rate=2.0)
    kern(10)
    kern(5, rate=2.0)
    assert all(torch.equal(before[n], t) for n, t in kern.state_dict().items())


def _two_sided_from_spec(causal, length, channels, bidirectional):
    """§2.2 oracle: offset j >= 0 holds k_fwd[j], offset -m (m >= 1) holds k_bwd[m - 1]; (c, H, 2 length - 1)."""
    taps = causal.shape[-1]
    out = causal.new_zeros(channels, causal.shape[1], 2 * length - 1)
    for j in range(min(taps, length)):
        out[..., length - 1 + j] = causal[:channels, :, j]
        if bidirectional and j + 1 <= length - 1:
            out[..., length - 2 - j] = causal[channels:, :, j]
    return out


LAYER_CASES = [  # ndim, spatial, l_max, rate, extra layer kwargs
    (1, (13,), 9, 1.0, dict(channels=2, postact='linear', layout='channels_last')),
    (2, (7, 10), (8, 6), None, dict()),
    (2, (9, 9), 9, 0.5, dict(init='hippo', n_ssm=2, bandlimit=0.5)),
    (3, (4, 6, 5), 6, 2.0, dict(bidirectional=False)),
    (3, (5, 3, 4), (3, 3, 4), None, dict(channels=2, postact='glu', resolution='discrete')),
]


@pytest.mark.parametrize('init', ['fourier', 'legs'])
@pytest.mark.parametrize('ndim, spatial, l_max, rate, extra', LAYER_CASES)
@pytest.mark.parametrize('backend', ['fft', 'matmul'])
def test_layer_matches_float64_direct_convolution(init, ndim, spatial, l_max, rate, extra, backend):
    """Spec §10: S4ND forward vs the direct zero-padded convolution with the separable kernel, float64 ≤ 1e-9."""
    kwargs = dict(dict(init=init, d_state=16, activation=None, dt_min=0.05, dt_max=0.5), **extra)
    layer = S4ND(4, ndim=ndim, l_max=l_max, mode='dplr', backend=backend, **kwargs).double()
    x = torch.randn(2, 4, *spatial, dtype=torch.float64)
    channels_last = layer.layout == 'channels_last'
    u = x.movedim(1, -1) if channels_last else x
    l_maxes = l_max if isinstance(l_max, tuple) else (l_max,) * ndim
    ks = []
    for kern, n, lm in zip(layer.kernel, spatial, l_maxes):
        r = 1.0 if layer.resolution == 'discrete' else rate if rate is not None else lm / n
        taps = min(n, round(lm / r))
        ks.append(_two_sided_from_spec(kern(taps, r), n, layer.channels, layer.bidirectional))
    want = direct_conv_nd(x, ks, layer.D)
    if layer.output_linear is not None:
        want = layer.output_linear(want.movedim(1, -1))
        want = (torch.nn.functional.glu(want, dim=-1) if layer.postact == 'glu' else want).movedim(-1, 1)
    got = layer(u, rate=rate)
    assert rel_err(got.movedim(-1, 1) if channels_last else got, want) <= 1e-9


def test_kernels_are_float32_under_autocast():
    layer = S4ND(4, ndim=2, l_max=8, mode='dplr', init='fourier')
    plain = [k(8) for k in layer.kernel]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        auto = [k(8) for k in layer.kernel]
        y = layer(torch.randn(2, 4, 8, 8))
    assert all(a.dtype == torch.float32 and torch.equal(a, p) for a, p in zip(auto, plain))
    assert y.dtype == torch.float32


REFERENCE_KEYS = {  # docs/design.md §8, S4ND(H=6, channels=1, bidirectional, N=16, n_ssm=2), 2 axes, DPLR
    'D': (1, 6),
    **{f'kernel.{i}.{name}': shape for i in range(2) for name, shape in (
        ('inv_dt', (6, 1)), ('A_real', (2, 8)), ('A_imag', (2, 8)), ('B', (1, 2, 8, 2)), ('C', (2, 6, 8, 2)),
        ('P', (1, 2, 8, 2)), ('l_kernel', ()))},
}


def _dplr_layer(**kw):
    return S4ND(6, ndim=2, d_state=16, n_ssm=2, l_max=(8, 10), mode='dplr', init='hippo', activation=None, **kw)


def test_reference_layout_checkpoint_loads_by_name():
    layer = _dplr_layer()
    sd = layer.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == REFERENCE_KEYS
    assert sd['kernel.0.l_kernel'].dtype == torch.int64 and int(sd['kernel.1.l_kernel']) == 10
    assert all(getattr(layer.kernel[0], n)._optim == {'weight_decay': 0.0} for n in ('inv_dt', 'A_real', 'P'))
    # a checkpoint taken after the reference's first forward: C̃ and l_kernel = l_max, loaded as is
    torch.manual_seed(1)
    other = _dplr_layer()
    other.load_state_dict(sd)
    x = torch.randn(2, 6, 8, 10)
    torch.testing.assert_close(other(x), layer(x), rtol=0, atol=0)
    # a checkpoint of a reference module never run forward: l_kernel = 0, C is the raw C -> C̃ built on load
    raw = {k: v.clone() for k, v in sd.items()}
    c_raw = torch.randn_like(sd['kernel.0.C'])
    raw['kernel.0.C'], raw['kernel.0.l_kernel'] = c_raw, torch.tensor(0)
    other.load_state_dict(raw)
    assert int(other.kernel[0].l_kernel) == 8
    expect = DPLRAxisKernel(6, 16, 2, init='hippo', n_ssm=2, l_max=8)
    expect.load_state_dict({n[len('kernel.0.'):]: v for n, v in sd.items() if n.startswith('kernel.0.')})
    expect.set_raw_c(c_raw)
    torch.testing.assert_close(other.kernel[0](8), expect(8), rtol=0, atol=0)


def test_checkpoint_of_the_other_mode_is_refused_with_the_mode_it_needs():
    dplr = _dplr_layer()
    diag = S4ND(6, ndim=2, d_state=16, n_ssm=2, l_max=(8, 10), init='diag', activation=None)
    for strict in (True, False):
        with pytest.raises(RuntimeError, match=r"mode='dplr'.*S4ND\(\.\.\., mode='dplr'\)"):
            diag.load_state_dict(dplr.state_dict(), strict=strict)
        with pytest.raises(RuntimeError, match=r"mode='diag'.*S4ND\(\.\.\., mode='diag'\)"):
            dplr.load_state_dict(diag.state_dict(), strict=strict)


def test_inits_fourier_hippo_clamps_and_deterministic_dt():
    # FouT: V [diag(Λ) - P P^*] V^* over both conjugate halves rebuilds the real A_fout = J - b b^T, V B = b
    n = 8
    lam, b, p, v = hippo_nplr('fourier', n)
    full_v = torch.cat([v, v.conj()], -1)
    aug = lambda x: torch.cat([x, x.conj()])  # noqa: E731
    inner = torch.diag(aug(lam)) - aug(p).unsqueeze(-1) * aug(p).conj()
    a_fout = torch.zeros(n, n, dtype=torch.float64)
    for k in range(n // 2):
        a_fout[2 * k, 2 * k + 1], a_fout[2 * k + 1, 2 * k] = -math.pi * k, math.pi * k
    b_fout = torch.tensor([1.0, 0.0] + [2 ** 0.5, 0.0] * (n // 2 - 1), dtype=torch.float64)
    a_fout -= b_fout.unsqueeze(-1) * b_fout
    torch.testing.assert_close(full_v @ inner @ full_v.conj().T, a_fout.to(torch.complex128))
    torch.testing.assert_close(full_v @ aug(b), b_fout.to(torch.complex128))
    # stored with the clamps: Re Λ = 0 -> A_real = log 1e-4, Im Λ_0 = 0 -> A_imag = 1e-4; 'hippo' = legs | fourier
    kern = DPLRAxisKernel(4, n, 1, init='hippo', n_ssm=2, l_max=8)
    torch.testing.assert_close(kern.A_real[1], torch.full((n // 2,), math.log(1e-4)))
    assert kern.A_imag[1, 0].item() == pytest.approx(1e-4)
    torch.testing.assert_close(kern.A_real[0].exp(), torch.full((n // 2,), 0.5))
    assert (kern.P[0, 0].abs().sum() > 0) and (kern.P[0, 1].abs().sum() > 0)
    assert init_system('diag-legs', n, 1).P.abs().max() == 0
    torch.testing.assert_close(init_system('diag-legs', n, 1).A, init_system('legs', n, 1).A)
    # deterministic Δ: log-spaced in [dt_min, dt_max] as intended, not exp of it (docs/design.md §3)
    det = DPLRAxisKernel(4, n, 1, init='legs', l_max=4, dt_min=0.01, dt_max=1.0, deterministic=True)
    torch.testing.assert_close(det.inv_dt.exp()[:, 0], torch.tensor([0.01, 0.1 ** (4 / 3), 0.1 ** (2 / 3), 1.0]))
    two = DPLRAxisKernel(4, n, 1, init='hippo', n_ssm=4, l_max=4, dt_min=2.0, dt_max=2.0, deterministic=True)
    torch.testing.assert_close(two.inv_dt.exp(), torch.full((4, 1), 2.0))


@pytest.mark.parametrize('kwargs, match', [
    (dict(init='fourier'), "needs mode='dplr'"),
    (dict(init='hippo'), "needs mode='dplr'"),
    (dict(mode='dplr', l_max=None), 'l_max'),
    (dict(mode='dplr', l_max=(8, None)), 'l_max'),
    (dict(mode='dplr', l_max=8, rank=2), 'rank=1'),
    (dict(mode='dplr', l_max=8, disc='zoh'), 'bilinear'),
    (dict(mode='dplr', l_max=8, init='hippo'), 'n_ssm'),
    (dict(mode='s4'), 'mode'),
])
def test_bad_dplr_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S4ND(4, ndim=2, **kwargs)
    if kwargs.get('l_max', 0) is None:
        with pytest.raises(ValueError, match='l_max'):
            DPLRAxisKernel(4)
