"""Every convolution path against the FFT reference path and the float64 direct convolution.

Tolerance (docs/design.md §10): errors are max |got - fp64 direct| / max |fp64 direct|, for the output and
every gradient (input, each axis kernel, D). A fast path in dtype t passes when
    err(fast, t) <= 2 * err(torch FFT reference path, t) + ATOL[t]
ATOL: float64 1e-12, float32 1e-6, bfloat16 / float16 1e-2 (one bf16 ulp is 2^-8 = 3.9e-3 relative).
Triton kernels run on tiny shapes: on the GPU when there is one, else on CPU tensors through the Triton
interpreter, in a subprocess started with TRITON_INTERPRET=1 (it must be set before Triton is imported).
Triton bf16 is checked on the GPU only: the Triton 3.8 interpreter's tl.dot returns garbage for bf16.
"""
import copy
import os
import subprocess
import sys

import pytest
import torch

from _reference import direct_conv_nd
from s4nd_timm import S4ND
from s4nd_timm.kernels import (
    BACKENDS, CPU_COST, HAS_TRITON, MATMUL_MAX_TOEPLITZ, axis_kernels_triton, select_backend, separable_conv,
    separable_conv_direct, separable_conv_matmul, separable_conv_ref, toeplitz, triton_interpret)

ATOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-2}
SHAPES = [(1, (7,)), (2, (13,)), (1, (5, 7)), (2, (6, 13)), (2, (3, 4, 5)), (1, (5, 3, 7))]  # (batch, spatial)
LAYOUTS = ['channels_first', 'channels_last']


def _case(batch, spatial, channels=2, dim=3, dtype=torch.float64):
    u = torch.randn(batch, dim, *spatial, dtype=dtype)
    ks = [torch.randn(channels, dim, 2 * n - 1, dtype=dtype) / n for n in spatial]
    D = torch.randn(channels, dim, dtype=dtype)
    return u, ks, D


def _to_layout(x, layout):
    return x if layout == 'channels_first' else x.movedim(1, -1).contiguous()


def _from_layout(x, layout):
    return x if layout == 'channels_first' else x.movedim(-1, 1)


def _outputs_and_grads(fn, u, ks, D, g, layout):
    """fn(u, ks, D) in `layout`; returns [y, du, dk_1..dk_d, dD (when D is not None)] in channels-first, float64."""
    u = _to_layout(u, layout).detach().requires_grad_()
    ks = [k.detach().requires_grad_() for k in ks]
    D = D.detach().requires_grad_() if D is not None else None
    y = fn(u, ks, D)
    y.backward(_to_layout(g, layout).to(y.dtype))
    outs = [_from_layout(y, layout), _from_layout(u.grad, layout)] + [k.grad for k in ks]
    return [t.double() for t in outs + ([D.grad] if D is not None else [])]


def _errors(got, want):
    return [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, want)]


def _direct(u, ks, D, g):
    return _outputs_and_grads(direct_conv_nd, u.double(), [k.double() for k in ks],
                              D.double() if D is not None else None, g, 'channels_first')


def _check(fast_fn, batch, spatial, layout, dtype, with_d=True):
    """fast path vs FFT reference path, both against the fp64 direct convolution, in `dtype` (with or without D)."""
    u, ks, D = _case(batch, spatial)
    D = D if with_d else None
    g = torch.randn(batch, ks[0].shape[0] * u.shape[1], *spatial, dtype=torch.float64)
    want = _direct(u, ks, D, g)
    cu, cks, cD = u.to(dtype), [k.to(dtype) for k in ks], (D.to(dtype) if with_d else None)
    fast = _errors(_outputs_and_grads(fast_fn, cu, cks, cD, g, layout), want)
    ref = _errors(_outputs_and_grads(
        lambda u, ks, D: separable_conv(u, ks, D, backend='fft', layout=layout), cu, cks, cD, g, layout), want)
    for name, e_fast, e_ref in zip(['y', 'du'] + [f'dk{i}' for i in range(len(ks))] + ['dD'], fast, ref):
        assert e_fast <= 2 * e_ref + ATOL[dtype], f'{name}: err {e_fast:.3g} vs reference path {e_ref:.3g}'
    return fast


@pytest.mark.parametrize('batch, spatial', SHAPES)
@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_matmul_matches_direct_conv_and_reference(batch, spatial, layout, dtype):
    _check(lambda u, ks, D: separable_conv_matmul(u, ks, D, layout=layout), batch, spatial, layout, dtype)


@pytest.mark.parametrize('batch, spatial', SHAPES)
@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_direct_matches_direct_conv_and_reference(batch, spatial, layout, dtype):
    """The oneDNN depthwise path, output and every gradient (its backward is torch's convolution backward)."""
    _check(lambda u, ks, D: separable_conv_direct(u, ks, D, layout=layout), batch, spatial, layout, dtype)


@pytest.mark.parametrize('spatial', [(6, 13), (3, 4, 5), (1, 7), (4, 1, 1)])
def test_direct_on_every_memory_order(spatial):
    """Channels-first input stored channels-first (one copy in) or channels innermost (the view a ConvNeXt block
    hands over), and length-1 axes: same values; the output is stored channels innermost either way."""
    u, ks, D = _case(2, spatial)
    want = direct_conv_nd(u, ks, D)
    strided = u.movedim(1, -1).contiguous().movedim(-1, 1)
    for x in (u, strided):
        y = separable_conv_direct(x, ks, D)
        torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-12)
        assert y.movedim(1, -1).is_contiguous()
    torch.testing.assert_close(separable_conv_direct(u, ks, None), direct_conv_nd(u, ks, None), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('batch, spatial', [(2, (13,)), (2, (6, 13)), (1, (3, 4, 5))])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_matmul_half_precision_on_cpu(batch, spatial, dtype):
    _check(lambda u, ks, D: separable_conv(u, ks, D, backend='matmul'), batch, spatial, 'channels_first', dtype)


def test_reference_path_matches_direct_conv():
    """The FFT path itself (the reference definition) against the independent fp64 direct convolution."""
    for batch, spatial in SHAPES:
        u, ks, D = _case(batch, spatial)
        torch.testing.assert_close(separable_conv_ref(u, ks, D), direct_conv_nd(u, ks, D), rtol=1e-10, atol=1e-12)


def test_toeplitz_layout():
    k = torch.arange(7.0).reshape(1, 1, 7)  # L = 4, index 3 = offset 0
    t = toeplitz(k, 4)[0, 0]
    p, q = torch.meshgrid(torch.arange(4), torch.arange(4), indexing='ij')
    assert torch.equal(t, (3 + p - q).float())


def test_without_skip_term():
    u, ks, _ = _case(2, (5, 6))
    torch.testing.assert_close(separable_conv_matmul(u, ks, None), direct_conv_nd(u, ks, None), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('ndim, spatial', [(1, (9,)), (2, (5, 7)), (3, (3, 4, 5))])
@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('layout', LAYOUTS)
def test_layer_backends_agree_with_every_parameter_gradient(ndim, spatial, bidirectional, layout):
    layer = S4ND(4, ndim=ndim, d_state=8, channels=2, postact='glu', bidirectional=bidirectional, layout=layout,
                 backend='fft').double()
    x = _to_layout(torch.randn(2, 4, *spatial, dtype=torch.float64), layout)
    results = {}
    for backend in ('fft', 'matmul', 'direct', 'auto'):
        layer.backend = backend
        layer.zero_grad()
        xb = x.clone().requires_grad_()
        y = layer(xb)
        y.square().sum().backward()
        results[backend] = [y, xb.grad] + [p.grad.clone() for p in layer.parameters()]
    for backend in ('matmul', 'direct', 'auto'):
        for got, want in zip(results[backend], results['fft']):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_backend_validation_and_dispatch():
    with pytest.raises(ValueError, match='backend'):
        S4ND(4, backend='cuda')
    layer = S4ND(4)
    with pytest.raises(ValueError, match='backend'):
        layer.backend = 'cufft'
    u, ks, D = _case(1, (5, 6))
    with pytest.raises(ValueError, match='backend'):
        separable_conv(u, ks, D, backend='winograd')
    with pytest.raises(ValueError, match='layout'):
        separable_conv(u, ks, D, layout='nhwc')
    with pytest.raises(ValueError, match='channels_last'):
        separable_conv(u.movedim(1, -1), ks, D)
    assert set(BACKENDS) == {'auto', 'direct', 'fft', 'matmul', 'triton'}


def test_auto_follows_the_measured_cpu_cost_model():
    def pick(batch, dim, spatial, grad=True):
        return select_backend(
            torch.empty(batch, dim, *spatial), [torch.empty(1, dim, 2 * n - 1) for n in spatial], grad=grad)
    assert pick(8, 96, (56, 56)) == 'matmul'  # vision sizes: matmul (measured 2-D: matmul faster up to 512 px)
    assert pick(1, 256, (4096,)) == 'fft'  # long 1-D: Toeplitz too large
    assert pick(1, 256, (256,)) == 'fft'  # 1-D, batch 1: Toeplitz build not amortized
    assert pick(128, 384, (196,)) == 'matmul'  # 1-D, large batch: amortized
    assert 256 * 4096 ** 2 > MATMUL_MAX_TOEPLITZ and set(CPU_COST) == {'mac', 'toeplitz', 'fft'}
    # without gradients the CPU takes the direct path at every size (measured fastest at every registered model
    # layer shape), long 1-D included (it builds no Toeplitz matrices)
    assert {pick(b, 96, s, grad=False) for b, s in [(1, (56, 56)), (32, (7, 7)), (8, (196,)), (1, (4096,)),
                                                    (1, (15, 56, 56))]} == {'direct'}


def test_auto_infers_whether_gradients_are_needed(monkeypatch):
    import s4nd_timm.layers.s4nd as s4nd_module
    u, ks, _ = _case(2, (5, 6), dtype=torch.float32)
    assert select_backend(u, ks) == 'direct'  # nothing requires grad
    assert select_backend(u.requires_grad_(), ks) == 'matmul'
    with torch.no_grad():
        assert select_backend(u, ks) == 'direct'
    layer = S4ND(3, ndim=2, d_state=4, channels=2, postact='glu', l_max=(5, 6)).eval()
    paths, real = [], s4nd_module.select_backend
    monkeypatch.setattr(s4nd_module, 'select_backend', lambda *a, **k: paths.append(real(*a, **k)) or paths[-1])
    x = torch.randn(2, 3, 5, 6)
    y = layer(x)  # eval with gradients on: the SSM parameters still get gradients (attribution, fine-tuning)
    with torch.no_grad():
        y_inference = layer(x)
    assert paths == ['matmul', 'direct']
    torch.testing.assert_close(y_inference, y.detach(), rtol=1e-5, atol=1e-6)


def test_auto_takes_triton_once_enabled(monkeypatch):
    """Flipping AUTO_USES_TRITON is the only change needed: 'auto' then picks Triton for CUDA tensors that fit
    (fake CUDA tensors: no GPU needed), and the layer resolves the path from shapes before generating kernels."""
    import s4nd_timm.kernels as kernels
    from torch._subclasses.fake_tensor import FakeTensorMode
    if not HAS_TRITON:
        pytest.skip('Triton is not installed')
    with FakeTensorMode():
        video, seq = torch.empty(2, 96, 8, 56, 56, device='cuda'), torch.empty(8, 256, 4096, device='cuda')
    video_ks, seq_ks = [(1, 96, 15), (1, 96, 111), (1, 96, 111)], [(1, 256, 8191)]
    assert select_backend(video, video_ks) == 'matmul' and not kernels.AUTO_USES_TRITON
    monkeypatch.setattr(kernels, 'AUTO_USES_TRITON', True)
    assert select_backend(video, video_ks) == 'triton'
    assert select_backend(video.movedim(1, -1), video_ks, 'channels_last') == 'triton'
    assert select_backend(seq, seq_ks) == 'fft'  # Toeplitz matrices too large: refused before Triton is considered


def test_triton_backend_refuses_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    u, ks, D = _case(1, (5, 6), dtype=torch.float32)
    with pytest.raises(RuntimeError, match='CUDA'):
        separable_conv(u, ks, D, backend='triton')


def test_matmul_compiles_fullgraph_and_exports():
    u, ks, D = _case(2, (5, 7), dtype=torch.float32)

    class Conv(torch.nn.Module):
        def forward(self, u, k0, k1, D):
            return separable_conv_matmul(u, [k0, k1], D)

    want = separable_conv_matmul(u, ks, D)
    compiled = torch.compile(Conv(), fullgraph=True, backend='aot_eager')
    torch.testing.assert_close(compiled(u, *ks, D), want)
    exported = torch.export.export(Conv(), (u, *ks, D))
    torch.testing.assert_close(exported.module()(u, *ks, D), want)


def test_matmul_onnx_export_runs_in_onnxruntime(tmp_path):
    onnxruntime = pytest.importorskip('onnxruntime')
    u, ks, D = _case(2, (5, 7), dtype=torch.float32)

    class Conv(torch.nn.Module):
        def forward(self, u, k0, k1, D):
            return separable_conv_matmul(u, [k0, k1], D)

    path = tmp_path / 'conv.onnx'
    torch.onnx.export(Conv().eval(), (u, *ks, D), str(path), dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    names = [i.name for i in session.get_inputs()]
    out, = session.run(None, {n: t.numpy() for n, t in zip(names, (u, *ks, D))})
    torch.testing.assert_close(torch.from_numpy(out), separable_conv_matmul(u, ks, D), rtol=1e-5, atol=1e-5)


INTERPRETED = triton_interpret()  # set at process start, so Triton itself was imported in interpreter mode


@pytest.fixture
def triton_device():
    """Device for the Triton tests: CUDA when present, else CPU through the Triton interpreter.

    TRITON_INTERPRET must be set before Triton is imported (its own tl.* helpers are @triton.jit), so
    without a GPU these tests run in a subprocess started with TRITON_INTERPRET=1
    (``test_triton_kernels_in_interpreter_subprocess``), or directly with
    ``TRITON_INTERPRET=1 pytest tests/test_kernels.py``.
    """
    if not HAS_TRITON:
        pytest.skip('Triton is not installed')
    if torch.cuda.is_available():
        return 'cuda'
    if not INTERPRETED:
        pytest.skip('no GPU: runs in test_triton_kernels_in_interpreter_subprocess (TRITON_INTERPRET=1)')
    return 'cpu'


@pytest.mark.skipif(not HAS_TRITON or torch.cuda.is_available() or INTERPRETED,
                    reason='Triton tests run in this process (GPU or TRITON_INTERPRET=1), or Triton is missing')
def test_triton_kernels_in_interpreter_subprocess():
    env = dict(os.environ, TRITON_INTERPRET='1')
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', __file__, '-q', '-k', 'triton and not subprocess', '-p', 'no:cacheprovider'],
        env=env, capture_output=True, text=True, cwd=os.path.dirname(__file__))
    summary = result.stdout.strip().split('\n')[-1]
    assert result.returncode == 0 and 'skipped' not in summary, result.stdout[-6000:] + result.stderr[-3000:]


# (batch, spatial, layout, dtype): every ndim x layout x dtype pair once; batch 17 = two row blocks in 1-D
TRITON_CASES = [
    (2, (7,), 'channels_first', torch.float32), (17, (13,), 'channels_last', torch.float32),
    (17, (13,), 'channels_first', torch.float16), (2, (7,), 'channels_last', torch.float16),
    (1, (5, 7), 'channels_first', torch.float32), (2, (6, 13), 'channels_last', torch.float32),
    (2, (6, 13), 'channels_first', torch.float16), (1, (5, 7), 'channels_last', torch.float16),
    (2, (3, 4, 5), 'channels_first', torch.float32), (1, (5, 3, 7), 'channels_last', torch.float32),
    (1, (5, 3, 7), 'channels_first', torch.float16), (2, (3, 4, 5), 'channels_last', torch.float16)]


@pytest.mark.parametrize('batch, spatial, layout, dtype', TRITON_CASES)
def test_triton_matches_direct_conv_and_reference(triton_device, batch, spatial, layout, dtype):
    def fn(u, ks, D):
        dev = [t.to(triton_device) for t in (u, *ks, D)]
        return separable_conv(dev[0], dev[1:-1], dev[-1], backend='triton', layout=layout).cpu()
    _check(fn, batch, spatial, layout, dtype)


# Long axes run as several tiles: block=16 forces 2-3 tiles per axis (and 2 row blocks, 2 row chunks of the tap
# gradient) on small inputs; every rank, both layouts, with and without D, fp32 and fp16 (bf16: GPU and compile test)
TILED_CASES = [
    (3, (40,), 'channels_first', torch.float32, True), (2, (37,), 'channels_last', torch.float16, False),
    (1, (17, 20), 'channels_last', torch.float32, False), (1, (20, 17), 'channels_first', torch.float16, True),
    (1, (17, 2, 3), 'channels_first', torch.float32, True), (1, (2, 3, 18), 'channels_last', torch.float16, False)]


@pytest.mark.parametrize('batch, spatial, layout, dtype, with_d', TILED_CASES)
def test_triton_tiled_long_axes_match_direct_conv_and_reference(triton_device, batch, spatial, layout, dtype, with_d):
    from s4nd_timm.kernels import separable_conv_triton as impl

    def fn(u, ks, D):
        dev = [t.to(triton_device) if t is not None else None for t in (u, *ks, D)]
        return impl.separable_conv_triton(dev[0], dev[1:-1], dev[-1], layout=layout, block=16).cpu()
    _check(fn, batch, spatial, layout, dtype, with_d)


def test_triton_admits_every_model_shape(triton_device):
    """Every layer shape the registered models make at 224-384 px fits (ViT 196 / 576 tokens, ConvNeXt stages at
    288 / 384 px: first stage 72 / 96), so 'auto' could take Triton for all of them once enabled."""
    from s4nd_timm.kernels import separable_conv_triton as impl
    shapes = [(196,), (576,), (4096,), (56, 56), (72, 72), (96, 96), (8, 56, 56), (30, 96, 96)]
    for spatial in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            assert impl.fits(torch.empty(1, 1, *spatial, dtype=dtype), [(1, 1, 2 * n - 1) for n in spatial],
                             'channels_first'), spatial


@pytest.mark.parametrize('ndim, spatial, mode', [(2, (5, 6), 'diag'), (3, (3, 4, 5), 'diag'), (2, (5, 6), 'dplr')])
def test_triton_layer_and_compile(triton_device, monkeypatch, ndim, spatial, mode):
    """Through the layer (every parameter gradient), Triton kernel generation included (diag; DPLR stays on
    torch), and as custom ops under torch.compile(fullgraph=True)."""
    import s4nd_timm.layers.s4nd as s4nd_module
    calls = []
    monkeypatch.setattr(s4nd_module, 'axis_kernels_triton', lambda *a: calls.append(1) or axis_kernels_triton(*a))
    layer = S4ND(4, ndim=ndim, d_state=8, channels=2, postact='glu', backend='fft', mode=mode,
                 l_max=spatial if mode == 'dplr' else None).to(triton_device)
    x = torch.randn(2, 4, *spatial, device=triton_device)
    results = {}
    for backend in ('fft', 'triton'):
        layer.backend = backend
        layer.zero_grad()
        xb = x.clone().requires_grad_()
        layer(xb).square().sum().backward()
        results[backend] = [xb.grad] + [p.grad.clone() for p in layer.parameters()]
    for got, want in zip(results['triton'], results['fft']):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert len(calls) == (mode == 'diag')
    compiled = torch.compile(layer, fullgraph=True, backend='aot_eager')
    xb = x.clone().requires_grad_()
    y = compiled(xb)
    y.square().sum().backward()  # through both custom ops' backward
    torch.testing.assert_close(y, layer(x))
    torch.testing.assert_close(xb.grad, results['triton'][0], rtol=1e-4, atol=1e-5)
    # 'auto' passes the path it resolved to the kernel generator (what AUTO_USES_TRITON = True does on CUDA)
    layer.backend, before = 'auto', len(calls)
    monkeypatch.setattr(s4nd_module, 'select_backend', lambda *a, **k: 'triton')
    torch.testing.assert_close(layer(x), y)
    assert len(calls) - before == (mode == 'diag')


def test_triton_custom_op_registration(triton_device):
    from s4nd_timm.kernels import separable_conv_triton as impl
    u, ks, D = _case(1, (5, 6), channels=1, dim=2, dtype=torch.float32)
    args = (u.to(triton_device).requires_grad_(), [k.to(triton_device).requires_grad_() for k in ks],
            D.to(triton_device).requires_grad_(), 'channels_first', 16)
    torch.library.opcheck(
        impl._fwd_op, args, test_utils=('test_schema', 'test_faketensor', 'test_autograd_registration'))


def test_triton_kernel_generation_custom_op_registration(triton_device):
    from s4nd_timm.kernels import ssm_kernel_gen_triton as impl
    wr, wi = torch.randn(2, 2, 3, 4, device=triton_device), torch.randn(2, 2, 3, 4, device=triton_device)
    sr, si = -torch.rand(2, 3, 4, device=triton_device), torch.randn(2, 3, 4, device=triton_device)
    args = tuple(t.requires_grad_() for t in (wr, wi, sr, si)) + ([5, 6], [5, 4], 1)
    torch.library.opcheck(
        impl._vandermonde_fwd, args, test_utils=('test_schema', 'test_faketensor', 'test_autograd_registration'))


def test_triton_refuses_unsupported_shapes(triton_device):
    from s4nd_timm.kernels.separable_conv_triton import MAX_LEN
    u, ks, D = _case(1, (MAX_LEN + 1,), dtype=torch.float32)  # refused before any launch
    with pytest.raises(ValueError, match='triton'):
        separable_conv(u.to(triton_device), [k.to(triton_device) for k in ks], D.to(triton_device), backend='triton')
    u, ks, D = _case(1, (5, 6), dtype=torch.float64)  # float32 / bf16 / fp16 only
    with pytest.raises(ValueError, match='triton'):
        separable_conv(u.to(triton_device), [k.to(triton_device) for k in ks], D.to(triton_device), backend='triton')


@pytest.mark.parametrize('ndim, spatial, kwargs', [
    (1, (9,), dict(disc='zoh')),
    (2, (5, 7), dict(disc='bilinear', bandlimit=0.5, bidirectional=False, l_max=(4, 7))),
    (3, (3, 4, 9), dict(disc='zoh', l_max=(2, 4, 12))),
])
def test_triton_kernel_generation_matches_torch_path(triton_device, ndim, spatial, kwargs):
    """Through the layer's call site (``axis_kernels(backend='triton')``): all two-sided axis kernels in one launch,
    and every SSM parameter gradient, vs the layer's torch path; both against the float64 torch path."""
    layer = S4ND(4, ndim=ndim, d_state=8, channels=2, postact='glu', **kwargs).to(triton_device)
    weights = [torch.randn(2, 4, 2 * n - 1, device=triton_device) for n in spatial]

    def run(fn, module):
        module.zero_grad()
        ks = fn(module)
        sum((k * w.to(k.dtype)).sum() for k, w in zip(ks, weights)).backward()
        return [k.double() for k in ks] + [p.grad.double() for p in module.kernel.parameters()]

    double = copy.deepcopy(layer).double()
    want = run(lambda m: m.axis_kernels(spatial), double)
    ref = _errors(run(lambda m: m.axis_kernels(spatial, backend='fft'), layer), want)
    fast = _errors(run(lambda m: m.axis_kernels(spatial, backend='triton'), layer), want)
    for e_fast, e_ref in zip(fast, ref):
        assert e_fast <= 2 * e_ref + ATOL[torch.float32], (fast, ref)
    # the plain-torch definition beside the Triton op gives the layer's torch path from the layer's own factors
    from s4nd_timm.kernels.ssm_kernel_gen_triton import axis_kernels_ref
    rates = double.rates(spatial)
    w, s = zip(*[kern.discretize(r) for kern, r in zip(double.kernel, rates)])
    with torch.no_grad():
        for got, k in zip(axis_kernels_ref(w, s, spatial, double.kernel_lengths(spatial, rates), 2), want):
            torch.testing.assert_close(got, k, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('lengths, taps, channels, ck', [((9,), (9,), 2, 4), ((5, 70), (3, 70), 1, 1),
                                                         ((6, 3, 4), (6, 2, 4), 1, 2)])
def test_triton_kernel_generation_matches_ref(triton_device, lengths, taps, channels, ck):
    """Tensor in, tensor out: ``axis_kernels_triton`` vs ``axis_kernels_ref`` (same signature) on random factors,
    kernels and the gradients to W and the log-step, both against the ref in float64. 70 taps: two tap blocks."""
    from s4nd_timm.kernels import ssm_kernel_gen_triton as impl
    d, h, m = len(lengths), 3, 4
    w = [torch.randn(ck, h, m, dtype=torch.complex128) for _ in range(d)]
    s = [torch.complex(-torch.rand(h, m, dtype=torch.float64) / 4, torch.randn(h, m, dtype=torch.float64))
         for _ in range(d)]
    weights = [torch.randn(channels, h, 2 * n - 1, dtype=torch.float64) for n in lengths]

    def run(fn, dtype, device):
        wi = [t.detach().to(dtype).to(device).requires_grad_() for t in w]
        si = [t.detach().to(dtype).to(device).requires_grad_() for t in s]
        ks = fn(wi, si, lengths, taps, channels)
        sum((k.double().cpu() * g).sum() for k, g in zip(ks, weights)).backward()
        return [k.double().cpu() for k in ks] + [torch.view_as_real(t.grad).double().cpu() for t in wi + si]

    want = run(impl.axis_kernels_ref, torch.complex128, 'cpu')
    ref = _errors(run(impl.axis_kernels_ref, torch.complex64, triton_device), want)
    fast = _errors(run(impl.axis_kernels_triton, torch.complex64, triton_device), want)
    for e_fast, e_ref in zip(fast, ref):
        assert e_fast <= 2 * e_ref + ATOL[torch.float32], (fast, ref)
    with pytest.raises(ValueError, match='kernel channels'):
        impl.axis_kernels_triton([t.to(triton_device) for t in w], s, lengths, taps, channels + 5)
    with pytest.raises(ValueError, match='complex64'):
        impl.axis_kernels_triton(w, s, lengths, taps, channels)


@pytest.mark.cuda
@pytest.mark.parametrize('batch, dim, spatial', [
    (8, 96, (56, 56)), (8, 192, (28, 28)), (8, 384, (14, 14)), (8, 768, (7, 7)), (2, 96, (8, 56, 56)),
    (8, 384, (196,)), (2, 96, (96, 96))])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('layout', LAYOUTS)
def test_cuda_stage_shapes(batch, dim, spatial, dtype, layout):
    """ConvNeXt-T stage shapes, the video shape, the ViT-S4ND sequence and a 384 px first stage (several Triton tiles
    per axis) on the GPU, every available fast path vs the FFT path and fp64.

    The truth is the fp64 direct convolution up to 56 px; in 3-D and at 96 x 96 the fp64 FFT path (checked against
    the direct convolution in ``test_reference_path_matches_direct_conv``): a direct 15 x 111 x 111 conv3d in fp64
    is too slow.
    """
    u = torch.randn(batch, dim, *spatial, dtype=torch.float64, device='cuda')
    ks = [torch.randn(1, dim, 2 * n - 1, dtype=torch.float64, device='cuda') / n for n in spatial]
    D = torch.randn(1, dim, dtype=torch.float64, device='cuda')
    g = torch.randn(batch, dim, *spatial, dtype=torch.float64, device='cuda')
    if len(spatial) == 3 or max(spatial) > 64:
        want = _outputs_and_grads(separable_conv_ref, u, ks, D, g, 'channels_first')
    else:
        want = _direct(u, ks, D, g)
    cast = [t.to(dtype) for t in (u, *ks, D)]
    ref = _errors(_outputs_and_grads(
        lambda u, ks, D: separable_conv(u, ks, D, backend='fft', layout=layout), cast[0], cast[1:-1], cast[-1], g,
        layout), want)
    for backend in ['matmul'] + (['triton'] if HAS_TRITON else []):
        fast = _errors(_outputs_and_grads(
            lambda u, ks, D, backend=backend: separable_conv(u, ks, D, backend=backend, layout=layout), cast[0],
            cast[1:-1], cast[-1],
            g, layout), want)
        for e_fast, e_ref in zip(fast, ref):
            assert e_fast <= 2 * e_ref + ATOL[dtype], (backend, fast, ref)
