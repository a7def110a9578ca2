"""The rest of timm's model contract for every ``s4nd_*`` model (written here from what timm's own model tests check,
not copied): torch.fx feature extraction (timm's and torchvision's), ``features_only`` with ``feature_cls='fx'``,
the ViT block's ``attn_mask`` / ``is_causal`` arguments, pretrained cfgs that describe the model, the TorchScript
decision, and ViT-S4ND's LayerNorm eps against a float64 re-implementation of the reference block stack.

Small widths throughout (CPU CI); base / large registered sizes are checked through their cfg and tiny-width twins.
"""
import inspect
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_graph_node_names, get_notrace_functions, get_notrace_modules
from timm.models import FeatureGraphNet, create_feature_extractor
from timm.models.vision_transformer import Block

import s4nd_timm  # noqa: F401
from s4nd_timm.models.s4nd_vit import S4NDViTBlock

from _reference import direct_conv_nd, recurrence_kernel

MODEL_NAMES = timm.list_models('s4nd_*')
TAGS = timm.list_pretrained('s4nd_*')
_CONVNEXT = dict(depths=(1, 1, 2, 1), dims=(8, 16, 16, 24), d_state=4, ls_init_value=1.0)
WIDTHS = {  # tiny widths at the registered base sizes (the cfg's input size)
    'convnext': _CONVNEXT, 'convnext_3d': _CONVNEXT,
    'vit': dict(embed_dim=16, depth=2, d_state=4),
    'iso': dict(d_model=8, depth=2, d_state=4),
}
SMALL = {  # and small inputs for the tracing checks: (base-size kwargs, input (C, *spatial))
    'convnext': (dict(img_size=64), (3, 64, 64)),
    'convnext_3d': (dict(img_size=64, num_frames=4), (3, 4, 64, 64)),
    'vit': (dict(img_size=32), (3, 32, 32)),
    'iso': (dict(img_size=8), (3, 8, 8)),
}


def _family(name: str) -> str:
    if name.startswith('s4nd_convnext'):
        return 'convnext_3d' if name.split('.')[0].endswith('_3d') else 'convnext'
    return 'vit' if name.startswith('s4nd_vit') else 'iso'


def _small(name: str, **kwargs):
    kw, shape = SMALL[_family(name)]
    torch.manual_seed(0)
    model = timm.create_model(name, **dict(WIDTHS[_family(name)], **kw, **kwargs))
    return model, torch.randn(2, *shape)


def _feature_modules(model: nn.Module):
    return [info['module'] for info in model.feature_info]


# ------------------------------------------------------------------------------------------------------- torch.fx
@pytest.mark.parametrize('name', MODEL_NAMES)
def test_fx_feature_extraction_equals_eager_and_backpropagates(name):
    model, x = _small(name, drop_path_rate=0.1)
    model.eval()
    _, eval_nodes = get_graph_node_names(model)
    feature = _feature_modules(model)[1]  # a module name: the output of its last node (torchvision's rule)
    extractor = create_feature_extractor(model, return_nodes={feature: 'feature', eval_nodes[-1]: 'out'})
    seen = {}
    hook = model.get_submodule(feature).register_forward_hook(lambda m, i, o: seen.setdefault('feature', o))
    with torch.no_grad():
        want = model(x)
        out = extractor(x)  # both without gradients: the same convolution path ('auto' picks by that too)
    hook.remove()
    torch.testing.assert_close(out['out'], want, rtol=0, atol=0)
    torch.testing.assert_close(out['feature'], seen['feature'], rtol=0, atol=0)
    # train mode, through the traced graph: every parameter up to the output gets a gradient
    extractor = create_feature_extractor(model.train(), return_nodes={eval_nodes[-1]: 'out'})
    extractor(x)['out'].square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_fx_through_torchvision_with_timms_leaf_registry():
    """torchvision's create_feature_extractor, given the tracer settings timm's wrapper passes (its registry)."""
    from torchvision.models.feature_extraction import create_feature_extractor as tv_extractor
    model, x = _small('s4nd_convnext_micro', stem_type='s4nd', downsample_type='s4nd', stem_chs=4)
    model.eval()
    extractor = tv_extractor(model, return_nodes={'stages.3': 'f'}, tracer_kwargs=dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions()))
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)['f'], model.forward_features(x), rtol=0, atol=0)


def test_fx_graph_keeps_the_input_checks():
    """The checks are leaves of the graph, run on the real input: a wrong input is still refused with its message."""
    for name, bad, match in (
            ('s4nd_convnext_micro', torch.randn(1, 3, 8, 8), 'too small'),
            ('s4nd_convnext_tiny_3d', torch.randn(1, 3, 64, 64), r'\(B, 3, T, H, W\)'),
            ('s4nd_iso_cifar_small', torch.randn(1, 4, 8, 8), 'in_chans=4'),
            ('s4nd_iso_cifar_small', torch.randn(0, 3, 8, 8), 'no elements along B')):
        model, _ = _small(name)
        _, nodes = get_graph_node_names(model.eval())
        extractor = create_feature_extractor(model, return_nodes=[nodes[-1]])
        with pytest.raises(ValueError, match=match):
            extractor(bad)
    model, x = _small('s4nd_vit_tiny_patch16')
    if 'attn_mask' in inspect.signature(model.forward).parameters:  # timm >= 1.0.30: the mask is a graph input
        _, nodes = get_graph_node_names(model.eval())
        extractor = create_feature_extractor(model, return_nodes=[nodes[-1]])
        assert extractor(x)[nodes[-1]].shape == (2, model.num_classes)
        with pytest.raises(ValueError, match='no attention to mask'):
            extractor(x, torch.zeros(16, 16, dtype=torch.bool))


@pytest.mark.parametrize('name', MODEL_NAMES)
def test_features_only_fx_matches_the_modules_outputs(name):
    kw, shape = SMALL[_family(name)]
    x = torch.randn(1, *shape)
    if _family(name) in ('vit', 'iso'):  # every block (2 here) rather than the registered default indices
        kw = dict(kw, out_indices=(0, 1))
    feats = timm.create_model(name, features_only=True, feature_cls='fx', **dict(WIDTHS[_family(name)], **kw))
    assert isinstance(feats, FeatureGraphNet)
    outs = feats(x)
    assert [o.shape[-1 if _family(name) in ('vit', 'iso') else 1] for o in outs] == feats.feature_info.channels()
    model, _ = _small(name)
    model.eval()
    indices = tuple(range(len(model.feature_info)))[:len(outs)]
    seen = []
    hooks = [model.get_submodule(m).register_forward_hook(lambda mod, i, o: seen.append(o))
             for m in _feature_modules(model)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    with torch.no_grad():
        got = FeatureGraphNet(model, out_indices=indices)(x)
    assert len(got) == len(seen)
    for a, b in zip(got, seen):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- ViT block arguments
def test_vit_block_signature_is_timms_block_signature():
    ours = inspect.signature(S4NDViTBlock.forward).parameters
    theirs = inspect.signature(Block.forward).parameters
    assert [(p.name, p.default) for p in ours.values()] == [(p.name, p.default) for p in theirs.values()]


def test_vit_block_accepts_none_and_refuses_a_real_mask():
    model, x = _small('s4nd_vit_tiny_patch16')
    model.eval()
    block = model.blocks[0]
    tokens = torch.randn(2, 4, 16)
    with torch.no_grad():
        plain = block(tokens)
        torch.testing.assert_close(block(tokens, attn_mask=None, is_causal=False), plain, rtol=0, atol=0)
        with pytest.raises(ValueError, match='attn_mask=None, is_causal=False'):
            block(tokens, attn_mask=torch.zeros(4, 4, dtype=torch.bool))
        with pytest.raises(ValueError, match='is_causal=True'):
            block(tokens, is_causal=True)
        if 'attn_mask' in inspect.signature(model.forward).parameters:  # timm >= 1.0.30 passes it to every block
            torch.testing.assert_close(model(x, attn_mask=None), model(x), rtol=0, atol=0)
            with pytest.raises(ValueError, match='no attention to mask'):
                model(x, attn_mask=torch.zeros(4, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------ pretrained cfgs
@pytest.mark.parametrize('tag', TAGS)
def test_cfg_describes_the_model(tag):
    """An input built from the cfg runs; pool_size is the final feature map at input_size; first_conv / classifier
    name real modules; normalization, crop and test size fit the input; timm's data config and transform carry it."""
    family = _family(tag)
    model = timm.create_model(tag, **WIDTHS[family]).eval()
    cfg = model.pretrained_cfg
    input_size, test_size = tuple(cfg['input_size']), tuple(cfg['test_input_size'])
    assert len(input_size) == (4 if family == 'convnext_3d' else 3) and len(test_size) == len(input_size)
    assert input_size[0] == model.in_chans == len(cfg['mean']) == len(cfg['std'])
    assert 0 < cfg['crop_pct'] <= 1
    modules = dict(model.named_modules())
    assert isinstance(modules[cfg['first_conv']], (nn.Conv2d, nn.Conv3d))
    assert modules[cfg['first_conv']].in_channels == input_size[0]
    assert isinstance(modules[cfg['classifier']], nn.Linear)
    assert modules[cfg['classifier']].out_features == cfg['num_classes'] == model.num_classes
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, *input_size))
        assert model.forward_head(feats).shape == (1, cfg['num_classes'])
    if family == 'vit':  # token output: no pool size (timm's non-spatial models); N = patches at input_size
        assert cfg['pool_size'] is None and feats.shape[1] == math.prod(n // 16 for n in input_size[1:])
    else:
        spatial = feats.shape[1:-1] if family == 'iso' else feats.shape[2:]  # iso: channels-last (NHWC)
        assert tuple(cfg['pool_size']) == tuple(spatial)
    data = timm.data.resolve_data_config({}, model=model)
    assert data['input_size'] == input_size and data['crop_pct'] == cfg['crop_pct']
    image = timm.data.create_transform(**data)(torch.rand(3, 40, 48))  # one frame of a clip for video
    assert tuple(image.shape) == (input_size[0], *input_size[-2:])


def test_video_cfg_holds_the_frames():
    """(C, T, H, W): what s4nd_convnext_tiny_3d takes at its base size, T = num_frames = 30 (15 after the stem)."""
    video = timm.models.get_pretrained_cfg('s4nd_convnext_tiny_3d')
    assert tuple(video.input_size) == (3, 30, 224, 224) and tuple(video.pool_size) == (15, 7, 7)


# -------------------------------------------------------------------------------------------------- TorchScript
@pytest.mark.parametrize('name', ['s4nd_convnext_micro', 's4nd_vit_tiny_patch16', 's4nd_iso_cifar_small',
                                  's4nd_iso_cifar_conv2d_small'])
def test_torchscript_is_refused_with_the_export_paths(name):
    model, _ = _small(name)
    with pytest.raises(RuntimeError, match=r'TorchScript is not supported.*torch\.export.*ONNX'):
        torch.jit.script(model)


def test_torchscript_is_refused_for_the_layer_too():
    from s4nd_timm.layers import S4ND
    with pytest.raises(RuntimeError, match=r'TorchScript is not supported.*torch\.export.*ONNX'):
        torch.jit.script(S4ND(4, ndim=2, d_state=4, l_max=8))


@pytest.mark.parametrize('name', ['s4nd_convnext_micro', 's4nd_vit_tiny_patch16', 's4nd_iso_cifar_small'])
def test_channels_last_model_runs(name):
    """model.to(memory_format=torch.channels_last) (timm's --channels-last) restrides the 4-D SSM tensors."""
    model, x = _small(name)
    model.eval()
    with torch.no_grad():
        want = model(x)
        got = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ ViT-S4ND against the reference
def _reference_vit_state_dict(embed: int, depth: int, patch: int, n_tokens: int, classes: int, m: int = 2):
    """A synthetic reference-format ViT-S4ND state dict (diagonal kernels, HEAD parameter names), float64."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=0.1):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    sd = {'patch_embed.proj.weight': rand(embed, 3, patch, patch), 'patch_embed.proj.bias': rand(embed)}
    for i in range(depth):
        s, f = f'blocks.{2 * i}.', f'blocks.{2 * i + 1}.'
        for b in (s, f):
            sd[b + 'norm.norm.weight'], sd[b + 'norm.norm.bias'] = 1 + rand(embed), rand(embed)
        sd[s + 'layer.D'] = rand(2, embed, scale=1.0)
        for k in (0, 1):  # the reference builds a second, unused axis kernel
            p = f'{s}layer.kernel.{k}.'
            sd[p + 'inv_dt'] = torch.empty(embed, 1, dtype=torch.float64).uniform_(
                math.log(0.01), math.log(0.1), generator=g)
            sd[p + 'A_real'] = math.log(0.5) + rand(1, m)
            sd[p + 'A_imag'] = math.pi * torch.arange(m, dtype=torch.float64)[None] + rand(1, m)
            sd[p + 'B'], sd[p + 'C'] = rand(1, 1, m, 2, scale=1.0), rand(4, embed, m, 2, scale=1.0)
        sd[s + 'layer.output_linear.0.weight'], sd[s + 'layer.output_linear.0.bias'] = rand(2 * embed, 2 * embed), \
            rand(2 * embed)
        sd[f + 'layer.ff.0.0.weight'], sd[f + 'layer.ff.0.0.bias'] = rand(4 * embed, embed), rand(4 * embed)
        sd[f + 'layer.ff.2.weight'], sd[f + 'layer.ff.2.bias'] = rand(embed, 4 * embed), rand(embed)
    sd['norm.norm.weight'], sd['norm.norm.bias'] = 1 + rand(embed), rand(embed)
    sd['head.weight'], sd['head.bias'] = rand(classes, embed), rand(classes)
    return sd


def _reference_vit_forward(sd, x: torch.Tensor, depth: int, patch: int) -> torch.Tensor:
    """The reference ViT-S4ND forward written from its definition (float64): patch conv -> row-major tokens ->
    depth x [x + S4ND(LN(x)); x + FF(LN(x))] -> LN -> mean over tokens -> head; LayerNorm eps 1e-5.
    S4ND: bidirectional diagonal (ZOH) kernels, 2 channels, y = K * u + D u -> GELU -> Linear -> GLU."""
    def ln(t, p):
        return F.layer_norm(t, t.shape[-1:], sd[p + 'weight'], sd[p + 'bias'], eps=1e-5)

    t = F.conv2d(x, sd['patch_embed.proj.weight'], sd['patch_embed.proj.bias'], stride=patch)
    t = t.flatten(2).transpose(1, 2)  # (B, N, D)
    n = t.shape[1]
    for i in range(depth):
        s, f = f'blocks.{2 * i}.', f'blocks.{2 * i + 1}.'
        k = f'{s}layer.kernel.0.'
        a = torch.complex(-sd[k + 'A_real'].exp(), -sd[k + 'A_imag']).expand(t.shape[-1], -1)
        b = torch.view_as_complex(sd[k + 'B'][0].contiguous()).expand(t.shape[-1], -1)
        c = torch.view_as_complex(sd[k + 'C'].contiguous())
        taps = recurrence_kernel(a, b, c, sd[k + 'inv_dt'].exp(), n, 'zoh')  # (4, D, n)
        two_sided = torch.zeros(2, t.shape[-1], 2 * n - 1, dtype=torch.float64)
        two_sided[:, :, n - 1:] = taps[:2]                          # offsets 0 .. n-1
        two_sided[:, :, :n - 1] = taps[2:, :, :n - 1].flip(-1)      # offset -m: backward tap m-1
        u = ln(t, s + 'norm.norm.').transpose(1, 2)                 # (B, D, N)
        y = F.gelu(direct_conv_nd(u, [two_sided], sd[s + 'layer.D'])).transpose(1, 2)
        y = F.glu(F.linear(y, sd[s + 'layer.output_linear.0.weight'], sd[s + 'layer.output_linear.0.bias']), -1)
        t = t + y
        h = F.gelu(F.linear(ln(t, f + 'norm.norm.'), sd[f + 'layer.ff.0.0.weight'], sd[f + 'layer.ff.0.0.bias']))
        t = t + F.linear(h, sd[f + 'layer.ff.2.weight'], sd[f + 'layer.ff.2.bias'])
    return F.linear(ln(t, 'norm.norm.').mean(1), sd['head.weight'], sd['head.bias'])


def _to_model_keys(sd, depth: int):
    """Reference names -> this model's (the table in s4nd_timm/models/s4nd_vit.py); the dead kernel.1 dropped."""
    out = {k: v for k, v in sd.items() if k.startswith(('patch_embed.', 'head.'))}
    out['norm.weight'], out['norm.bias'] = sd['norm.norm.weight'], sd['norm.norm.bias']
    for i in range(depth):
        s, f, o = f'blocks.{2 * i}.', f'blocks.{2 * i + 1}.', f'blocks.{i}.'
        for end in ('weight', 'bias'):
            out[o + 'norm1.' + end], out[o + 'norm2.' + end] = sd[s + 'norm.norm.' + end], sd[f + 'norm.norm.' + end]
            out[o + 'mixer.output_linear.' + end] = sd[s + 'layer.output_linear.0.' + end]
            out[o + 'mlp.fc1.' + end], out[o + 'mlp.fc2.' + end] = sd[f + 'layer.ff.0.0.' + end], \
                sd[f + 'layer.ff.2.' + end]
        out[o + 'mixer.D'] = sd[s + 'layer.D']
        for p in ('inv_dt', 'A_real', 'A_imag', 'B', 'C'):
            out[f'{o}mixer.kernel.0.{p}'] = sd[f'{s}layer.kernel.0.{p}']
    return out


def test_vit_layernorm_eps_is_the_references():
    for name in [n for n in MODEL_NAMES if n.startswith('s4nd_vit')]:
        model, _ = _small(name)
        eps = {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}
        assert eps == {1e-5}, (name, eps)


def test_vit_matches_a_float64_reimplementation_of_the_reference_block_stack():
    """eps 1e-6 instead of the reference's 1e-5 differs by ~1e-6 relative here: far outside the tolerance."""
    embed, depth, patch, img, classes = 16, 2, 4, 16, 5
    sd = _reference_vit_state_dict(embed, depth, patch, (img // patch) ** 2, classes)
    model = timm.create_model(
        's4nd_vit_tiny_patch16', patch_size=patch, img_size=img, embed_dim=embed, depth=depth, num_classes=classes,
        d_state=4, s4nd_mode='diag', s4nd_init='diag-lin').double().eval()
    model.load_state_dict(_to_model_keys(sd, depth))
    x = torch.randn(2, 3, img, img, dtype=torch.float64)
    want = _reference_vit_forward(sd, x, depth, patch)
    with torch.no_grad():
        for backend in ('fft', 'matmul'):
            model.s4nd_backend = backend
            torch.testing.assert_close(model(x), want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ timm's scripts
@pytest.mark.skipif(not os.environ.get('TIMM_SCRIPTS'), reason="timm's train.py / validate.py / benchmark.py are not "
                    "in the timm wheel; set TIMM_SCRIPTS to a pytorch-image-models checkout to run this")
def test_timms_scripts_run_s4nd_models(tmp_path):
    """train.py with --device-modules s4nd_timm; validate.py and benchmark.py through runpy after import s4nd_timm
    (the routes train/README.md gives), on a 2-class folder of 16 px images."""
    from PIL import Image
    scripts = Path(os.environ['TIMM_SCRIPTS'])
    g = torch.Generator().manual_seed(0)
    for split in ('train', 'validation'):
        for label in ('a', 'b'):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(4):
                pixels = torch.randint(0, 256, (16, 16, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / split / label / f'{i}.png')
    model = ['--model', 's4nd_iso_cifar_small', '--model-kwargs', 'd_model=8', 'depth=1', 'd_state=4', 'img_size=16',
             '--img-size', '16', '--device', 'cpu']
    env = dict(os.environ, OMP_NUM_THREADS='1')

    def run(script, *args):
        code = f"import runpy, sys, s4nd_timm; sys.argv[0] = {str(scripts / script)!r}; " \
               f"runpy.run_path(sys.argv[0], run_name='__main__')"
        done = subprocess.run([sys.executable, '-c', code, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    train = subprocess.run(
        [sys.executable, str(scripts / 'train.py'), str(tmp_path), '--device-modules', 's4nd_timm', *model,
         '--num-classes', '2', '-b', '4', '--epochs', '1', '-j', '0', '--val-split', 'validation', '--output',
         str(tmp_path / 'out'), '--experiment', 'run'], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600)
    assert train.returncode == 0, train.stderr[-2000:]
    checkpoint = tmp_path / 'out' / 'run' / 'model_best.pth.tar'
    assert checkpoint.is_file()
    out = run('validate.py', str(tmp_path), '--split', 'validation', *model, '--num-classes', '2', '-b', '4', '-j',
              '0', '--checkpoint', str(checkpoint))
    assert '"top1"' in out
    out = run('benchmark.py', *model, '-b', '2', '--bench', 'inference', '--num-bench-iter', '10',
              '--num-warm-iter', '1')
    assert 'infer_samples_per_sec' in out
