"""S4ND's inference kernel cache (docs/design.md §12): reuse while nothing changed, never a stale kernel."""
import pytest
import torch

from s4nd_timm import S4ND


def _layer(mode='dplr', **kw):
    torch.manual_seed(0)
    kw = dict(dict(d_state=8, l_max=8, activation=None, postact=None, mode=mode), **kw)
    return S4ND(4, ndim=2, **kw).eval()


def _fresh(layer, x, **kw):
    """The output with kernels generated now (cache dropped first)."""
    layer.clear_kernel_cache()
    with torch.no_grad():
        return layer(x, **kw)


@pytest.fixture
def generations(monkeypatch):
    """Counts kernel generations of every S4ND."""
    calls = []
    original = S4ND._generate

    def counting(self, *args):
        calls.append(args[0])
        return original(self, *args)
    monkeypatch.setattr(S4ND, '_generate', counting)
    return calls


@pytest.mark.parametrize('mode', ['diag', 'dplr'])
@pytest.mark.parametrize('grad_off', [torch.no_grad, torch.inference_mode])
def test_cached_output_is_identical_and_generated_once(mode, grad_off, generations):
    layer = _layer(mode, backend='matmul')  # one path for both calls ('auto' picks by whether gradients are on)
    x = torch.randn(2, 4, 8, 8)
    with torch.enable_grad():
        want = layer(x).detach()  # gradients on: no cache
    assert len(generations) == 1 and not layer._kernel_cache.entries
    with grad_off():
        first, second = layer(x), layer(x)
    assert len(generations) == 2  # one generation for both calls with gradients off
    assert torch.equal(first, want) and torch.equal(second, want)


def test_sizes_are_keyed_and_memory_is_bounded(generations):
    layer = _layer('diag', l_max=None)
    with torch.no_grad():
        for n in (4, 5, 6, 7, 8, 9):
            layer(torch.randn(1, 4, n, n))
        assert len(layer._kernel_cache.entries) == 4  # least recently used sizes dropped
        layer(torch.randn(1, 4, 9, 9))
        assert len(generations) == 6
        layer(torch.randn(1, 4, 4, 4))  # evicted: generated again
        assert len(generations) == 7
        # the rate is part of the key
        x = torch.randn(1, 4, 9, 9)
        torch.testing.assert_close(layer(x, rate=0.5), _fresh(layer, x, rate=0.5), rtol=0, atol=0)


def _change_by_optimizer(layer):
    layer.train()
    torch.optim.SGD(layer.parameters(), lr=0.5).zero_grad()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(torch.randn(2, 4, 8, 8)).square().sum().backward()
    opt.step()
    layer.eval()


def _change_by_state_dict(layer):
    other = _layer(layer.mode)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    layer.load_state_dict(other.state_dict())


def _change_by_step_without_train_toggle(layer):
    with torch.no_grad():
        layer.kernel[0].inv_dt.add_(0.3)


def _change_bandlimit(layer):
    for kern in layer.kernel:
        kern.bandlimit = 0.2


def _change_resolution(layer):
    layer.resolution = 'discrete'


def _change_l_max(layer):
    layer.l_max = (4, 4)


@pytest.mark.parametrize('change', [
    _change_by_optimizer, _change_by_state_dict, _change_by_step_without_train_toggle, _change_bandlimit,
    _change_resolution, _change_l_max])
@pytest.mark.parametrize('mode', ['diag', 'dplr'])
def test_every_change_invalidates(change, mode):
    layer = _layer(mode, l_max=6)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        before = layer(x)
    change(layer)
    with torch.no_grad():
        after = layer(x)
    want = _fresh(layer, x)
    assert not torch.equal(before, want)  # the change does change the kernels
    assert torch.equal(after, want)


def test_set_raw_c_invalidates():
    layer = _layer('dplr')
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        before = layer(x)
        layer.kernel[1].set_raw_c(torch.randn_like(layer.kernel[1].C))
        after = layer(x)
    assert not torch.equal(before, after) and torch.equal(after, _fresh(layer, x))


def test_dtype_move_and_train_toggle_clear_and_rekey(generations):
    layer = _layer('dplr')
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        layer(x)
        layer.double()
        y = layer(x.double())
        assert y.dtype == torch.float64 and len(generations) == 2
        assert all(k.dtype == torch.float64 for k in layer._kernel_cache.entries[next(iter(layer._kernel_cache.entries))])
        layer.train()
        assert not layer._kernel_cache.entries
        layer.eval()
        layer.float()
        torch.testing.assert_close(layer(x), _fresh(layer, x), rtol=0, atol=0)


def test_backend_is_keyed():
    layer = _layer('diag')
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        for backend in ('matmul', 'fft', 'direct', 'auto'):
            layer.backend = backend
            torch.testing.assert_close(layer(x), _fresh(layer, x), rtol=0, atol=0)


def test_no_cache_while_training_gradients_reach_the_ssm_parameters():
    layer = _layer('dplr').train()
    x = torch.randn(2, 4, 8, 8)
    for _ in range(2):
        layer.zero_grad()
        layer(x).square().sum().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.kernel.parameters())
    assert not layer._kernel_cache.entries
    layer.eval()  # eval with gradients on (e.g. input attributions): still no cache, gradients still flow
    layer.zero_grad()
    layer(x).sum().backward()
    assert layer.kernel[0].inv_dt.grad is not None and not layer._kernel_cache.entries


def test_torch_compile_fullgraph_two_resolutions_with_cache_on():
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    layer = _layer('diag')
    counter = CompileCounter()
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    with torch.no_grad():
        for n in (8, 12):
            x = torch.randn(2, 4, n, n)
            torch.testing.assert_close(compiled(x), _fresh(layer, x), rtol=1e-5, atol=1e-6)
        frames = counter.frame_count
        for n in (8, 12, 8, 12):
            compiled(torch.randn(2, 4, n, n))
    assert frames <= 2 and counter.frame_count == frames  # no recompilation per call


def test_export_is_unchanged_by_a_warm_cache():
    layer = _layer('diag', backend='matmul')
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        layer.clear_kernel_cache()
        cold = torch.export.export(layer, (x,))
        layer(x)  # warm the cache
        assert layer._kernel_cache.entries
        warm = torch.export.export(layer, (x,))
    code = lambda ep: [m.code for m in ep.graph_module.modules()]  # noqa: E731
    assert code(warm) == code(cold)
    params = [n for n in warm.graph.nodes if n.op == 'placeholder' and n.name.startswith('p_kernel')]
    assert len(params) == 10 and all(n.users for n in params)  # kernels generated from the parameters
    assert not warm.constants
    torch.testing.assert_close(warm.module()(x), _fresh(layer, x), rtol=1e-5, atol=1e-6)


def test_jit_trace_records_kernel_generation_not_cached_kernels():
    """The path the legacy ONNX exporter takes: the trace must compute the kernels from the parameters."""
    layer = _layer('diag', backend='matmul')
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        layer(x)  # warm the cache
        traced = torch.jit.trace(layer, (x,), check_trace=False)
        layer.kernel[0].inv_dt.add_(0.5)
        torch.testing.assert_close(traced(x), _fresh(layer, x), rtol=1e-5, atol=1e-6)


def test_layer_built_under_inference_mode_runs_uncached():
    """Inference tensors have no version counter: such a layer generates its kernels every call."""
    with torch.inference_mode():
        layer = _layer('dplr')
        x = torch.randn(2, 4, 8, 8)
        y = layer(x)
        assert not layer._kernel_cache.entries
        layer.kernel[0].inv_dt.add_(0.5)
        assert not torch.equal(layer(x), y)
