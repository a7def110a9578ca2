"""s4nd-train / s4nd-validate and their data under hostile input, kills and mistakes: data never runs code,
nothing is lost, unreadable files are skipped and counted, every user error is one line. CPU, tiny models."""
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from _fixtures import make_cifar10, make_hmdb51, make_image_folder
from s4nd_timm.train import checkpoint as checkpoint_mod
from s4nd_timm.train import train as train_mod
from s4nd_timm.train import validate as validate_mod
from s4nd_timm.train.data import CIFAR10Batches, create_dataset, create_loader

from s4nd_timm import _io

ISO = ['--model', 's4nd_iso_cifar_small', '--model-kwargs', 'd_model=8', 'depth=1', 'd_state=4']
TINY = ['--dataset', 'synthetic', *ISO, '--img-size', '8', '--train-num-samples', '16', '--val-num-samples', '8',
        '-b', '8', '-j', '0', '--log-interval', '1', '--warmup-epochs', '0', '--lr', '0.01']
TIMING = ('train_time', 'train_samples_per_sec')


class _Killed(BaseException):
    """Stands for a kill -9: nothing catches it."""


class _Payload:
    """Unpickling this runs code: it would create ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _train(tmp_path, *argv, name='run'):
    return train_mod.main([*TINY, *argv, '--output', str(tmp_path), '--experiment', name])


def _rows(run_dir):
    with open(os.path.join(run_dir, 'metrics.json')) as fh:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in json.load(fh)]


def _state(path):
    return _io.safe_torch_load(path)


def _cli(monkeypatch, capsys, module, argv, env_debug=False):
    """Run a console entry point in-process; returns (exit code, stderr)."""
    monkeypatch.setattr(sys, 'argv', [module.__name__, *argv])
    if env_debug:
        monkeypatch.setenv('S4ND_DEBUG', '1')
    with pytest.raises(SystemExit) as exc:
        module.cli()
    return exc.value.code, capsys.readouterr().err


# --- no file we read may run code ----------------------------------------------------------------------

@pytest.mark.parametrize('name', ['batches.meta', 'data_batch_1'])
def test_cifar_pickle_payload_refused_before_it_runs(tmp_path, name):
    make_cifar10(str(tmp_path), per_batch=2, test_size=2)
    marker = tmp_path / 'marker'
    path = tmp_path / 'cifar-10-batches-py' / name
    with open(path, 'wb') as fh:
        pickle.dump({'data': np.zeros((2, 3072), np.uint8), 'labels': [0, 1], 'x': _Payload(str(marker))}, fh,
                    protocol=2)
    with pytest.raises(ValueError, match=f'{path}: refused to unpickle .*exec'):
        CIFAR10Batches(str(tmp_path), 'train')
    assert not marker.exists()


def test_cifar_batch_with_numpy1_module_paths_loads(tmp_path):
    """The released batches name numpy.core.multiarray (numpy 1); the restricted unpickler admits it."""
    make_cifar10(str(tmp_path), per_batch=2, test_size=2)
    path = tmp_path / 'cifar-10-batches-py' / 'test_batch'
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    blob = pickle.dumps({'data': data, 'labels': [4, 9], 'batch_label': 'testing batch 1 of 1'}, protocol=2)
    path.write_bytes(blob.replace(b'numpy._core.multiarray', b'numpy.core.multiarray'))
    test = CIFAR10Batches(str(tmp_path), 'test')
    assert test.targets == [4, 9] and np.array_equal(test.data[1].transpose(2, 0, 1).reshape(-1), data[1])


def test_cifar_label_out_of_range(tmp_path):
    make_cifar10(str(tmp_path), per_batch=2, test_size=2)
    path = tmp_path / 'cifar-10-batches-py' / 'data_batch_3'
    with open(path, 'wb') as fh:
        pickle.dump({'data': np.zeros((2, 3072), np.uint8), 'labels': [3, 10]}, fh, protocol=2)
    with pytest.raises(ValueError, match=rf'{path}: 2 labels for 2 images, 1 outside 0..9 \(e.g. 10\)'):
        CIFAR10Batches(str(tmp_path), 'train')


def test_safe_torch_load_refuses_code_and_names_broken_files(tmp_path):
    marker = tmp_path / 'marker'
    evil = tmp_path / 'evil.pth.tar'
    torch.save({'state_dict': {}, 'x': _Payload(str(marker))}, evil)
    with pytest.raises(ValueError, match=f'{evil}: refused to load'):
        _io.safe_torch_load(evil)
    truncated = tmp_path / 'cut.pth'
    torch.save({'w': torch.zeros(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(ValueError, match=f'{truncated} is not a readable torch checkpoint'):
        _io.safe_torch_load(truncated)
    assert not marker.exists()


def test_validate_refused_pickle_is_one_line(tmp_path, monkeypatch, capsys):
    marker = tmp_path / 'marker'
    evil = tmp_path / 'evil.pth.tar'
    torch.save({'state_dict': {}, 'x': _Payload(str(marker))}, evil)
    code, err = _cli(monkeypatch, capsys, validate_mod, ['--dataset', 'synthetic', '--checkpoint', str(evil)])
    assert code == 2 and err.strip().splitlines() == [f's4nd-validate: error: {evil}: refused to load: it holds '
                                                      + err.split(': refused to load: it holds ', 1)[1].strip()]
    assert 'Traceback' not in err and not marker.exists()


def test_atomic_write_never_removes_the_old_file_first(tmp_path, monkeypatch):
    path = tmp_path / 'metrics.json'
    _io.atomic_write_text(path, 'old')

    def killed(src, dst):
        assert path.read_text() == 'old'  # at the last step the old file is still whole
        raise _Killed

    monkeypatch.setattr(_io.os, 'replace', killed)
    with pytest.raises(_Killed):
        _io.atomic_write_text(path, 'new')
    monkeypatch.undo()
    assert path.read_text() == 'old' and os.listdir(tmp_path) == ['metrics.json']
    (tmp_path / '.metrics.json.tmp-stale').write_text('x')  # what a real kill leaves
    _io.remove_stale_temporaries(str(tmp_path))
    assert os.listdir(tmp_path) == ['metrics.json']


# --- nothing lost: reruns, resume flags, kills -----------------------------------------------------------

def test_rerun_into_existing_run_refused_unless_overwrite(tmp_path):
    _train(tmp_path, '--epochs', '2')
    with pytest.raises(ValueError, match=r"already holds a run .*--resume .*another --experiment.*--overwrite"):
        _train(tmp_path, '--epochs', '1')
    out = _train(tmp_path, '--epochs', '1', '--overwrite')
    files = sorted(f for f in os.listdir(out['output_dir']) if f.startswith('checkpoint-'))
    assert files == ['checkpoint-0.pth.tar'] and len(_rows(out['output_dir'])) == 1


def test_resume_flags_refused_or_applied(tmp_path, caplog):
    out = _train(tmp_path, '--epochs', '1', '--model-ema')
    run = out['output_dir']
    with pytest.raises(ValueError, match=r'--resume: --batch-size 4 \(the run has 8\), --lr 0.02 \(the run has 0.01\): '
                                         r'these flags cannot change'):
        train_mod.main(['--resume', run, '--lr', '0.02', '--batch-size', '4'])
    with pytest.raises(ValueError, match=r'--model-kwargs .*the run has .*cannot change'):
        train_mod.main(['--resume', run, '--model-kwargs', 'd_model=16'])
    with caplog.at_level('INFO'):
        res = train_mod.main(['--resume', run, '--epochs', '2', '-j', '0'])  # the rest: the run's own flags
    assert 'Changed: --epochs 1 -> 2' in caplog.text
    assert [r['epoch'] for r in res['history']] == [0, 1] and 'ema_top1' in res['history'][1]
    import yaml
    with open(os.path.join(run, 'args.yaml')) as fh:
        saved = yaml.safe_load(fh)
    assert saved['epochs'] == 2 and saved['lr'] == 0.01 and saved['model_ema'] and saved['model_kwargs'] == {
        'd_model': 8, 'depth': 1, 'd_state': 4}
    assert _state(os.path.join(run, 'last.pth.tar'))['args'].epochs == 2


def _kill_then_resume(tmp_path, monkeypatch, patch):
    ref = _train(tmp_path, '--epochs', '2', name='ref')
    patch(monkeypatch)
    with pytest.raises(_Killed):
        _train(tmp_path, '--epochs', '2', name='killed')
    monkeypatch.undo()
    run = str(tmp_path / 'killed')
    (tmp_path / 'killed' / '.metrics.json.tmp-stale').write_text('x')
    before = _rows(run)
    _train(tmp_path, '--epochs', '2', '--resume', run, name='killed')
    assert _rows(run) == _rows(ref['output_dir']) and len(_rows(run)) == 2
    a, b = _state(os.path.join(ref['output_dir'], 'last.pth.tar')), _state(os.path.join(run, 'last.pth.tar'))
    assert a['progress'] == b['progress'] == {'epoch': 2, 'batch': 0, 'num_updates': 4}
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k]) for k in a['state_dict'])
    assert sorted(os.listdir(run)) == sorted(os.listdir(ref['output_dir']))  # no *.tmp*, no recovery-*
    return before


def test_kill_just_after_final_last_checkpoint(tmp_path, monkeypatch):
    def patch(mp):
        save = checkpoint_mod.ResumableSaver.save_checkpoint

        def save_then_die(self, epoch, metric):
            out = save(self, epoch, metric)
            if epoch == 1:
                raise _Killed
            return out
        mp.setattr(checkpoint_mod.ResumableSaver, 'save_checkpoint', save_then_die)

    before = _kill_then_resume(tmp_path, monkeypatch, patch)
    assert len(before) == 2  # the logs were complete before the checkpoint that holds them


def test_kill_before_new_last_replaces_old(tmp_path, monkeypatch):
    def patch(mp):
        link, calls = checkpoint_mod.atomic_link, []

        def link_or_die(src, dst):
            if dst.endswith('last.pth.tar'):
                calls.append(dst)
                if len(calls) == 2:  # epoch 1: the old last.pth.tar must still be whole here
                    assert _state(dst)['progress']['epoch'] == 1
                    raise _Killed
            link(src, dst)
        mp.setattr(checkpoint_mod, 'atomic_link', link_or_die)

    _kill_then_resume(tmp_path, monkeypatch, patch)


def test_resume_falls_back_past_unreadable_newest(tmp_path, caplog):
    ref = _train(tmp_path, '--epochs', '2', name='ref')
    out = _train(tmp_path, '--epochs', '2', name='run')
    last = os.path.join(out['output_dir'], 'last.pth.tar')
    with open(last, 'r+b') as fh:  # truncates its hard links (checkpoint-1, model_best) too
        fh.truncate(100)
    with caplog.at_level('WARNING'):
        _train(tmp_path, '--epochs', '2', '--resume', out['output_dir'], name='run')
    assert f'cannot resume from {last}' in caplog.text
    assert _rows(out['output_dir']) == _rows(ref['output_dir'])
    a, b = _state(os.path.join(ref['output_dir'], 'last.pth.tar')), _state(last)
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k]) for k in a['state_dict'])


# --- no silent wrong answers -----------------------------------------------------------------------------

def test_hmdb51_class_folders_and_split_files_must_match(tmp_path):
    from s4nd_timm.train.video import HMDB51, hmdb51_classes, read_hmdb51_split
    root = str(tmp_path)
    make_hmdb51(root, videos_per_class=2)
    videos, splits = os.path.join(root, 'videos'), os.path.join(root, 'testTrainMulti_7030_splits')
    train_classes, train_items = read_hmdb51_split(videos, splits, 1, 'train')
    test_classes, test_items = read_hmdb51_split(videos, splits, 1, 'test')
    assert train_classes == test_classes == sorted(os.listdir(videos))
    assert {y for _, y in train_items} == {y for _, y in test_items} == {0, 1, 2}
    os.remove(os.path.join(splits, 'cartwheel_test_split1.txt'))
    with pytest.raises(ValueError, match=r"1 class folder\(s\) .* no split file for split 1: missing "
                                         r"\['cartwheel_test_split1.txt'\]"):
        HMDB51(root, 'train', split_id=1)
    assert len(hmdb51_classes(videos, splits, 2)) == 3  # other folds are whole
    os.makedirs(os.path.join(videos, 'zz_extra'))
    with pytest.raises(ValueError, match=r"zz_extra_test_split2.txt"):
        hmdb51_classes(videos, splits, 2)


def test_corrupt_jpeg_skipped_named_counted(tmp_path, caplog):
    root = make_image_folder(str(tmp_path / 'data'), num_classes=2, per_class=4, size=12)
    bad_train = os.path.join(root, 'train', 'n00000001', 'img_1_0.JPEG')
    bad_val = os.path.join(root, 'val', 'n00000000', 'img_0_1.JPEG')
    with open(bad_train, 'r+b') as fh:
        fh.truncate(200)  # a truncated JPEG: opens, fails to decode
    with open(bad_val, 'wb') as fh:
        fh.write(b'not a jpeg' * 10)
    config = {'input_size': (3, 8, 8), 'interpolation': 'bilinear', 'mean': (0.5,) * 3, 'std': (0.5,) * 3,
              'crop_pct': 1.0}
    val = create_dataset('imagenet', 'val', False, config, data_dir=root)
    x, y, failures = next(iter(create_loader(val, 4, False, 0)))
    assert x.shape[0] == y.shape[0] == 3 and len(failures) == 1 and bad_val in failures[0]
    with caplog.at_level('INFO'):
        out = train_mod.main(['--dataset', 'imagenet', '--data-dir', root, *ISO, '--img-size', '8', '-b', '4',
                              '--epochs', '1', '-j', '0', '--output', str(tmp_path), '--experiment', 'img'])
    assert out['history'][0]['skipped_images'] == 2
    assert f'skipped unreadable image {bad_train}' in caplog.text and f'skipped unreadable image {bad_val}' in caplog.text
    assert 'skipped 2' in caplog.text


@pytest.mark.parametrize('argv, message', [
    (['--train-num-samples', '0'], '--train-num-samples 0: expected a positive value'),
    (['--val-num-samples', '-3'], '--val-num-samples -3: expected a positive value'),
    (['--epochs', '0'], '--epochs 0: expected a positive value'),
    (['--img-size', '0'], '--img-size 0: expected a positive value'),
    (['--dataset', 'cifar10', '--data-dir', '.', '--in-chans', '1'], '--in-chans 1: --dataset cifar10 has RGB'),
    (['--model-kwargs', 'd_model'], "argument --model-kwargs: expected key=value items (e.g. d_model=64); got "
                                    "'d_model'"),
])
def test_train_flag_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    code, err = _cli(monkeypatch, capsys, train_mod, [*TINY, '--output', str(tmp_path), *argv])
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith('s4nd-train: error: ')
    assert message in err


@pytest.mark.parametrize('argv, message', [
    (['--model-kwargs', 'foo=1'], "does not take the argument(s) ['foo']"),
    (['--initial-checkpoint', 'nowhere.pth'], "--initial-checkpoint 'nowhere.pth' not found"),
    (['--in-chans', '1', '--mean', '0.5', '0.5', '0.5'], '--mean has 3 values but the input has 1 channel(s)'),
    pytest.param(['--device', 'cuda'], '--device cuda: CUDA is not available',
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA present')),
])
def test_train_user_errors_are_one_line(tmp_path, monkeypatch, capsys, argv, message):
    code, err = _cli(monkeypatch, capsys, train_mod, [*TINY, '--output', str(tmp_path), *argv])
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err and 'Traceback' not in err
    code, err = _cli(monkeypatch, capsys, train_mod, [*TINY, '--output', str(tmp_path), *argv, '--debug'])
    assert code == 2 and 'Traceback' in err and message in err.strip().splitlines()[-1]
    code, err = _cli(monkeypatch, capsys, train_mod, [*TINY, '--output', str(tmp_path), *argv], env_debug=True)
    assert code == 2 and 'Traceback' in err and message in err.strip().splitlines()[-1]


def test_real_bugs_keep_their_traceback(monkeypatch, capsys):
    from s4nd_timm.train.engine import run_cli

    def buggy():
        raise KeyError('a bug')
    monkeypatch.setattr(sys, 'argv', ['s4nd-train'])
    with pytest.raises(KeyError):
        run_cli(buggy, 's4nd-train')


def test_unwritable_outputs_refused_at_start(tmp_path, monkeypatch, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    code, err = _cli(monkeypatch, capsys, train_mod, [*TINY, '--output', str(a_file), '--experiment', 'run'])
    assert code == 2 and '--output/--experiment run folder' in err and f'cannot write in {str(a_file)!r}' in err
    code, err = _cli(monkeypatch, capsys, train_mod, [*TINY, '--output', str(tmp_path), '--experiment', 'a_file'])
    assert code == 2 and f"{str(a_file)!r} is a file; expected a folder" in err
    code, err = _cli(monkeypatch, capsys, validate_mod, ['--dataset', 'synthetic', '--pretrained', '--model',
                                                         's4nd_iso_cifar_small', '--results-file', str(tmp_path)])
    assert code == 2 and f"--results-file {str(tmp_path)!r} is a folder; expected a file name" in err


def test_in_chans_1_on_synthetic_trains(tmp_path):
    out = _train(tmp_path, '--in-chans', '1', '--epochs', '1')  # the model's RGB mean / std averaged to 1 channel
    assert torch.isfinite(torch.tensor(out['history'][0]['train_loss']))


def test_synthetic_zero_samples_refused():
    config = {'input_size': (3, 8, 8), 'mean': (0.5,) * 3, 'std': (0.5,) * 3}
    with pytest.raises(ValueError, match=r'num_samples 0 \(.*--num-samples\): expected a positive number'):
        create_dataset('synthetic', 'val', False, config, num_samples=0)


def test_validate_needs_weights_and_ema(tmp_path, monkeypatch, capsys):
    code, err = _cli(monkeypatch, capsys, validate_mod, ['--dataset', 'synthetic', '--model', 's4nd_iso_cifar_small'])
    assert code == 2 and 'pass --checkpoint PATH' in err and '--pretrained' in err
    out = _train(tmp_path, '--epochs', '1')
    last = os.path.join(out['output_dir'], 'last.pth.tar')
    code, err = _cli(monkeypatch, capsys, validate_mod, ['--dataset', 'synthetic', '--checkpoint', last, '--use-ema'])
    assert code == 2 and f'{last} has no EMA weights' in err and 'drop --use-ema' in err
    code, err = _cli(monkeypatch, capsys, validate_mod, ['--dataset', 'synthetic', '--checkpoint', last,
                                                         '--val-num-samples', '0'])
    assert code == 2 and '--val-num-samples 0: expected a positive value' in err
    code, err = _cli(monkeypatch, capsys, validate_mod, ['--dataset', 'synthetic', '--checkpoint', last,
                                                         '--in-chans', '1', '-j', '0'])
    assert code == 2 and f'checkpoint {last} does not fit the model' in err and len(err.strip().splitlines()) == 1
    code, err = _cli(monkeypatch, capsys, validate_mod, ['--dataset', 'synthetic', '--checkpoint', 'missing.pth'])
    assert code == 2 and "--checkpoint 'missing.pth' not found" in err


def test_validate_refuses_more_classes_than_the_model(tmp_path, monkeypatch, capsys):
    import argparse

    import timm
    root = make_image_folder(str(tmp_path / 'data'), num_classes=3, per_class=2, size=12)
    model = timm.create_model('s4nd_iso_cifar_small', num_classes=2, d_model=8, depth=1, d_state=4, img_size=8)
    ckpt = tmp_path / 'two.pth'
    torch.save({'state_dict': model.state_dict(), 'args': argparse.Namespace(
        model='s4nd_iso_cifar_small', model_kwargs=dict(d_model=8, depth=1, d_state=4), num_classes=2,
        img_size=8)}, ckpt)
    code, err = _cli(monkeypatch, capsys, validate_mod, ['--dataset', 'imagenet', '--data-dir', root, '--checkpoint',
                                                         str(ckpt), '-j', '0'])
    assert code == 2 and 'imagenet/val has 3 classes but the model has 2 outputs' in err


def test_validate_does_not_import_train():
    import subprocess
    code = "import sys, s4nd_timm.train.validate; assert 's4nd_timm.train.train' not in sys.modules"
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_local_dir_with_broken_config_is_one_line(tmp_path, monkeypatch, capsys):
    folder = tmp_path / 'model'
    folder.mkdir()
    code, err = _cli(monkeypatch, capsys, validate_mod, ['--dataset', 'synthetic', '--model', f'local-dir:{folder}',
                                                         '--pretrained'])
    assert code == 2 and f"no {folder / 'config.json'}" in err and len(err.strip().splitlines()) == 1
    (folder / 'config.json').write_text('{"architecture": "s4nd_iso_cifar_small",')
    code, err = _cli(monkeypatch, capsys, validate_mod, ['--dataset', 'synthetic', '--model', f'local-dir:{folder}',
                                                         '--pretrained'])
    assert code == 2 and f"{folder / 'config.json'} is not valid JSON" in err and len(err.strip().splitlines()) == 1
