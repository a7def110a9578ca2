"""The S4ND layer against a float64 direct spatial convolution, gradients, resolution, AMP, errors."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from s4nd_timm import S4ND
from _reference import direct_conv_nd


def _rel_err(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def _to_layout(x, layout):
    return x if layout == 'channels_first' else x.movedim(1, -1)


def _from_layout(x, layout):
    return x if layout == 'channels_first' else x.movedim(-1, 1)


CASES = [  # (ndim, spatial, l_max): odd, even, non-square; l_max below the size gives L_k < L
    (1, (9,), None), (1, (16,), 5),
    (2, (7, 7), None), (2, (6, 9), 4), (2, (8, 5), (8, 5)),
    (3, (3, 5, 4), None), (3, (4, 3, 6), 2),
]


@pytest.mark.parametrize('ndim, spatial, l_max', CASES)
@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('layout', ['channels_first', 'channels_last'])
@pytest.mark.parametrize('resolution', ['continuous', 'discrete'])
def test_layer_equals_direct_conv(ndim, spatial, l_max, bidirectional, layout, resolution):
    """channels=1, no activation/postact/dropout: y = conv(x, outer(axis_kernels)) + D x (documented contract)."""
    layer = S4ND(5, ndim=ndim, d_state=8, bidirectional=bidirectional, l_max=l_max, activation=None,
                 layout=layout, resolution=resolution, dt_min=0.05, dt_max=0.5).double()
    x = torch.randn(2, 5, *spatial, dtype=torch.float64)
    want = direct_conv_nd(x, layer.axis_kernels(spatial), layer.D)
    got = layer(_to_layout(x, layout))
    assert got.shape == _to_layout(x, layout).shape and got.dtype == torch.float64
    assert _rel_err(_from_layout(got, layout), want) <= 1e-10
    # float32 layer, same weights: relative error of a float32 FFT convolution, ~1e-6; bound 1e-5
    layer32 = copy.deepcopy(layer).float()
    got32 = layer32(_to_layout(x.float(), layout))
    assert got32.dtype == torch.float32
    assert _rel_err(_from_layout(got32, layout), want) <= 1e-5


@pytest.mark.parametrize('ndim, spatial', [(1, (11,)), (2, (5, 6)), (3, (3, 4, 5))])
@pytest.mark.parametrize('bidirectional', [True, False])
def test_multichannel_convolution_equals_direct_conv(ndim, spatial, bidirectional):
    layer = S4ND(3, ndim=ndim, d_state=6, channels=2, bidirectional=bidirectional, postact='glu', l_max=4).double()
    x = torch.randn(2, 3, *spatial, dtype=torch.float64)
    ks = layer.axis_kernels(spatial)
    assert all(k.shape == (2, 3, 2 * n - 1) for k, n in zip(ks, spatial))
    y = layer.convolve(x)
    assert y.shape == (2, 6) + spatial
    assert _rel_err(y, direct_conv_nd(x, ks, layer.D)) <= 1e-10


def test_full_layer_composition():
    """activation -> output_linear -> GLU on top of the convolution, channels-last, channels 2."""
    layer = S4ND(4, ndim=2, d_state=8, channels=2, postact='glu', layout='channels_last', l_max=6).double()
    x = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    conv = direct_conv_nd(x.movedim(-1, 1), layer.axis_kernels((6, 5)), layer.D)
    want = F.glu(layer.output_linear(F.gelu(conv).movedim(1, -1)), dim=-1)
    torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-12)
    lin = S4ND(4, ndim=1, d_state=8, channels=2, postact='linear', activation=None).double()
    x1 = torch.randn(3, 4, 7, dtype=torch.float64)
    want1 = lin.output_linear(direct_conv_nd(x1, lin.axis_kernels((7,)), lin.D).movedim(1, -1)).movedim(-1, 1)
    torch.testing.assert_close(lin(x1), want1, rtol=1e-10, atol=1e-12)


def test_causal_kernels_are_zero_at_negative_offsets():
    layer = S4ND(3, ndim=2, d_state=8, bidirectional=False)
    for k, n in zip(layer.axis_kernels((5, 7)), (5, 7)):
        assert torch.all(k[..., :n - 1] == 0) and torch.any(k[..., n - 1:] != 0)


@pytest.mark.parametrize('disc', ['zoh', 'bilinear'])
def test_gradcheck_input_and_every_ssm_parameter(disc):
    layer = S4ND(2, ndim=2, d_state=4, channels=2, postact='linear', l_max=3, disc=disc, bandlimit=0.8,
                 dt_min=0.1, dt_max=0.5).double()
    names = [n for n, _ in layer.named_parameters()]
    assert {'kernel.0.inv_dt', 'kernel.1.A_real', 'kernel.0.A_imag', 'kernel.1.B', 'kernel.0.C', 'D'} <= set(names)
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)

    def fn(x, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x,) + params, eps=1e-6, atol=1e-6)


def _smooth_pattern(n: int, seed: int) -> torch.Tensor:
    """A band-limited 2-D pattern (frequencies 0 or 1 cycle per image) sampled at pixel centres, (1, 3, n, n)."""
    g = torch.Generator().manual_seed(seed)
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    img = torch.zeros(3, n, n, dtype=torch.float64)
    for _ in range(4):
        fy, fx = torch.randint(0, 2, (2,), generator=g).tolist()
        amp, py, px = torch.rand(3, generator=g, dtype=torch.float64).tolist()
        img += amp * torch.cos(2 * math.pi * (fy * t[:, None] + py)) * torch.cos(2 * math.pi * (fx * t[None, :] + px))
    return img.unsqueeze(0)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_resolution_change_continuous_vs_discrete(seed):
    """Continuous mode: a denser sampling of the same smooth signal gives, pooled back, the same output.

    Why the tolerance is what it is: a ZOH tap integrates the continuous kernel over one cell but is
    applied at the cell's edge (forward tap 0 at offset 0, backward tap 0 at offset -1, docs/design.md §2.2), so
    the output is the continuous convolution shifted by half a pixel, a first-order O(1/L) error.
    Measured over seeds 0-4 (bandlimit 0.2, Δ in [0.1, 0.5], 1-cycle pattern): 6-11% of max|y| between
    16 and 32 px, halving (ratio 0.49-0.53) between 32 and 64 px. We assert < 15% and ratio < 0.65,
    i.e. the error is the vanishing discretization error, not a different function. Discrete mode keeps
    per-pixel kernels (at 32 px they cover half the continuous extent): measured 48-320%; assert > 40%.
    DC gain (sum of the two-sided taps) per axis kernel, as a fraction of the kernel's L1 norm (channels
    whose taps nearly cancel have gain ~0, so a plain ratio is meaningless there): measured <= 2.2%,
    asserted < 4%.
    """
    torch.manual_seed(seed)
    layer = S4ND(3, ndim=2, d_state=16, l_max=16, activation=None, bandlimit=0.2, dt_min=0.1, dt_max=0.5,
                 init='legs').double()
    y = {n: layer(_smooth_pattern(n, seed)) for n in (16, 32, 64)}
    err_16_32 = _rel_err(F.avg_pool2d(y[32], 2), y[16])
    err_32_64 = _rel_err(F.avg_pool2d(y[64], 2), y[32])
    assert err_16_32 < 0.15 and err_32_64 < 0.65 * err_16_32
    k16, k32 = layer.axis_kernels((16, 16)), layer.axis_kernels((32, 32))
    for a, b in zip(k16, k32):
        assert ((b.sum(-1) - a.sum(-1)).abs() / a.abs().sum(-1)).max() < 0.04
    layer.resolution = 'discrete'
    assert _rel_err(F.avg_pool2d(layer(_smooth_pattern(32, seed)), 2), y[16]) > 0.4


def test_rate_override_and_mode_switch():
    layer = S4ND(3, ndim=2, d_state=8, l_max=8)
    x = torch.randn(1, 3, 16, 16)
    assert layer.rates((16, 16)) == (0.5, 0.5)
    torch.testing.assert_close(layer(x), layer(x, rate=0.5))
    torch.testing.assert_close(layer(x, rate=(0.5, 0.5)), layer(x, rate=0.5))
    assert not torch.allclose(layer(x), layer(x, rate=1.0))
    layer.resolution = 'discrete'
    assert layer.rates((16, 16)) == (1.0, 1.0)
    assert layer.kernel_lengths((16, 16), (1.0, 1.0)) == (8, 8)
    torch.testing.assert_close(layer(x), layer(x, rate=1.0))
    with pytest.raises(ValueError, match='resolution'):
        layer.resolution = 'fractal'


def test_bf16_autocast_cpu():
    layer = S4ND(8, ndim=2, d_state=16, channels=2, postact='glu', l_max=8)
    x = torch.randn(2, 8, 8, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x.bfloat16())
        y_plain = S4ND(8, ndim=2, d_state=16, activation=None, l_max=8)(x.bfloat16())
    assert y.dtype == torch.bfloat16 and y_plain.dtype == torch.bfloat16
    assert torch.isfinite(y.float()).all() and torch.isfinite(y_plain.float()).all()
    ref = layer(x)  # bf16 output error stays at bf16 rounding scale
    assert _rel_err(y, ref.double()) < 0.05


def test_torch_compile_two_resolutions_no_graph_break():
    layer = S4ND(4, ndim=2, d_state=8, l_max=8, postact='glu', channels=2)
    compiled = torch.compile(layer, fullgraph=True)  # fullgraph: any graph break raises
    for n in (8, 12):
        x = torch.randn(2, 4, n, n)
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('kwargs, match', [
    (dict(d_state=7), 'd_state'),
    (dict(init='chebyshev'), 'init'),
    (dict(init=('legs',) * 3), 'init'),
    (dict(disc='euler'), 'disc'),
    (dict(layout='nhwc'), 'layout'),
    (dict(ndim=4), 'ndim'),
    (dict(resolution='fractal'), 'resolution'),
    (dict(postact='relu'), 'postact'),
    (dict(activation='tanh'), 'activation'),
    (dict(channels=2), 'postact'),
    (dict(l_max=(8, 8, 8)), 'l_max'),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S4ND(4, **kwargs)


def test_bad_input_shapes_say_what_was_expected():
    layer = S4ND(4, ndim=2)
    with pytest.raises(ValueError, match=r"expects \(B, C=4, H, W\); got \(2, 3, 8, 8\)"):
        layer(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match='channels_last'):
        layer(torch.randn(2, 8, 8, 4))
    with pytest.raises(ValueError, match='ndim'):
        layer(torch.randn(2, 4, 8))
    last = S4ND(4, ndim=3, layout='channels_last')
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C=4\)"):
        last(torch.randn(2, 4, 8, 8, 8))
    with pytest.raises(ValueError, match='rate'):
        layer(torch.randn(2, 4, 8, 8), rate=(1.0, 2.0, 3.0))


def test_auto_picks_a_valid_path_for_every_registered_model_layer_shape():
    """backend='auto' on every S4ND layer shape of every registered model at its default input size, batch 1/8/32."""
    import timm
    from s4nd_timm.kernels import MATMUL_MAX_TOEPLITZ, select_backend
    shapes = set()
    for name in timm.list_models('s4nd_*'):
        model = timm.create_model(name, d_state=2)  # layer shapes do not depend on d_state
        shapes.update((m.channels, m.dim, tuple(m.l_max), m.layout) for m in model.modules() if isinstance(m, S4ND))
    assert {(1, 96, (56, 56)), (2, 384, (196,)), (1, 768, (15, 7, 7))} <= {s[:3] for s in shapes}
    for c, dim, spatial, layout in sorted(shapes):
        ks = [(c, dim, 2 * n - 1) for n in spatial]
        for batch in (1, 8, 32):
            x = torch.empty((batch, dim) + spatial if layout == 'channels_first' else (batch,) + spatial + (dim,),
                            device='meta')
            path = select_backend(x, ks, layout, grad=True)
            assert path in ('fft', 'matmul'), (spatial, batch, path)
            assert path == 'fft' or c * dim * sum(n * n for n in spatial) <= MATMUL_MAX_TOEPLITZ
            assert select_backend(x, ks, layout, grad=False) == 'direct'  # inference: oneDNN depthwise passes
