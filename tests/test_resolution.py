"""s4nd-eval-resolution and the main job's resolution transfer: outputs (table, JSON, PNG, atomic rewrites),
the three datasets, clear errors, and the headline result (S4ND trained at 8 px keeps its accuracy at 32 px far
better than Conv2D). Tiny models, CPU."""
import argparse
import json
import os
import re
from typing import Dict

import matplotlib.figure
import matplotlib.image
import pytest
import timm
import torch
from _fixtures import make_cifar10, make_image_folder
from s4nd_timm.train import main_job
from s4nd_timm.train.eval_resolution import cli, evaluate_resolutions, load_model, main, min_resolution

from s4nd_timm.hub import save_pretrained

TINY = dict(d_model=8, depth=1, img_size=8, num_classes=10)
TINY_KWARGS = ['d_model=8', 'depth=1', 'img_size=8']
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def tiny_models(tmp_path_factory):
    """A tiny S4ND as a Hub folder and its Conv2D twin as an s4nd-train style checkpoint (weights + args)."""
    root = tmp_path_factory.mktemp('models')
    s4nd = timm.create_model('s4nd_iso_cifar_small', d_state=4, bandlimit=0.5, **TINY)
    folder = save_pretrained(s4nd, root / 's4nd_tiny')
    conv = timm.create_model('s4nd_iso_cifar_conv2d_small', **TINY)
    ckpt = root / 'conv_tiny.pth.tar'
    args = argparse.Namespace(model='s4nd_iso_cifar_conv2d_small', model_kwargs=dict(d_model=8, depth=1), img_size=8,
                              input_size=None)
    torch.save({'state_dict': conv.state_dict(), 'args': args, 'epoch': 0}, ckpt)
    return {'folder': str(folder), 'ckpt': str(ckpt), 's4nd': s4nd, 'conv': conv}


def _run(out, *models, resolutions=('4', '8', '16'), extra=()):
    return main(['--model', *models, '--resolutions', *resolutions, '--num-samples', '12', '-b', '6',
                 '--output', str(out), *extra])


def test_eval_writes_table_json_png(tiny_models, tmp_path):
    result = _run(tmp_path, tiny_models['folder'], tiny_models['ckpt'])
    table = (tmp_path / 'results.md').read_text()
    assert table.strip() == result['table']
    lines = table.strip().splitlines()
    assert lines[0] == '| model | mode | train px | 4 px | 8 px | 16 px |'
    assert [line.split('|')[1:3] for line in lines[2:]] == [
        [' s4nd_tiny ', ' continuous '], [' s4nd_tiny ', ' discrete '], [' s4nd_iso_cifar_conv2d_small ', ' pixels ']]
    assert all('*' in line.split('|')[5] for line in lines[2:])  # 8 px, the training size, is marked
    data = json.loads((tmp_path / 'results.json').read_text())
    assert data['resolutions'] == [4, 8, 16] and data['dataset'] == 'synthetic'
    rows = {(r['label'], r['mode']): r for r in data['results']}
    assert set(rows) == {('s4nd_tiny', 'continuous'), ('s4nd_tiny', 'discrete'), ('s4nd_iso_cifar_conv2d_small', None)}
    for row in rows.values():
        assert row['train_size'] == 8 and row['samples'] == 12
        assert set(row['top1']) == {'4', '8', '16'} and all(0 <= v <= 100 for v in row['top1'].values())
    # at the training size the two modes are the same computation
    assert rows['s4nd_tiny', 'continuous']['top1']['8'] == rows['s4nd_tiny', 'discrete']['top1']['8']
    png = (tmp_path / 'resolution.png').read_bytes()
    assert png.startswith(PNG_MAGIC)
    image = matplotlib.image.imread(str(tmp_path / 'resolution.png'))
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300


def test_eval_matches_the_models_in_memory(tiny_models):
    """Loading a Hub folder / a training checkpoint gives back the same weights and the training size."""
    x = torch.randn(2, 3, 8, 8)
    for spec, ref in ((tiny_models['folder'], tiny_models['s4nd']), (tiny_models['ckpt'], tiny_models['conv'])):
        model, info = load_model(spec)
        assert info['train_size'] == 8
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref.eval()(x), rtol=0, atol=0)
    model, info = load_model(f"s4nd_iso_cifar_conv2d_small={tiny_models['ckpt']}", dict(d_model=8, depth=1, img_size=8))
    assert info['model'] == 's4nd_iso_cifar_conv2d_small' and info['train_size'] == 8


def test_rerun_replaces_outputs_atomically(tiny_models, tmp_path, monkeypatch):
    _run(tmp_path, tiny_models['folder'], resolutions=('8', '16'))
    first = {name: (tmp_path / name).read_bytes() for name in ('results.md', 'results.json', 'resolution.png')}
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, 'replace', lambda src, dst: (replaced.append((str(src), str(dst))), real_replace(src, dst)))
    _run(tmp_path, tiny_models['folder'], resolutions=('8', '12', '16'))
    assert sorted(os.path.basename(d) for _, d in replaced) == ['resolution.png', 'results.json', 'results.md']
    assert all(os.path.dirname(s) == str(tmp_path) and s != d for s, d in replaced)  # temp file beside the target
    assert '12 px' in (tmp_path / 'results.md').read_text()
    assert json.loads((tmp_path / 'results.json').read_text())['resolutions'] == [8, 12, 16]
    # a run that dies while writing the plot leaves the previous plot whole and no temporary file
    before = (tmp_path / 'resolution.png').read_bytes()
    assert before != first['resolution.png']

    def broken_savefig(self, fh, **kwargs):
        fh.write(PNG_MAGIC[:4])
        raise OSError('disk full')
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', broken_savefig)
    with pytest.raises(OSError, match='disk full'):
        _run(tmp_path, tiny_models['folder'], resolutions=('8', '16'))
    assert (tmp_path / 'resolution.png').read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ['resolution.png', 'results.json', 'results.md']


@pytest.mark.parametrize('dataset', ['cifar10', 'imagenet'])
def test_file_datasets_are_resized(dataset, tiny_models, tmp_path):
    """CIFAR-10 batches and ImageNet class folders are resized to each test size (3 classes: a 3-class model)."""
    data = tmp_path / 'data'
    if dataset == 'cifar10':
        make_cifar10(str(data), test_size=8)
        specs, expected = [tiny_models['folder']], 8
    else:
        make_image_folder(str(data), num_classes=3, per_class=4, size=20)
        conv = timm.create_model('s4nd_iso_cifar_conv2d_small', **dict(TINY, num_classes=3))
        torch.save(conv.state_dict(), tmp_path / 'conv3.pth')
        specs, expected = [f"s4nd_iso_cifar_conv2d_small={tmp_path / 'conv3.pth'}"], 6
    result = _run(tmp_path / 'out', *specs, resolutions=('8', '16'),
                  extra=['--dataset', dataset, '--data-dir', str(data), '--model-kwargs', *TINY_KWARGS])
    assert all(row['samples'] == expected for row in result['rows'])


def test_bad_inputs_give_clear_errors(tiny_models, tmp_path, capsys, monkeypatch):
    convnext = timm.create_model('s4nd_convnext_micro', depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), d_state=4,
                                 img_size=32, num_classes=10)
    assert min_resolution(convnext) == 32
    torch.save(convnext.state_dict(), tmp_path / 'convnext.pth')
    with pytest.raises(ValueError, match=r'\[16\] px are below the minimum .* 32 px'):
        _run(tmp_path, f"s4nd_convnext_micro={tmp_path / 'convnext.pth'}", resolutions=('16', '32'),
             extra=['--model-kwargs', 'depths=(1,1,1,1)', 'dims=(8,16,16,16)', 'd_state=4', 'img_size=32'])
    with pytest.raises(ValueError, match="unknown model 'not_a_model'.*s4nd_iso_cifar_small"):
        _run(tmp_path, 'not_a_model')
    with pytest.raises(ValueError, match="checkpoint .*missing.pth.* not found"):
        _run(tmp_path, f"s4nd_iso_cifar_small={tmp_path / 'missing.pth'}")
    with pytest.raises(ValueError, match="checkpoint .*missing.pth.tar.* not found"):
        _run(tmp_path, str(tmp_path / 'missing.pth.tar'))
    with pytest.raises(ValueError, match='does not fit s4nd_iso_cifar_conv2d_small'):
        _run(tmp_path, f"s4nd_iso_cifar_conv2d_small={tiny_models['ckpt']}", extra=['--model-kwargs', 'd_model=16'])
    monkeypatch.setattr('sys.argv', ['s4nd-eval-resolution', '--model', 'not_a_model', '--output', str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli()
    assert exit_info.value.code == 2 and "error: unknown model 'not_a_model'" in capsys.readouterr().err
    assert not (tmp_path / 'results.md').exists()


def test_rows_are_labelled_by_model_name_and_one_mode_word(tiny_models, tmp_path, capsys):
    """NAME=CKPT rows carry NAME (not the file name); two checkpoints of one architecture get their run folder;
    --labels overrides; models without S4ND are 'pixels' in the table and in the progress lines alike."""
    conv = 's4nd_iso_cifar_conv2d_small'
    for run in ('run_a', 'run_b'):
        (tmp_path / run).mkdir()
        (tmp_path / run / 'model_best.pth.tar').write_bytes(open(tiny_models['ckpt'], 'rb').read())
    best = [str(tmp_path / run / 'model_best.pth.tar') for run in ('run_a', 'run_b')]
    result = _run(tmp_path / 'out', f'{conv}={best[0]}', tiny_models['folder'], resolutions=('8',))
    assert [r['label'] for r in result['rows']] == [conv, 's4nd_tiny', 's4nd_tiny']
    out = capsys.readouterr().out
    assert f'[eval 1/3] {conv} (pixels) @ 8 px' in out and f'| {conv} | pixels | 8 |' in out
    result = _run(tmp_path / 'out', f'{conv}={best[0]}', best[1], resolutions=('8',))
    assert [r['label'] for r in result['rows']] == [f'{conv} (run_a)', f'{conv} (run_b)']
    result = _run(tmp_path / 'out', *best, resolutions=('8',), extra=['--labels', 'A', 'B'])
    assert [r['label'] for r in result['rows']] == ['A', 'B']
    assert '| B | pixels | 8 |' in (tmp_path / 'out' / 'results.md').read_text()
    with pytest.raises(ValueError, match='--labels needs one label per --model'):
        _run(tmp_path / 'out', *best, extra=['--labels', 'A'])
    with pytest.raises(ValueError, match='same label.*--labels'):
        _run(tmp_path / 'out', best[0], best[0], resolutions=('8',))


def test_local_dir_form_loads_the_folder(tiny_models, tmp_path):
    model, info = load_model('local-dir:' + tiny_models['folder'])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tiny_models['s4nd'].eval()(x), rtol=0, atol=0)
    assert info['label'] == 's4nd_tiny' and info['train_size'] == 8
    with pytest.raises(ValueError, match="local-dir:.*folder .*nowhere.* not found"):
        load_model(f"local-dir:{tmp_path / 'nowhere'}")


@pytest.mark.parametrize('where', ['file', 'below_a_file'])
def test_outputs_are_checked_before_any_work(where, tiny_models, tmp_path, monkeypatch, capsys):
    """--output naming a file, or a folder that cannot be created, fails at start-up with one line naming
    --output: before a model is loaded (s4nd-eval-resolution) or trained (s4nd-demo)."""
    (tmp_path / 'taken').write_text('x')
    output = str(tmp_path / 'taken') if where == 'file' else str(tmp_path / 'taken' / 'out')

    def no_work(*args, **kwargs):
        raise AssertionError('work started before the output was checked')
    monkeypatch.setattr('s4nd_timm.train.eval_resolution.load_model', no_work)
    monkeypatch.setattr(main_job, 'train_model', no_work)
    monkeypatch.setattr(main_job, 'render_train_set', no_work)
    for prog, entry, argv in (('s4nd-eval-resolution', cli, ['--model', tiny_models['folder']]),
                              ('s4nd-demo', main_job.cli, ['--quick'])):
        monkeypatch.setattr('sys.argv', [prog, *argv, '--output', output])
        with pytest.raises(SystemExit) as exit_info:
            entry()
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1, err
        assert err[0].startswith(f'{prog}: error: --output') and repr(output) in err[0], err


def test_main_job_writes_tables_plots_and_weights(tmp_path, monkeypatch):
    """The whole main job on a tiny preset: the zero-shot table, the progressive table with its per-epoch
    curves, the three plots (valid PNGs, kernels and top-1 vs time included) and loadable weights."""
    tiny = dict(models=('S4ND', 'Conv2D'), train_samples=40, test_samples=20, epochs=1, resolutions=(8, 16),
                prog_model_args=dict(d_model=8, depth=1), prog_samples=40, prog_test_samples=20,
                prog_runs=(('fixed', ((16, 2),)), ('progressive', ((8, 1), (16, 1))),
                           ('progressive, equal time', ((8, 3), (16, 1)))))
    monkeypatch.setitem(main_job.PRESETS, 'quick', tiny)
    payload = main_job.main(['--quick', '--output', str(tmp_path), '-b', '10'])
    for name in ('resolution_transfer.png', 'kernels.png', 'progressive_resizing.png'):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC), name
        image = matplotlib.image.imread(str(tmp_path / name))
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300, name
    runs = payload['progressive']
    assert [r['name'] for r in runs] == ['fixed', 'progressive', 'progressive, equal time']
    assert [len(r['curve']) for r in runs] == [2, 2, 4] and runs[2]['sizes'] == [8, 8, 8, 16]
    assert all(r['top1'] == r['curve'][-1][2] and r['seconds'] == pytest.approx(sum(r['epoch_seconds']))
               for r in runs)
    table = (tmp_path / 'results.md').read_text()
    assert "| fixed | 16 px x 2 | 2 |" in table and "within fixed's time" in table
    assert '- progressive, equal time: ' in table and '| Conv2D | pixels | 8 |' in table
    folder = payload['weights']['S4ND progressive, equal time']
    assert os.path.basename(folder) == 's4nd_iso_cifar_small_16px_progressive_equal_time'
    model = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert model.num_features == 8


def test_new_plots_are_replaced_atomically(tmp_path, monkeypatch):
    """A plot that fails while being written leaves the previous file whole and no temporary file."""
    s4nd = main_job.build_model('S4ND', 8, 0, d_model=8, depth=1)
    conv = main_job.build_model('Conv2D', 8, 0, d_model=8, depth=1)
    runs = [{'name': 'fixed', 'schedule': '16 px x 2', 'base_size': 16, 'seconds': 2.0, 'sizes': [16, 16],
             'curve': [(1, 1.0, 20.0), (2, 2.0, 30.0)]}]
    kernels, curves = str(tmp_path / 'kernels.png'), str(tmp_path / 'curves.png')
    main_job.plot_kernels(s4nd, conv, 8, kernels, sizes=(8, 16))
    main_job.plot_curves(runs, curves)
    before = {p: open(p, 'rb').read() for p in (kernels, curves)}
    assert all(b.startswith(PNG_MAGIC) for b in before.values())

    def broken_savefig(self, fh, **kwargs):
        fh.write(PNG_MAGIC[:4])
        raise OSError('disk full')
    monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', broken_savefig)
    with pytest.raises(OSError, match='disk full'):
        main_job.plot_kernels(s4nd, conv, 8, kernels, sizes=(8, 32))
    with pytest.raises(OSError, match='disk full'):
        main_job.plot_curves(runs, curves)
    assert {p: open(p, 'rb').read() for p in (kernels, curves)} == before
    assert sorted(os.listdir(tmp_path)) == ['curves.png', 'kernels.png']


def test_s4nd_keeps_accuracy_at_32px_far_better_than_conv2d():
    """The paper's zero-shot claim at toy scale: trained at 8 px, tested at 32 px (about 35 s on 2 CPU cores).

    Main-job models and recipe, smaller run (2000 images, 15 epochs, 400 test images). Measured over seeds 0-4
    (top-1 %): S4ND 49-54 at 8 px, drop to 32 px 11.8-12.8 points; Conv2D 54-65 at 8 px, drop 45-54 points
    (to chance, 10); Conv2D's drop minus S4ND's 32.8-41.8; S4ND minus Conv2D at 32 px 26.2-32.5. Asserted:
    both above 35 at 8 px, Conv2D loses at least 20 points more than S4ND, S4ND beats Conv2D at 32 px by at
    least 15 points.
    """
    seed = 0
    train_set = main_job.render_train_set(main_job.build_model('S4ND', 8, seed), 2000, 8, seed)
    entries = []
    for label in ('S4ND', 'Conv2D'):
        model = main_job.build_model(label, 8, seed)
        main_job.train_model(model, train_set, [(8, 15)], tag=label, device=torch.device('cpu'), seed=seed)
        entries.append({'label': label, 'model': model, 'train_size': 8})
    data = dict(dataset='synthetic', seed=seed, num_samples=400)
    rows = {r['label']: r['top1'] for r in evaluate_resolutions(entries, [8, 32], **data, modes=('continuous',),
                                                                 batch_size=100)}
    s4nd_drop, conv_drop = rows['S4ND'][8] - rows['S4ND'][32], rows['Conv2D'][8] - rows['Conv2D'][32]
    assert rows['S4ND'][8] > 35 and rows['Conv2D'][8] > 35, rows  # both learned at 8 px (chance: 10)
    assert conv_drop - s4nd_drop >= 20, rows
    assert rows['S4ND'][32] - rows['Conv2D'][32] >= 15, rows


def test_trained_at_half_resolution_with_the_rate_keeps_its_accuracy_at_the_base_resolution():
    """Progressive resizing's premise: an S4ND model at base 32 px trained only at 16 px (rate 2, as the first
    stage of a progressive run) is as accurate at 32 px as at 16 px, with no training at 32 px (continuous
    mode; under a minute on a loaded 2-core CPU).

    d_model 32, 2 blocks, 600 images, 10 epochs, 300 held-out images. Measured over seeds 0-4 (top-1 %):
    36.7 / 40.7, 38.7 / 41.3, 30.3 / 31.0, 39.0 / 40.7, 32.7 / 33.0 at 16 / 32 px: 32 px is 0.3-4.0 points
    better. Asserted: top-1 at 16 px above 25 (it learned; chance 10) and top-1 at 32 px at most 5 points
    below it. The margin is about twice the standard error of a paired difference on 300 images (2-3
    points); a model whose kernels do not follow the rate (discrete mode, or no bandlimit) falls to near
    chance at 32 px instead (the zero-shot table in README).
    """
    seed = 0
    model = main_job.build_model('S4ND', 32, seed, d_model=32, depth=2)
    train_set = main_job.render_train_set(model, 600, 32, seed)
    main_job.train_model(model, train_set, [(16, 10)], tag='16 px', device=torch.device('cpu'), seed=seed)
    data = dict(dataset='synthetic', seed=seed, num_samples=300)
    row, = evaluate_resolutions([{'label': '16 px', 'model': model, 'train_size': 16}], [16, 32], **data,
                                modes=('continuous',), batch_size=100)
    assert row['top1'][16] > 25, row['top1']
    assert row['top1'][32] >= row['top1'][16] - 5, row['top1']


def _card_results(card: str) -> Dict[int, float]:
    """{test px: top-1} from the results table ``save_pretrained`` wrote into a shipped model card."""
    head = re.search(r'^\| test px \|(.*)\|$', card, re.M).group(1)
    values = re.search(r'^\| top-1 \|(.*)\|$', card, re.M).group(1)
    return {int(px): float(v) for px, v in zip(head.split('|'), values.split('|'))}


@pytest.mark.parametrize('name', [n for n in timm.list_pretrained('s4nd_*') if n.endswith('.synthetic')])
def test_shipped_weights_reproduce_their_model_card(name):
    """The weights that ship with the package, evaluated as their card says (1000 held-out SyntheticShapes, seed 0,
    continuous mode), give the card's numbers at 8 and 32 px: the layer, the models and the data renderer still
    compute what they computed when the weights were trained. Tolerance 0.5 points (5 of the 1000 predictions may
    flip on another CPU / BLAS, where float32 sums round differently)."""
    from s4nd_timm.hub import packaged_weights_dir
    card = _card_results((packaged_weights_dir(name) / 'README.md').read_text())
    model = timm.create_model(name, pretrained=True)
    data = dict(dataset='synthetic', seed=0, num_samples=1000)
    row, = evaluate_resolutions([{'label': name, 'model': model, 'train_size': 8}], [8, 32], **data,
                                modes=('continuous',), batch_size=100)
    for px in (8, 32):
        assert abs(row['top1'][px] - card[px]) <= 0.5, (px, row['top1'], card)
