"""The timm model contract for every registered ``s4nd_*`` model (checks of timm's tests/test_models.py).

Fast suite: each registered name is built through its timm entrypoint with tiny widths and base sizes
(``TINY``, small l_max and d_state) so the whole contract runs on a CPU in CI; the registered sizes run
the forward/backward checks under ``-m slow``. The arithmetic of the registered sizes (pool_size at the
cfg input size, parameter counts) is checked without running them.
"""
import io
import math

import pytest
import timm
import timm.optim
import torch
import torch.nn as nn
from timm.models import FeatureInfo

import s4nd_timm
from s4nd_timm.layers import S4ND
from s4nd_timm.models import freeze_s4nd_kernels

MODEL_NAMES = timm.list_models('s4nd_*')
EXPECTED_NAMES = {
    's4nd_convnext_micro', 's4nd_convnext_tiny', 's4nd_convnext_small', 's4nd_convnext_base',
    's4nd_convnext_tiny_3d', 's4nd_vit_tiny_patch16', 's4nd_vit_small_patch16', 's4nd_vit_base_patch16',
    's4nd_iso_cifar', 's4nd_iso_cifar_small', 's4nd_iso_cifar_conv2d', 's4nd_iso_cifar_conv2d_small'}

# layer scale 1 (default 1e-6) so that the blocks, not only the stem and downsamples, show in every comparison
_CONVNEXT = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40), img_size=64, d_state=8, ls_init_value=1.0)
TINY = {
    'convnext': _CONVNEXT,
    'convnext_3d': dict(_CONVNEXT, num_frames=4),
    'vit': dict(embed_dim=32, depth=4, img_size=64, d_state=8),
    'iso': dict(d_model=16, depth=4, img_size=16, d_state=8),
}
# input (C, *spatial) of the tiny models, and of the registered models in the slow suite
TINY_INPUT = {'convnext': (3, 64, 64), 'convnext_3d': (3, 4, 64, 64), 'vit': (3, 64, 64), 'iso': (3, 16, 16)}
SLOW_KWARGS = {'convnext': dict(img_size=64), 'convnext_3d': dict(img_size=64, num_frames=4),
               'vit': dict(img_size=64), 'iso': dict(img_size=16)}
STRIDE = {'convnext': 32, 'convnext_3d': 32, 'vit': 16, 'iso': 1}


def _family(name: str) -> str:
    if name.startswith('s4nd_convnext'):
        return 'convnext_3d' if name.endswith('_3d') else 'convnext'
    return 'vit' if name.startswith('s4nd_vit') else 'iso'


def _create(name: str, **kwargs) -> nn.Module:
    return timm.create_model(name, **dict(TINY[_family(name)], **kwargs))


def _input(name: str, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, *TINY_INPUT[_family(name)])


def _spatial(name: str, outputs: torch.Tensor) -> tuple:
    """Spatial sizes of a feature map in the model's output format."""
    channels_last = _family(name) == 'iso'  # S4NDIsotropic.output_fmt == 'NHWC'
    return tuple(outputs.shape[1:-1]) if channels_last else tuple(outputs.shape[2:])


def _has_s4nd(model: nn.Module) -> bool:
    return any(isinstance(m, S4ND) for m in model.modules())


def test_registered_names():
    assert set(MODEL_NAMES) == EXPECTED_NAMES
    for name in MODEL_NAMES:
        assert timm.models.model_entrypoint(name).__module__.startswith('s4nd_timm.models.')
    for name in ('convnext_tiny', 'convnext_small', 'convnext_base', 'vit_small_patch16_224'):
        assert timm.models.model_entrypoint(name).__module__.startswith('timm.models.'), name


@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_pretrained_cfg(model_name):
    cfg = timm.models.get_pretrained_cfg(model_name)
    tag = cfg.tag
    assert cfg.hf_hub_id == f's4nd-timm/{model_name}.{tag}'
    assert cfg.paper_ids == 'arXiv:2210.06583' and cfg.license == 'apache-2.0'
    assert cfg.fixed_input_size is False
    assert cfg.first_conv and cfg.classifier and cfg.mean and cfg.std and cfg.crop_pct
    assert cfg.test_input_size is not None
    family = _family(model_name)
    if family != 'vit':  # pool_size = input_size / total stride (the video cfg: (T/2, H/32, W/32), T = 30)
        want = tuple(n // STRIDE[family] for n in cfg.input_size[-2:])
        assert tuple(cfg.pool_size[-2:]) == want
    data_cfg = timm.data.resolve_data_config({}, model=_create(model_name))
    assert data_cfg['mean'] == cfg.mean and data_cfg['crop_pct'] == cfg.crop_pct


@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_model_forward(model_name):
    """timm: forward, no NaN; grad checkpointing gives the same output."""
    model = _create(model_name).eval()
    x = _input(model_name)
    out = model(x)
    assert out.shape == (1, model.num_classes) and not torch.isnan(out).any()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_model_backward(model_name):
    """timm: every parameter gets a gradient; num_classes; drop_path_rate builds stochastic depth."""
    model = _create(model_name, num_classes=42, drop_path_rate=0.1).train()
    out = model(_input(model_name, batch=2))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing[:5]}'
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    drops = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    assert drops and max(drops) == pytest.approx(0.1)


@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_model_default_cfgs(model_name):
    """timm's test_model_default_cfgs (spatial models) / _non_std (ViT: token output) at the tiny size."""
    model = _create(model_name).eval()
    assert model.num_classes > 0 and model.num_features > 0 and model.head_hidden_size > 0
    assert model.in_chans == 3
    family = _family(model_name)
    x = _input(model_name)
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (1, model.head_hidden_size)
    model.reset_classifier(0)
    assert model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)
    pooled = model(x)
    assert pooled.shape == pre.shape
    if family == 'vit':
        assert feats.shape == (1, (64 // 16) ** 2, model.num_features)
        assert timm.create_model(model_name, num_classes=0, **TINY[family])(x).shape == (1, model.num_features)
    else:
        pool = tuple(n // STRIDE[family] for n in x.shape[-2:])
        assert _spatial(model_name, feats)[-2:] == pool
        model.reset_classifier(0, '')
        assert len(model(x).shape) == x.dim() and _spatial(model_name, model(x))[-2:] == pool
        unpooled = timm.create_model(model_name, num_classes=0, global_pool='', **TINY[family]).eval()
        assert _spatial(model_name, unpooled(x))[-2:] == pool
    state_dict = model.state_dict()
    cfg = model.pretrained_cfg
    fresh = _create(model_name).state_dict()
    assert cfg['classifier'] + '.weight' in fresh
    assert cfg['first_conv'] + '.weight' in state_dict


@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_model_forward_intermediates(model_name):
    """timm: intermediates match feature_info; the final output equals forward_features."""
    model = _create(model_name).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    assert len(info.channels()) >= 3
    x = _input(model_name)
    final, intermediates = model.forward_intermediates(x, output_fmt='NCHW')
    assert len(intermediates) == len(info.channels())
    for c, r, y in zip(info.channels(), info.reduction(), intermediates):
        assert y.shape[1] == c
        assert tuple(y.shape[-2:]) == tuple(math.ceil(n / r) for n in x.shape[-2:])
    torch.testing.assert_close(final, model.forward_features(x))
    last = model.forward_intermediates(x, indices=1, stop_early=True, intermediates_only=True)
    torch.testing.assert_close(last[0], intermediates[-1])
    model.set_grad_checkpointing()
    torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_model_features_only(model_name):
    """features_only=True through timm's getter wrapper, default and explicit out_indices."""
    x = _input(model_name)
    for out_indices in (None, (1, 3)):
        kwargs = {} if out_indices is None else dict(out_indices=out_indices)
        model = _create(model_name, features_only=True, **kwargs).eval()
        outs = model(x)
        assert len(outs) == len(model.feature_info.channels())
        for c, r, y in zip(model.feature_info.channels(), model.feature_info.reduction(), outs):
            assert y.shape[1] == c and tuple(y.shape[-2:]) == tuple(math.ceil(n / r) for n in x.shape[-2:])
        if out_indices is not None:
            assert len(outs) == 2


@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_state_dict_round_trip(model_name):
    model = _create(model_name).eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    torch.manual_seed(1)
    other = _create(model_name).eval()
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer))
    x = _input(model_name)
    torch.testing.assert_close(other(x), model(x))


@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_no_weight_decay_and_groups(model_name):
    """SSM tensors (Δ, A, B, P) are in no_weight_decay and land in timm's no-decay group; group_matcher
    covers every parameter."""
    model = _create(model_name)
    names = model.no_weight_decay()
    ssm = {n for n, _ in model.named_parameters() if n.rsplit('.', 1)[-1] in ('inv_dt', 'A_real', 'A_imag', 'B', 'P')}
    assert ssm <= names
    assert bool(ssm) == _has_s4nd(model)
    groups = timm.optim.param_groups_weight_decay(model, 0.05, no_weight_decay_list=names)
    no_decay = {id(p) for g in groups if g['weight_decay'] == 0 for p in g['params']}
    assert all(id(p) in no_decay for n, p in model.named_parameters() if n in ssm)
    grouped = timm.models.group_parameters(model, model.group_matcher())
    assert sum(len(v) for v in grouped.values()) == len(list(model.named_parameters()))


def test_resolution_modes_on_built_model():
    """A model made at 224 runs at 160, 256, 288 and non-square; the mode is a constructor option and
    can be changed later; both modes agree at the base size."""
    narrow_convnext = dict(depths=(1, 1, 1, 1), dims=(8, 16, 16, 24), d_state=8, ls_init_value=1.0)
    for name, kwargs in (('s4nd_convnext_tiny', narrow_convnext),
                         ('s4nd_vit_tiny_patch16', dict(embed_dim=16, depth=2, d_state=8))):
        model = timm.create_model(name, num_classes=5, **kwargs).eval()
        assert model.s4nd_resolution == 'continuous'
        with torch.no_grad():
            base = torch.randn(1, 3, 224, 224)
            ref = model(base)
            for size in ((160, 160), (256, 256), (288, 288), (224, 288), (160, 256)):
                assert model(torch.randn(1, 3, *size)).shape == (1, 5), (name, size)
            x = torch.randn(1, 3, 160, 160)
            cont = model(x)
            model.s4nd_resolution = 'discrete'
            assert all(layer.resolution == 'discrete' for layer in model.s4nd_layers())
            torch.testing.assert_close(model(base), ref)
            assert not torch.allclose(model(x), cont)
        with pytest.raises(ValueError, match='continuous'):
            model.s4nd_resolution = 'nearest'
    model = timm.create_model('s4nd_convnext_tiny', s4nd_resolution='discrete', **TINY['convnext'])
    assert model.s4nd_resolution == 'discrete' and {layer.resolution for layer in model.s4nd_layers()} == {'discrete'}


def test_rate_override():
    """forward(x, rate=r) = the continuous rule at that size; the Conv2D twin ignores rate."""
    for name in ('s4nd_iso_cifar', 's4nd_convnext_tiny'):
        model = _create(name).eval()
        base = TINY[_family(name)]['img_size']
        x = torch.randn(1, 3, base // 2, base // 2)
        with torch.no_grad():
            torch.testing.assert_close(model(x, rate=2.0), model(x))
            assert not torch.allclose(model(x, rate=1.0), model(x))
    twin = _create('s4nd_iso_cifar_conv2d').eval()
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(twin(x, rate=4.0), twin(x))


def test_iso_bandlimit_and_kernel_args():
    model = _create('s4nd_iso_cifar', bandlimit=0.2, s4nd_mode='diag', s4nd_init='diag-lin')
    layers = list(model.s4nd_layers())
    assert layers and all(layer.mode == 'diag' and layer.kernel[0].bandlimit == 0.2 for layer in layers)
    assert model(_input('s4nd_iso_cifar')).shape == (1, 10)


def test_reference_stem_and_downsample():
    """The reference's S4ND stem and S4ND downsample, 2-D and 3-D; the stem conv is a full C_in -> stem_chs conv."""
    for name in ('s4nd_convnext_tiny', 's4nd_convnext_tiny_3d'):
        model = _create(name, stem_type='s4nd', downsample_type='s4nd', stem_chs=8).train()
        out = model(_input(name, batch=2))
        out.mean().backward()
        assert all(p.grad is not None for p in model.parameters())
        assert model.stem.conv.dim == 3 * 8 and model.stages[1].downsample.conv.dim == 16


def test_defaults_follow_the_reference():
    """DPLR kernels with the reference's inits (docs/design.md §6); the video time kernel: HiPPO, Δ = e^2."""
    convnext = _create('s4nd_convnext_tiny')
    vit = _create('s4nd_vit_tiny_patch16')
    iso = _create('s4nd_iso_cifar')
    assert {layer.mode for m in (convnext, vit, iso) for layer in m.s4nd_layers()} == {'dplr'}
    video = _create('s4nd_convnext_tiny_3d')
    time_kernel = video.stages[0].blocks[0].conv_dw.kernel[0]
    assert time_kernel.n_ssm == 16
    torch.testing.assert_close(time_kernel.inv_dt.detach(), torch.full_like(time_kernel.inv_dt, 2.0))
    assert vit.blocks[0].mixer.channels == 2 and len(vit.blocks[0].mixer.kernel) == 1


def test_clear_errors():
    with pytest.raises(RuntimeError, match='s4nd_convnext_tinyy'):
        timm.create_model('s4nd_convnext_tinyy')
    for name in ('s4nd_convnext_tiny', 's4nd_vit_tiny_patch16', 's4nd_iso_cifar'):
        with pytest.raises(ValueError, match='in_chans'):
            _create(name, in_chans=0)
    model = _create('s4nd_convnext_tiny')
    with pytest.raises(ValueError, match='in_chans=1'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='3d'):
        model(torch.randn(1, 3, 4, 64, 64))
    with pytest.raises(ValueError, match='too small'):
        model(torch.randn(1, 3, 16, 64))
    video = _create('s4nd_convnext_tiny_3d')
    with pytest.raises(ValueError, match=r'\(B, 3, T, H, W\)'):
        video(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match='in_chans=4'):
        _create('s4nd_iso_cifar')(torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match='stem_type'):
        _create('s4nd_convnext_tiny', stem_type='overlap')
    with pytest.raises(ValueError, match='s4nd_resolution'):
        _create('s4nd_vit_tiny_patch16', s4nd_resolution='nearest')
    with pytest.raises(ValueError, match='mode'):
        _create('s4nd_convnext_tiny', s4nd_mode='diag')  # 'fourier' needs the DPLR kernel
    with pytest.raises(ValueError, match='global_pool'):
        _create('s4nd_convnext_tiny', global_pool='token')
    with pytest.raises(ValueError, match='num_classes=0'):
        _create('s4nd_iso_cifar', global_pool='')


@pytest.mark.parametrize('family', ['s4nd_convnext_tiny', 's4nd_vit_tiny_patch16', 's4nd_iso_cifar'])
def test_negative_num_classes_refused(family):
    with pytest.raises(ValueError, match=r'num_classes must be an int >= 0.*got -1'):
        _create(family, num_classes=-1)
    model = _create(family)
    with pytest.raises(ValueError, match=r'num_classes must be an int >= 0.*got -3'):
        model.reset_classifier(-3)


def test_empty_batch_and_zero_length_axis_are_one_clear_error():
    """No 'math domain error' / FFT error from deep inside: the layer names the empty axis."""
    layer = S4ND(8, ndim=2, d_state=4, l_max=8)
    with pytest.raises(ValueError, match=r'no elements along B; every axis needs length >= 1'):
        layer(torch.randn(0, 8, 8, 8))
    with pytest.raises(ValueError, match=r'no elements along H, W'):
        layer(torch.randn(1, 8, 0, 0))
    last = S4ND(8, ndim=3, d_state=4, layout='channels_last', l_max=4)
    with pytest.raises(ValueError, match=r'no elements along T'):
        last(torch.randn(1, 0, 4, 4, 8))
    with pytest.raises(ValueError, match='no elements along B'):
        _create('s4nd_iso_cifar')(torch.randn(0, 3, 16, 16))


def test_torch_compile_no_graph_breaks():
    """torch.compile traces the S4ND models in one graph (checked with dynamo's explain and fullgraph=True)."""
    for name in ('s4nd_convnext_tiny', 's4nd_vit_tiny_patch16', 's4nd_iso_cifar'):
        model = _create(name).eval()
        x = _input(name)
        assert torch._dynamo.explain(model)(x).graph_break_count == 0, name
    torch._dynamo.reset()
    model = _create('s4nd_convnext_tiny').eval()
    x = _input('s4nd_convnext_tiny')
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.slow
def test_torch_compile_inductor():
    torch._dynamo.reset()
    model = _create('s4nd_convnext_tiny').eval()
    x = _input('s4nd_convnext_tiny', batch=2)
    torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-5)


def test_torch_export_matmul_backend():
    for name in ('s4nd_convnext_tiny', 's4nd_vit_tiny_patch16'):
        model = _create(name).eval()
        model.s4nd_backend = 'matmul'
        assert model.s4nd_backend == 'matmul'
        x = _input(name, batch=2)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), model(x))


def _onnx_check(model: nn.Module, x: torch.Tensor, path) -> None:
    ort = pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxscript')
    model.s4nd_backend = 'matmul'
    freeze_s4nd_kernels(model, x)
    batch = torch.export.Dim('batch', min=1, max=64)
    torch.onnx.export(model, (x,), str(path), dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for b in (1, 3):
        xb = torch.randn(b, *x.shape[1:])
        got = session.run(None, {session.get_inputs()[0].name: xb.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), model(xb).detach(), rtol=1e-4, atol=1e-4)


def test_onnx_export_tiny(tmp_path):
    """ONNX export with the matmul backend and frozen kernels, checked against onnxruntime on CPU (export at
    batch 2: an example batch of 1 is specialized by torch.export)."""
    _onnx_check(_create('s4nd_convnext_tiny').eval(), _input('s4nd_convnext_tiny', batch=2), tmp_path / 'm.onnx')


@pytest.mark.slow
def test_onnx_export_s4nd_convnext_tiny(tmp_path):
    """The registered s4nd_convnext_tiny (all widths and depths), at 64 px."""
    model = timm.create_model('s4nd_convnext_tiny', img_size=64).eval()
    _onnx_check(model, torch.randn(2, 3, 64, 64), tmp_path / 'tiny.onnx')


def test_frozen_kernels_refuse_other_sizes():
    model = _create('s4nd_iso_cifar').eval()
    freeze_s4nd_kernels(model, torch.randn(1, 3, 16, 16))
    with pytest.raises(RuntimeError, match='frozen'):
        model(torch.randn(1, 3, 8, 8))


def test_reference_checkpoint_refused():
    model = _create('s4nd_convnext_tiny')
    reference = {'model.' + k: v for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match='convert'):
        s4nd_timm.models.s4nd_convnext.checkpoint_filter_fn({'state_dict': reference}, model)


@pytest.mark.slow
@pytest.mark.parametrize('model_name', MODEL_NAMES)
def test_registered_size_forward_backward(model_name):
    family = _family(model_name)
    model = timm.create_model(model_name, num_classes=7, **SLOW_KWARGS[family]).train()
    out = model(torch.randn(2, *TINY_INPUT[family]))
    out.mean().backward()
    assert out.shape == (2, 7) and not torch.isnan(out).any()
    assert all(p.grad is not None for p in model.parameters())


def test_models_never_import_hub_train_or_convert():
    """Dependency arrows: kernels <- layers <- models <- (hub, convert, train); read from the models' imports."""
    import ast
    from pathlib import Path
    package = Path(s4nd_timm.models.__file__).parent
    for path in package.glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [('.' * node.level) + (node.module or '')]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(('s4nd_timm.hub', 's4nd_timm.train', 's4nd_timm.convert', '..')), \
                    (path.name, name)
