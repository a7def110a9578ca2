"""s4nd-convert on synthetic reference checkpoints built from the reference's key names and shapes (docs/design.md §8).

The reference layouts below are written out here from docs/design.md §8 (names, shapes, l_kernel semantics), not taken
from the converter's tables; values are random but in the ranges an S4ND kernel uses.
"""
import json
import math
from pathlib import Path

import pytest
import torch

import timm
import s4nd_timm  # noqa: F401
from s4nd_timm.convert import ConversionError, convert_checkpoint, convert_state_dict, load_checkpoint, main
from s4nd_timm.layers import S4ND

M = 2  # d_state 4


def _kernel(prefix, h, ck, l_kernel, dplr=True, v3=False, s=1):
    """One reference axis kernel (docs/design.md §8): HEAD names, or the v3 names under '<prefix>kernel.'."""
    inv_dt = torch.empty(h, 1).uniform_(math.log(0.1), 0.0)
    a_real = math.log(0.5) + 0.1 * torch.randn(s, M)
    a_imag = math.pi * torch.arange(M, dtype=torch.float32).expand(s, M) + 0.1
    b, c = torch.randn(1, s, M, 2), torch.randn(ck, h, M, 2)
    p = 0.3 * torch.randn(1, s, M, 2)
    if v3:
        sd = {'log_dt': inv_dt[:, 0], 'inv_w_real': a_real, 'w_imag': -a_imag, 'B': b, 'C': c}
        if dplr:
            sd.update(P=p, L=torch.tensor(l_kernel))
        return {f'{prefix}kernel.{k}': v for k, v in sd.items()}
    sd = {'inv_dt': inv_dt, 'A_real': a_real, 'A_imag': a_imag, 'B': b, 'C': c}
    if dplr:
        sd.update(P=p, l_kernel=torch.tensor(l_kernel))
    return {f'{prefix}{k}': v for k, v in sd.items()}


def _s4nd(prefix, h, l_kernels, channels=1, ck=None, out_linear=None, **kw):
    """Reference S4ND module: D (channels, H), kernel.i.* per axis, output_linear.0.* if not linear."""
    sd = {f'{prefix}D': torch.randn(channels, h)}
    for i, lk in enumerate(l_kernels):
        sd.update(_kernel(f'{prefix}kernel.{i}.', h, ck or 2 * channels, lk, **kw))
    if out_linear:
        sd[f'{prefix}output_linear.0.weight'] = 0.1 * torch.randn(out_linear, channels * h)
        sd[f'{prefix}output_linear.0.bias'] = torch.zeros(out_linear)
    return sd


def _ln(prefix, d):
    return {f'{prefix}weight': 1 + 0.1 * torch.randn(d), f'{prefix}bias': 0.1 * torch.randn(d)}


def _lin(prefix, o, i, *kernel):
    return {f'{prefix}weight': 0.1 * torch.randn(o, i, *kernel), f'{prefix}bias': 0.1 * torch.randn(o)}


def ref_convnext(dims=(8, 16), depths=(1, 2), img=32, stem_chs=4, c_in=3, classes=5, video_frames=None, **kw):
    """ConvNeXt-S4ND-T layout: S4ND stem + S4ND downsample (2-D), or patch stem + conv downsample (3-D, docs/design.md §7.2)."""
    sd = {}
    size = img // 4
    if video_frames is None:
        sd.update(_s4nd('stem.stem.', c_in, (16, 16), ck=2 * stem_chs, **kw))
        sd.update(_lin('stem.post_stem.1.', 2 * dims[0], stem_chs))
        sd.update(_ln('stem.post_stem.3.', dims[0]))
    else:
        sd.update(_lin('stem.stem.0.', dims[0], c_in, 2, 4, 4))
        sd.update(_ln('stem.stem.1.', dims[0]))
    for s, (depth, d) in enumerate(zip(depths, dims)):
        if s:
            sd.update(_ln(f'stages.{s}.norm_layer.', dims[s - 1]))
            if video_frames is None:
                sd.update(_s4nd(f'stages.{s}.downsample.s4conv.', dims[s - 1], (size, size), **kw))
                sd.update(_lin(f'stages.{s}.downsample.fc.', 2 * d, dims[s - 1]))
            else:
                sd.update(_lin(f'stages.{s}.downsample.conv.', d, dims[s - 1], 1, 2, 2))
            size //= 2
        for j in range(depth):
            p = f'stages.{s}.blocks.{j}.'
            axes = (size, size) if video_frames is None else (video_frames // 2, size, size)
            sd.update(_s4nd(p + 'conv_dw.', d, axes, **kw))
            sd.update(_ln(p + 'norm.', d))
            sd.update(_lin(p + 'mlp.fc1.', 4 * d, d))
            sd.update(_lin(p + 'mlp.fc2.', d, 4 * d))
            sd[p + 'gamma'] = 0.5 + torch.rand(d)
    sd.update(_ln('head.norm.', dims[-1]))
    sd.update(_lin('head.fc.', classes, dims[-1]))
    return sd


def ref_vit(embed=16, depth=2, img=32, classes=5, **kw):
    """ViT-S4ND layout (docs/design.md §8): 2 x depth reference blocks, S4ND with a dead kernel.1, channels 2."""
    sd = _lin('patch_embed.proj.', embed, 3, 16, 16)
    tokens = (img // 16) ** 2
    for i in range(depth):
        sd.update(_ln(f'blocks.{2 * i}.norm.norm.', embed))
        sd.update(_s4nd(f'blocks.{2 * i}.layer.', embed, (tokens, tokens), channels=2, out_linear=2 * embed, **kw))
        sd.update(_ln(f'blocks.{2 * i + 1}.norm.norm.', embed))
        sd.update(_lin(f'blocks.{2 * i + 1}.layer.ff.0.0.', 4 * embed, embed))
        sd.update(_lin(f'blocks.{2 * i + 1}.layer.ff.2.', embed, 4 * embed))
    sd.update(_ln('norm.norm.', embed))
    sd.update(_lin('head.', classes, embed))
    return sd


def ref_iso(d=8, depth=2, img=8, classes=10, **kw):
    """Isotropic CIFAR layout (docs/design.md §8): encoder.0, layers.i.{norm,layer}, norm, decoder.0.output_transform."""
    sd = {'encoder.0.weight': 0.1 * torch.randn(d, 3), 'encoder.0.bias': torch.zeros(d)}
    for i in range(depth):
        sd.update({f'model.{k}': v for k, v in _ln(f'layers.{i}.norm.norm.', d).items()})
        layer = _s4nd(f'layers.{i}.layer.', d, (img, img), out_linear=2 * d, **kw)
        sd.update({f'model.{k}': v for k, v in layer.items()})
    sd.update({f'model.{k}': v for k, v in _ln('norm.norm.', d).items()})
    sd.update(_lin('decoder.0.output_transform.', classes, d))
    return sd


def lightning(sd, prefix='model.', **extra):
    """A PyTorch Lightning checkpoint dict around a reference state dict."""
    keys = {k if k.startswith(('model.', 'encoder.', 'decoder.')) else prefix + k: v for k, v in sd.items()}
    return dict({'epoch': 3, 'global_step': 30, 'pytorch-lightning_version': '1.5.10', 'state_dict': keys,
                 'hyper_parameters': {'model': {'_name_': 's4nd'}, 'seed': 0}}, **extra)


def _loaded(folder):
    return timm.create_model(f'local-dir:{folder}', pretrained=True).eval()


def test_convnext_2d_round_trip_every_tensor_lands_where_the_spec_says(tmp_path):
    ref = ref_convnext()
    ckpt = tmp_path / 'convnext.ckpt'
    torch.save(lightning(ref), ckpt)
    out = tmp_path / 'out'
    assert main([str(ckpt), str(out), '--tag', 'in1k']) == 0
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    model = _loaded(out)
    sd = model.state_dict()
    cfg = json.loads((out / 'config.json').read_text())
    args = cfg['model_args']
    assert cfg['architecture'] == 's4nd_convnext_tiny' and cfg['pretrained_cfg']['tag'] == 'in1k'
    assert (args['stem_type'], args['downsample_type'], args['s4nd_mode']) == ('s4nd', 's4nd', 'dplr')
    assert args['d_state'] == 4
    assert (args['depths'], args['dims'], args['num_classes'], args['stem_chs']) == ([1, 2], [8, 16], 5, 4)
    assert args['img_size'] in (32, [32, 32])  # timm >= 1.0.31 records the size as (H, W)
    renames = {'stem.post_stem.1.': 'stem.proj.', 'stem.post_stem.3.': 'stem.norm.',
               '.norm_layer.': '.downsample.norm.',
               '.downsample.s4conv.': '.downsample.conv.', '.downsample.fc.': '.downsample.proj.'}
    for key, value in ref.items():
        if key.startswith('stem.stem.'):
            continue
        dest = key
        for a, b in renames.items():
            dest = dest.replace(a, b)
        assert torch.equal(sd[dest], value.to(sd[dest].dtype)), key
    # the stem: one depthwise kernel per (out o, in i) pair = the reference's kernel channel pair (o, S + o) on input i
    for axis in (0, 1):
        p, q = f'stem.stem.kernel.{axis}.', f'stem.conv.kernel.{axis}.'
        assert torch.equal(sd[q + 'inv_dt'], ref[p + 'inv_dt'].repeat(4, 1))
        assert torch.equal(sd[q + 'C'][0, 3 * 2 + 1], ref[p + 'C'][2, 1])  # forward, o=2, i=1
        assert torch.equal(sd[q + 'C'][1, 3 * 2 + 1], ref[p + 'C'][4 + 2, 1])  # backward half
    assert torch.equal(sd['stem.conv.D'], torch.zeros(1, 12))
    per_input = S4ND(3, ndim=2, d_state=4, l_max=16, mode='dplr', init='fourier', activation=None)
    o = 3
    per_input.load_state_dict({'D': ref['stem.stem.D'], **{
        k[len('stem.stem.'):]: (v[[o, 4 + o]] if k.endswith('.C') else v)
        for k, v in ref.items() if k.startswith('stem.stem.kernel.')}})
    want = per_input.axis_kernels((16, 16))
    got = model.stem.conv.axis_kernels((16, 16))
    for w, g in zip(want, got):
        torch.testing.assert_close(g[:, 3 * o:3 * o + 3], w, rtol=1e-6, atol=1e-7)
    # the folder reproduces the converted model exactly, and the card says where the weights come from
    converted, _ = convert_state_dict(ref, tag='in1k')
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), converted(x), rtol=0, atol=0)
    card = (out / 'README.md').read_text()
    assert 'Converted with `s4nd-convert`' in card and 'convnext.ckpt' in card and '{{' not in card


@pytest.mark.parametrize('v3', [False, True], ids=['head', 'v3'])
def test_vit_maps_blocks_drops_the_dead_kernel_and_reads_v3_names(v3):
    torch.manual_seed(0)
    ref = ref_vit(v3=v3)
    model, report = convert_state_dict(ref)
    sd = model.state_dict()
    assert report.family == 'vit' and report.layout == ('v3' if v3 else 'head') and report.ok
    assert report.model_kwargs['img_size'] == 32 and report.model_kwargs['s4nd_channels'] == 2
    assert sorted(k for k, _ in report.dropped) == sorted(k for k in ref if '.kernel.1.' in k)
    k = 'blocks.2.layer.kernel.0.' + ('kernel.' if v3 else '')
    assert torch.equal(sd['blocks.1.mixer.kernel.0.inv_dt'][:, 0], ref[k + ('log_dt' if v3 else 'inv_dt')].flatten())
    a_imag = -ref[k + 'w_imag'] if v3 else ref[k + 'A_imag']
    assert torch.equal(sd['blocks.1.mixer.kernel.0.A_imag'], a_imag)
    assert int(sd['blocks.1.mixer.kernel.0.l_kernel']) == 4
    assert torch.equal(sd['blocks.1.mixer.output_linear.weight'], ref['blocks.2.layer.output_linear.0.weight'])
    assert torch.equal(sd['blocks.1.norm1.weight'], ref['blocks.2.norm.norm.weight'])
    assert torch.equal(sd['blocks.1.norm2.weight'], ref['blocks.3.norm.norm.weight'])
    assert torch.equal(sd['blocks.1.mlp.fc1.weight'], ref['blocks.3.layer.ff.0.0.weight'])
    assert torch.equal(sd['blocks.0.mlp.fc2.bias'], ref['blocks.1.layer.ff.2.bias'])
    assert torch.equal(sd['norm.weight'], ref['norm.norm.weight'])
    if v3:  # the same tensors under HEAD names convert to the same model
        torch.manual_seed(0)
        head, _ = convert_state_dict(ref_vit(v3=False))
        for name, value in head.state_dict().items():
            assert torch.equal(sd[name], value), name


def test_isotropic_raw_c_checkpoint_gets_c_tilde_built_on_load():
    ref = ref_iso()
    for k in [k for k in ref if k.endswith('l_kernel')]:
        ref[k] = torch.tensor(0)  # a reference module never run forward: C is the raw C
    sd_ref = {k[len('model.'):] if k.startswith('model.') else k: v for k, v in ref.items()}
    model, report = convert_state_dict(sd_ref, model_kwargs={'img_size': 8})
    assert report.model_name == 's4nd_iso_cifar' and report.model_kwargs['d_model'] == 8
    assert any('base size is not in the checkpoint' in n for n in report.notes)
    sd = model.state_dict()
    assert torch.equal(sd['stem.weight'], ref['encoder.0.weight'][:, :, None, None])
    assert torch.equal(sd['head.weight'], ref['decoder.0.output_transform.weight'])
    assert int(sd['blocks.1.mixer.kernel.0.l_kernel']) == 8
    assert not torch.equal(sd['blocks.1.mixer.kernel.0.C'], ref['model.layers.1.layer.kernel.0.C'])
    # C̃ is what the layer itself builds from the raw C for l_max = 8
    fresh = timm.create_model('s4nd_iso_cifar', **report.model_kwargs)
    fresh.load_state_dict({k: v for k, v in model.state_dict().items() if '.C' not in k and 'l_kernel' not in k},
                          strict=False)
    fresh.blocks[1].mixer.kernel[0].set_raw_c(ref['model.layers.1.layer.kernel.0.C'])
    torch.testing.assert_close(sd['blocks.1.mixer.kernel.0.C'], fresh.state_dict()['blocks.1.mixer.kernel.0.C'])


def test_convnext_3d_patch_stem_conv_downsample(tmp_path):
    ref = ref_convnext(video_frames=4)
    ckpt = tmp_path / 'video.pt'
    torch.save(ref, ckpt)  # a plain state dict
    out, report = convert_checkpoint(ckpt, tmp_path / 'out')
    assert report.model_name == 's4nd_convnext_tiny_3d' and report.ok
    kw = report.model_kwargs
    assert (kw['num_frames'], kw['img_size'], kw['stem_type'], kw['downsample_type'], kw['temporal_patch_size']) == \
        (4, 32, 'patch', 'conv', 2)
    model = _loaded(out)
    sd = model.state_dict()
    assert torch.equal(sd['stem.conv.weight'], ref['stem.stem.0.weight'])
    assert torch.equal(sd['stages.1.downsample.conv.weight'], ref['stages.1.downsample.conv.weight'])
    assert torch.equal(sd['stages.1.blocks.1.conv_dw.kernel.2.C'], ref['stages.1.blocks.1.conv_dw.kernel.2.C'])
    # the model keeps one (A, B, P) set per feature on the time axis: the reference's single set, tiled (exact)
    assert torch.equal(sd['stages.1.blocks.0.conv_dw.kernel.0.A_real'],
                       ref['stages.1.blocks.0.conv_dw.kernel.0.A_real'].expand(16, -1))
    assert any('n_ssm 1 -> ' in n for n in report.notes)
    assert model(torch.randn(1, 3, 4, 32, 32)).shape == (1, 5)


def _write(tmp_path, sd, name='ref.ckpt'):
    path = tmp_path / name
    torch.save(lightning(sd), path)
    return path


@pytest.mark.parametrize('case', ['missing', 'extra', 'shape'])
def test_each_problem_is_reported_by_name_and_nothing_is_written(tmp_path, capsys, case):
    ref = ref_vit(depth=1)
    if case == 'missing':
        del ref['blocks.1.layer.ff.2.bias']
        expect = ['missing: 1', 'blocks.0.mlp.fc2.bias']
    elif case == 'extra':
        ref['blocks.0.layer.extra_scale'] = torch.ones(3)
        expect = ['unmatched: 1', 'model.blocks.0.layer.extra_scale']
    else:
        ref['head.weight'] = torch.randn(5, 15)
        expect = ['wrong shape: 1', 'model.head.weight (5, 15) -> head.weight expects (5, 16)']
    ckpt, out = _write(tmp_path, ref), tmp_path / 'out'
    assert main([str(ckpt), str(out)]) == 1
    err = capsys.readouterr().err
    for text in expect + ['Nothing was written', '--allow-partial']:
        assert text in err, (text, err)
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ['ref.ckpt']
    # told to, it writes the model and lists the same keys in the card
    assert main([str(ckpt), str(out), '--allow-partial']) == 0
    card = (out / 'README.md').read_text()
    assert 'partial conversion' in card and expect[1].split(' ')[0].replace('model.', '') in card.replace('model.', '')


def test_missing_tensors_the_architecture_is_read_from_are_reported_too():
    ref = ref_convnext(depths=(1, 1))
    gone = ('stages.0.blocks.0.mlp.fc1.weight', 'stages.1.blocks.0.norm.weight', 'head.fc.weight')
    for key in gone:
        del ref[key]
    with pytest.raises(ConversionError) as err:
        convert_state_dict(ref)
    msg = str(err.value)
    assert 'missing: 3 model tensor(s)' in msg
    assert all(k in msg for k in gone)


def test_wrong_base_size_is_a_value_mismatch(tmp_path):
    with pytest.raises(ConversionError, match=r'l_kernel = 4 -> blocks.0.mixer.kernel.0.l_kernel.*built for 16 taps'):
        convert_state_dict(ref_vit(depth=1), model_kwargs={'img_size': 64})


def test_dplr_checkpoint_into_a_diagonal_model_is_refused():
    with pytest.raises(ConversionError, match=r"DPLR \(S4\) kernel.*s4nd_mode='diag'.*s4nd_mode=dplr"):
        convert_state_dict(ref_vit(depth=1), model_kwargs={'s4nd_mode': 'diag'})


class _Exploit:
    """Unpickling this runs code (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


class _HydraLikeConfig:
    """Stands for an omegaconf DictConfig in Lightning's hyper_parameters."""

    def __init__(self):
        self.content = {'model': 'convnext'}


def test_a_pickle_that_runs_code_is_refused_and_never_run(tmp_path, capsys):
    marker = tmp_path / 'pwned'
    ckpt = tmp_path / 'evil.ckpt'
    torch.save(lightning(ref_iso(depth=1), hyper_parameters=_Exploit(marker)), ckpt)
    assert main([str(ckpt), str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert 'refusing to unpickle' in err and 'builtins.exec' in err and '--inert-objects' in err
    assert not marker.exists() and not (tmp_path / 'out').exists()
    # inert placeholders: the exploit's call is replaced, never executed; the tensors convert
    obj = load_checkpoint(ckpt, inert_objects=True)
    assert 'Inert' in type(obj['hyper_parameters']).__mro__[1].__name__ and not marker.exists()
    assert main([str(ckpt), str(tmp_path / 'out'), '--inert-objects', '--model-kwargs', 'img_size=8']) == 0
    assert not marker.exists()


def test_lightning_config_objects_need_inert_objects(tmp_path):
    ckpt = tmp_path / 'hydra.ckpt'
    torch.save(lightning(ref_iso(depth=1), hyper_parameters=_HydraLikeConfig()), ckpt)
    with pytest.raises(ConversionError, match=r'_HydraLikeConfig.*--inert-objects'):
        load_checkpoint(ckpt)
    assert isinstance(load_checkpoint(ckpt, inert_objects=True)['state_dict'], dict)


def test_not_a_reference_checkpoint():
    with pytest.raises(ConversionError, match='cannot tell the model family'):
        convert_state_dict({'features.0.weight': torch.ones(2)})
    with pytest.raises(ConversionError, match='non-tensor entries'):
        from s4nd_timm.convert import extract_state_dict
        extract_state_dict({'a': torch.ones(1), 'b': 3})


def test_console_script_is_declared():
    text = (Path(__file__).resolve().parents[1] / 'pyproject.toml').read_text()
    assert 's4nd-convert = "s4nd_timm.convert:main"' in text


# ------------------------------------------------------------------------- timm loads reference checkpoints directly
def _timm_routes(ref, tmp_path, plain=False):
    """(s4nd-convert's model, the same checkpoint through timm's pretrained file, through checkpoint_path)."""
    converted, report = convert_state_dict(ref)
    ckpt = tmp_path / ('ref.pt' if plain else 'ref.ckpt')
    torch.save(ref if plain else lightning(ref), ckpt)
    name, kwargs = report.model_name, report.model_kwargs
    overlay = dict(file=str(ckpt), num_classes=kwargs.get('num_classes'))
    pretrained = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    from_path = timm.create_model(name, checkpoint_path=str(ckpt), **kwargs)
    return converted, pretrained, from_path


@pytest.mark.parametrize('family', ['convnext', 'vit', 'iso'])
def test_timm_pretrained_file_and_checkpoint_path_load_what_s4nd_convert_loads(tmp_path, family):
    torch.manual_seed(0)
    ref = {'convnext': ref_convnext, 'vit': lambda: ref_vit(depth=1, v3=True), 'iso': lambda: ref_iso(depth=1)}[family]()
    converted, pretrained, from_path = _timm_routes(ref, tmp_path, plain=family == 'vit')
    want = converted.state_dict()
    for model in (pretrained, from_path):
        got = model.state_dict()
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key
    x = torch.randn(1, 3, 32, 32) if family != 'iso' else torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(from_path.eval()(x), converted(x), rtol=0, atol=0)


def test_our_own_checkpoints_pass_the_filters_unchanged():
    from s4nd_timm.models import s4nd_convnext, s4nd_iso, s4nd_vit
    for module, name, kw in ((s4nd_convnext, 's4nd_convnext_tiny', dict(depths=(1, 1), dims=(8, 16), img_size=32)),
                             (s4nd_vit, 's4nd_vit_tiny_patch16', dict(depth=1, embed_dim=16, img_size=32)),
                             (s4nd_iso, 's4nd_iso_cifar_small', dict(depth=1, d_model=8, img_size=8))):
        model = timm.create_model(name, d_state=4, **kw)
        sd = model.state_dict()
        assert module.checkpoint_filter_fn(sd, model) is sd, name
        assert module.checkpoint_filter_fn({'state_dict': sd}, model) is sd, name
        model.load_state_dict(sd)  # through the reference pre-hook, strict


def test_a_reference_checkpoint_that_does_not_fit_the_model_built_is_refused_by_name(tmp_path):
    ckpt = tmp_path / 'ref.ckpt'
    torch.save(lightning(ref_vit(depth=2)), ckpt)
    with pytest.raises(ValueError, match=r'(?s)does not fit S4NDVisionTransformer.*model\.blocks\.2\.norm\.norm\.weight'
                                         r'.*s4nd-convert'):
        timm.create_model('s4nd_vit_tiny_patch16', checkpoint_path=str(ckpt), depth=1, embed_dim=16, img_size=32,
                          d_state=4, num_classes=5)


# ------------------------------------------------------------------------------------ raw C: the base size is needed
def _raw_c(ref):
    for k in [k for k in ref if k.endswith('l_kernel')]:
        ref[k] = torch.tensor(0)  # a reference module never run forward: C is the raw C
    return ref


def test_raw_c_checkpoint_is_refused_without_its_base_size(tmp_path, capsys):
    ckpt = _write(tmp_path, _raw_c(ref_iso(depth=1)))
    assert main([str(ckpt), str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and str(ckpt) in err and 'l_kernel = 0' in err and '--model-kwargs img_size=N' in err
    assert not (tmp_path / 'out').exists()
    with pytest.raises(ValueError, match=r'never ran a forward.*s4nd-convert CKPT OUT_DIR --model-kwargs img_size=N'):
        timm.create_model('s4nd_iso_cifar', checkpoint_path=str(ckpt), d_model=8, depth=1, img_size=8, d_state=4)
    # the S4ND stem's kernel length is a second base size (stem_l_max); a raw 3-D time kernel needs num_frames
    with pytest.raises(ConversionError, match=r'--model-kwargs stem_l_max=N\.$'):
        convert_state_dict(_raw_c(ref_convnext()), model_kwargs={'img_size': 32})
    with pytest.raises(ConversionError, match=r'--model-kwargs img_size=N num_frames=N\.$'):
        convert_state_dict(_raw_c(ref_convnext(video_frames=4)))


def test_raw_c_checkpoint_with_its_base_size_computes_what_c_tilde_built_at_that_size_computes(tmp_path):
    torch.manual_seed(1)
    ref = _raw_c(ref_iso(depth=2, img=16))
    ckpt, out = _write(tmp_path, ref), tmp_path / 'out'
    assert main([str(ckpt), str(out), '--model-kwargs', 'img_size=16']) == 0
    converted = _loaded(out)
    # independently: the reference layout renamed by hand (docs/design.md §8), C̃ built from the raw C for L = 16
    want = timm.create_model('s4nd_iso_cifar', d_model=8, depth=2, img_size=16, d_state=4, s4nd_init='legs').eval()
    ours = {}
    for key, value in ref.items():
        key = key[len('model.'):] if key.startswith('model.') else key
        key = key.replace('encoder.0.', 'stem.').replace('decoder.0.output_transform.', 'head.')
        key = key.replace('.norm.norm.', '.norm.').replace('norm.norm.', 'norm.').replace('layers.', 'blocks.')
        key = key.replace('.layer.output_linear.0.', '.mixer.output_linear.').replace('.layer.', '.mixer.')
        ours[key] = value[:, :, None, None] if key == 'stem.weight' else value
    raw = {k: ours.pop(k) for k in [k for k in ours if k.endswith('.C') or k.endswith('.l_kernel')]}
    want.load_state_dict(ours, strict=False)
    for name, module in want.named_modules():
        if hasattr(module, 'set_raw_c'):
            module.set_raw_c(raw[f'{name}.C'], 16)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), want(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ no silent wrong numbers, clear errors
def test_non_finite_tensors_are_refused_by_name_unless_allowed(tmp_path, capsys):
    ref = ref_iso(depth=1)
    ref['model.layers.0.layer.kernel.1.B'][0, 0, 0, 0] = float('nan')
    ref['decoder.0.output_transform.bias'][:] = float('inf')
    ckpt, out = _write(tmp_path, ref), tmp_path / 'out'
    assert main([str(ckpt), str(out)]) == 1
    err = capsys.readouterr().err
    assert 'model.layers.0.layer.kernel.1.B (1 of ' in err and 'decoder.0.output_transform.bias (10 of 10)' in err
    assert '--allow-nonfinite' in err and str(ckpt) in err and err.count('\n') == 1 and not out.exists()
    with pytest.raises(ValueError, match='NaN or Inf'):
        timm.create_model('s4nd_iso_cifar', checkpoint_path=str(ckpt), d_model=8, depth=1, img_size=8, d_state=4)
    assert main([str(ckpt), str(out), '--allow-nonfinite']) == 0
    assert torch.isinf(_loaded(out).head.bias).all()


@pytest.mark.parametrize('name', ['ref.ckpt', 'ref_legacy.pt', 'ref.safetensors'])
def test_truncated_checkpoint_is_named_in_one_line(tmp_path, capsys, name):
    path = tmp_path / name
    sd = {k[len('model.'):] if k.startswith('model.') else k: v for k, v in ref_iso(depth=1).items()}
    if name.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(sd, str(path))
    else:
        torch.save(lightning(sd), path, _use_new_zipfile_serialization=not name.endswith('legacy.pt'))
    data = path.read_bytes()
    for cut in (0, 7, len(data) // 2, len(data) - 3):
        path.write_bytes(data[:cut])
        assert main([str(path), str(tmp_path / 'out')]) == 1
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and str(path) in err and 'truncated or not a' in err, (cut, err)
    assert not (tmp_path / 'out').exists()


def test_timm_routes_refuse_a_pickle_that_runs_code_and_never_run_it(tmp_path):
    marker = tmp_path / 'pwned'
    ckpt = tmp_path / 'evil.ckpt'
    torch.save(lightning(ref_iso(depth=1), hyper_parameters=_Exploit(marker)), ckpt)
    kw = dict(d_model=8, depth=1, img_size=8, d_state=4)
    with pytest.raises(Exception, match='(?i)weights.only'):
        timm.create_model('s4nd_iso_cifar', checkpoint_path=str(ckpt), **kw)
    with pytest.raises(Exception, match='(?i)weights.only'):
        timm.create_model('s4nd_iso_cifar', pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt)), **kw)
    assert not marker.exists()


def test_user_errors_are_one_line_with_a_non_zero_exit(tmp_path, capsys):
    ckpt = _write(tmp_path, ref_iso(depth=1))
    cases = [([str(tmp_path / 'nope.ckpt'), str(tmp_path / 'o')], 1, 'does not exist'),
             ([str(ckpt), str(tmp_path / 'o'), '--model-kwargs', 'd_model'], 2, 'key=value'),
             ([str(ckpt), str(tmp_path / 'o'), '--model-kwargs', 'no_such_arg=1'], 1, 'no_such_arg'),
             ([str(ckpt), str(tmp_path / 'o'), '--model', 's4nd_vit_tiny_patch16'], 1, 'cannot build')]
    for argv, code, text in cases:
        assert main(argv) == code, argv
        err = capsys.readouterr().err
        assert err.startswith('s4nd-convert: error:') and text in err and err.count('\n') == 1, (argv, err)
    assert not (tmp_path / 'o').exists()


def test_registered_sizes_come_from_the_entrypoints():
    from s4nd_timm.convert import infer_model, registered_args
    from s4nd_timm.models import s4nd_convnext, s4nd_vit
    assert registered_args('s4nd_convnext_base') == dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
    assert registered_args('s4nd_vit_small_patch16') == dict(patch_size=16, embed_dim=384, depth=12)
    micro = s4nd_convnext.reference_keys(ref_convnext(dims=(64, 128, 256, 512), depths=(3, 3, 3, 3)))
    name, kw = infer_model(micro.tensors, 'convnext')
    assert name == 's4nd_convnext_micro' and 'depths' not in kw and 'dims' not in kw
    name, kw = infer_model(s4nd_vit.reference_keys(ref_vit(embed=192, depth=12)).tensors, 'vit')
    assert name == 's4nd_vit_tiny_patch16' and kw['img_size'] == 32 and 'embed_dim' not in kw
