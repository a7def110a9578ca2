"""Pretrained weights: save / reload through timm (local-dir:, pretrained_cfg_overlay file, hf-hub: against a
pre-populated Hub cache with HF_HUB_OFFLINE=1), clear errors instead of random weights, model cards. Offline."""
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import timm
import s4nd_timm  # noqa: F401
from s4nd_timm import hub
from s4nd_timm.hub import PretrainedWeightsError, save_pretrained

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(d_state=8, img_size=16, bandlimit=0.5)  # s4nd_iso_cifar_small, cheap on CPU


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize('name,kwargs,shape', [
    ('s4nd_iso_cifar_small.synthetic', SMALL, (2, 3, 16, 16)),
    ('s4nd_vit_tiny_patch16', dict(embed_dim=16, depth=1, img_size=32, d_state=4, num_classes=7), (2, 3, 32, 32)),
    ('s4nd_convnext_micro', dict(depths=(1, 1), dims=(8, 16), img_size=32, d_state=4, stem_type='s4nd',
                                 downsample_type='s4nd', stem_chs=4, num_classes=3), (1, 3, 32, 32)),
])
def test_save_then_reload_by_local_dir_and_by_file_gives_identical_outputs(tmp_path, name, kwargs, shape):
    model = timm.create_model(name, **kwargs).eval()
    model.s4nd_resolution = 'discrete'  # a setting changed after construction is saved too
    x = torch.randn(shape)
    want = _outputs(model, x)
    folder = save_pretrained(model, tmp_path / 'm')
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == name.split('.')[0] and config['model_args']['s4nd_resolution'] == 'discrete'
    assert config['pretrained_cfg']['num_classes'] == model.num_classes
    reloaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert reloaded.s4nd_resolution == 'discrete'
    torch.testing.assert_close(_outputs(reloaded, x), want, rtol=0, atol=0)
    overlay = dict(file=str(folder / 'model.safetensors'))
    by_file = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, s4nd_resolution='discrete',
                                **kwargs)
    torch.testing.assert_close(_outputs(by_file, x), want, rtol=0, atol=0)


def test_weights_file_refuses_a_model_built_with_other_settings(tmp_path):
    folder = save_pretrained(timm.create_model('s4nd_iso_cifar_small.synthetic', **SMALL), tmp_path / 'm')
    with pytest.raises(PretrainedWeightsError, match=r"bandlimit=0.5 \(this model: 0.2\).*img_size.*local-dir:"):
        timm.create_model('s4nd_iso_cifar_small.synthetic', pretrained=True, d_state=8,
                          pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors')))


def test_missing_file_and_missing_source_are_errors_not_random_weights(tmp_path):
    missing = tmp_path / 'nope' / 'model.safetensors'
    with pytest.raises(PretrainedWeightsError, match=rf"the file '{re.escape(str(missing))}'.*no random weights.*"
                                                     rf"pretrained_cfg_overlay=dict\(file="):
        timm.create_model('s4nd_iso_cifar_small.synthetic', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(missing)))
    no_source = dict(architecture='s4nd_iso_cifar_small', num_classes=10)
    with pytest.raises(PretrainedWeightsError, match=r"no weight source.*refusing to return random weights"):
        timm.create_model('s4nd_iso_cifar_small', pretrained=True, pretrained_cfg=no_source, **SMALL)


def test_a_failed_save_leaves_nothing_and_a_full_folder_needs_overwrite(tmp_path, monkeypatch):
    model = timm.create_model('s4nd_iso_cifar_small.synthetic', **SMALL)

    def broken(model, directory, **kwargs):
        (Path(directory) / 'model.safetensors').write_bytes(b'partial')
        raise OSError('disk full')
    monkeypatch.setattr(timm.models, 'save_for_hf', broken)
    with pytest.raises(OSError, match='disk full'):
        save_pretrained(model, tmp_path / 'm')
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_pretrained(model, tmp_path / 'm')
    with pytest.raises(FileExistsError, match='overwrite=True'):
        save_pretrained(model, tmp_path / 'm')
    save_pretrained(model, tmp_path / 'm', overwrite=True, results='| data | top-1 |\n|---|---|\n| x | 1.0 |')
    assert '| x | 1.0 |' in (tmp_path / 'm' / 'README.md').read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m']


def _put_in_hub_cache(cache: Path, repo_id: str, files: dict) -> None:
    """huggingface_hub's cache layout: blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/main = commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    (repo / 'blobs').mkdir()
    snap = repo / 'snapshots' / commit
    snap.mkdir(parents=True)
    for name, path in files.items():
        data = Path(path).read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / 'blobs' / blob).write_bytes(data)
        os.symlink(os.path.join('..', '..', 'blobs', blob), snap / name)


def test_hf_hub_loading_through_huggingface_hub_offline_cache(tmp_path):
    """The real huggingface_hub download path (HF_HUB_OFFLINE=1) against a pre-populated cache: by registry tag
    (its hf_hub_id), by hf-hub: id; a repo without weights and a repo not cached give the clear error."""
    name = 's4nd_iso_cifar_small.c10'  # a tag without packaged weights: its hf_hub_id is the source
    model = timm.create_model(name, d_state=8).eval()
    folder = save_pretrained(model, tmp_path / 'saved')
    x = torch.randn(2, 3, 16, 16)
    torch.save({'x': x, 'y': _outputs(model, x)}, tmp_path / 'expect.pt')
    cache = tmp_path / 'hub'
    files = ('model.safetensors', 'config.json', 'README.md')
    _put_in_hub_cache(cache, f's4nd-timm/{name}', {n: folder / n for n in files})
    _put_in_hub_cache(cache, 's4nd-timm/s4nd_iso_cifar_conv2d_small.c10', {'README.md': folder / 'README.md'})
    script = textwrap.dedent(f"""
        import json, torch, timm, s4nd_timm
        e = torch.load({str(tmp_path / 'expect.pt')!r})
        out = {{}}
        with torch.no_grad():
            m = timm.create_model('{name}', pretrained=True, d_state=8).eval()
            out['tag'] = torch.equal(m(e['x']), e['y'])
            m = timm.create_model('hf-hub:s4nd-timm/{name}', pretrained=True).eval()
            out['hf_hub'] = torch.equal(m(e['x']), e['y'])
        for name in ('s4nd_iso_cifar_conv2d_small.c10', 's4nd_vit_tiny_patch16.in1k'):
            try:
                timm.create_model(name, pretrained=True)
                out[name] = 'loaded'
            except s4nd_timm.hub.PretrainedWeightsError as err:
                out[name] = str(err)
        print(json.dumps(out))
    """)
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / 'hf_home'), HF_HUB_OFFLINE='1',
               HF_HUB_DISABLE_TELEMETRY='1')
    run = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out['tag'] is True and out['hf_hub'] is True
    for name in ('s4nd_iso_cifar_conv2d_small.c10', 's4nd_vit_tiny_patch16.in1k'):
        msg = out[name]
        assert f"Hugging Face Hub repo 's4nd-timm/{name}'" in msg, msg
        assert 'no random weights' in msg and 'pretrained_cfg_overlay=dict(file=' in msg and 'local-dir:' in msg, msg


def test_push_to_hub_uploads_the_save_pretrained_folder(tmp_path, monkeypatch):
    import huggingface_hub
    calls = {}

    class FakeApi:
        def __init__(self, token=None, **kwargs):
            calls['token'] = token

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls['create'] = (repo_id, private, exist_ok)
            return huggingface_hub.RepoUrl(f'https://huggingface.co/{repo_id}')

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls['files'] = sorted(os.listdir(folder_path))
            calls['card'] = Path(folder_path, 'README.md').read_text()
            return 'commit'
    monkeypatch.setattr(huggingface_hub, 'HfApi', FakeApi)
    model = timm.create_model('s4nd_iso_cifar_small.synthetic', **SMALL)
    assert hub.push_to_hub(model, 's4nd-timm/s4nd_iso_cifar_small.synthetic', token='t') == 'commit'
    assert calls['create'] == ('s4nd-timm/s4nd_iso_cifar_small.synthetic', False, True)
    assert calls['files'] == ['README.md', 'config.json', 'model.safetensors']
    assert calls['card'].startswith('---\nlibrary_name: timm')


def _front_matter(text):
    m = re.match(r'---\n(.*?)\n---\n', text, re.DOTALL)
    assert m, text[:200]
    return yaml.safe_load(m.group(1)), text[m.end():]


@pytest.mark.parametrize('name', timm.list_pretrained('s4nd_*'))
def test_every_pretrained_tag_has_a_card(name):
    path = ROOT / 'model_cards' / f'{name}.md'
    assert path.is_file(), f'no model card {path}'
    text = path.read_text()
    meta, body = _front_matter(re.sub(r'\{\{\s*license\s*\}\}', 'apache-2.0', text))
    assert meta['library_name'] == 'timm' and meta['license'] and meta['datasets'] and 's4nd' in meta['tags']
    assert 'arXiv:2210.06583' in body and f"timm.create_model('{name}'" in body and '## Usage' in body
    assert not re.search(r'\d+\.\d+\s*%', body), 'cards carry only numbers measured on the weights ({{ results }})'


def test_cards_render_with_every_placeholder_filled(tmp_path):
    model = timm.create_model('s4nd_iso_cifar_small.synthetic', **SMALL)
    for path in sorted((ROOT / 'model_cards').glob('*.md')):
        card = hub.render_model_card(model, name=path.stem if path.stem != '_template' else 'no_card_for_this',
                                     results='measured: none', provenance='from a test')
        meta, body = _front_matter(card)
        assert '{{' not in card and meta['library_name'] == 'timm', path
        assert 'measured: none' in body and 'from a test' in body, path


def test_without_the_model_cards_folder_a_minimal_card_is_written(tmp_path, monkeypatch):
    """An installed wheel has no model_cards/: saving still works, with a short card."""
    monkeypatch.setattr(hub, 'MODEL_CARDS_DIR', tmp_path / 'not_here')
    monkeypatch.chdir(tmp_path)
    model = timm.create_model('s4nd_iso_cifar_small.synthetic', **SMALL)
    card = (save_pretrained(model, tmp_path / 'm', results='r1') / 'README.md').read_text()
    meta, body = _front_matter(card)
    assert meta['library_name'] == 'timm' and meta['datasets'] == ['synthetic-shapes'] and 'r1' in body
    assert '{{' not in card and 'arXiv:2210.06583' in body


def test_saved_config_describes_the_saved_input_size_and_head(tmp_path):
    """config.json's pretrained_cfg follows img_size and the head, not the registry tag the model was built from."""
    model = timm.create_model('s4nd_iso_cifar_small.c10', img_size=12, d_state=8, num_classes=4)
    cfg = json.loads((save_pretrained(model, tmp_path / 'm') / 'config.json').read_text())['pretrained_cfg']
    assert cfg['input_size'] == cfg['test_input_size'] == [3, 12, 12] and cfg['pool_size'] == [12, 12]
    assert cfg['num_classes'] == 4
    reloaded = timm.create_model(f'local-dir:{tmp_path / "m"}', pretrained=True)
    assert timm.data.resolve_data_config({}, model=reloaded)['input_size'] == (3, 12, 12)


@pytest.mark.parametrize('name', [n for n in timm.list_pretrained('s4nd_*') if n.endswith('.synthetic')])
def test_shipped_weights_load_by_tag_offline(name, monkeypatch):
    """The '.synthetic' weights ship with the package (s4nd_timm/weights/<name>/, written by s4nd-demo with
    save_pretrained): pretrained=True by tag loads them with no network, into the model the tag names."""
    from s4nd_timm.models.s4nd_iso import TAG_MODEL_ARGS
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    folder = hub.packaged_weights_dir(name)
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == name.split('.')[0]
    for key, value in TAG_MODEL_ARGS[name].items():  # the tag's arguments are the ones the weights were saved with
        want = [value, value] if key == 'img_size' and isinstance(value, int) else value  # config.json: [H, W]
        assert config['model_args'][key] in (value, want), (key, config['model_args'])
    assert config['pretrained_cfg']['input_size'] == [3, 8, 8] and config['model_args']['num_classes'] == 10
    by_tag = timm.create_model(name, pretrained=True)
    by_dir = timm.create_model(f'local-dir:{folder}', pretrained=True)
    for size in (8, 32):
        x = torch.randn(2, 3, size, size)
        torch.testing.assert_close(_outputs(by_tag, x), _outputs(by_dir, x), rtol=0, atol=0)
    fresh = timm.create_model(name)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), by_tag.state_dict().values()))
    meta, body = _front_matter((folder / 'README.md').read_text())
    assert meta['library_name'] == 'timm' and 'Top-1' in body


def _saved_small(tmp_path, name='m'):
    return save_pretrained(timm.create_model('s4nd_iso_cifar_small', **SMALL), tmp_path / name)


def test_truncated_weights_are_one_value_error_naming_the_file(tmp_path):
    folder = _saved_small(tmp_path)
    weights = folder / 'model.safetensors'
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=rf"{re.escape(str(weights))} cannot be read.*truncated or corrupt"):
        timm.create_model('s4nd_iso_cifar_small', pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)),
                          **SMALL)
    with pytest.raises(ValueError, match=rf"the folder {re.escape(str(folder))} cannot be read.*SafetensorError"):
        timm.create_model(f'local-dir:{folder}', pretrained=True)


def test_broken_config_next_to_the_weights_is_one_value_error_naming_it(tmp_path):
    folder = _saved_small(tmp_path)
    (folder / 'config.json').write_text('{"architecture": ')
    with pytest.raises(ValueError, match=rf"{re.escape(str(folder / 'config.json'))} .*cannot be read.*JSONDecode"):
        timm.create_model('s4nd_iso_cifar_small', pretrained=True, **SMALL,
                          pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors')))


def test_config_of_another_architecture_and_unknown_arguments_are_named(tmp_path):
    folder = _saved_small(tmp_path)
    config = json.loads((folder / 'config.json').read_text())
    (folder / 'config.json').write_text(json.dumps(dict(config, architecture='s4nd_vit_tiny_patch16')))
    with pytest.raises(ValueError, match=r"does not take the argument\(s\) \['d_model', 'mixer'\].*config\.json"):
        timm.create_model(f'local-dir:{folder}', pretrained=True)
    with pytest.raises(ValueError, match=r"S4NDIsotropic\) does not take the argument\(s\) \['foo'\]"):
        timm.create_model('s4nd_iso_cifar_small', foo=1)


def test_the_card_hint_names_the_installed_card():
    """The hint comes from the model cards installed with the package (package data), so a wheel has it too."""
    from s4nd_timm.models._builder import _card_hint, model_cards_dir
    cards = model_cards_dir()
    assert cards is not None and (cards / '_template.md').is_file()
    hint = _card_hint('s4nd_vit_tiny_patch16.in1k')
    assert hint and str(cards / 's4nd_vit_tiny_patch16.in1k.md') in hint
    assert _card_hint('s4nd_vit_tiny_patch16.no_such_tag') == ''


def test_the_card_hint_is_there_in_a_wheel_install(tmp_path):
    """Unpacked wheel first on the path (no source tree): the hint still names the card, inside the package."""
    import zipfile
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel, = tmp_path.glob('s4nd_timm-*.whl')
    site = tmp_path / 'site'
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import s4nd_timm, s4nd_timm.models._builder as b; print(s4nd_timm.__file__); "
            "print(b._card_hint('s4nd_vit_tiny_patch16.in1k'))")
    run = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(site)))
    assert run.returncode == 0, run.stderr[-2000:]
    where, hint = run.stdout.strip().splitlines()[-2:]
    assert where.startswith(str(site)), where
    assert str(site / 's4nd_timm' / 'model_cards' / 's4nd_vit_tiny_patch16.in1k.md') in hint, hint
