"""s4nd-train / s4nd-validate: SSM parameter groups, one tiny epoch per dataset, kill -9 and resume,
torchrun with two CPU ranks, resolution schedule, clear errors. Tiny S4ND configs, CPU."""
import os
import signal
import socket
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
from _fixtures import make_cifar10, make_hmdb51, make_image_folder
from s4nd_timm.train.engine import accepts_rate, forward_at_rate, resize_for_rate
from s4nd_timm.train.optim import create_optimizer
from s4nd_timm.train.train import main as train_main
from s4nd_timm.train.train import parse_prog_res
from s4nd_timm.train.validate import main as validate_main

from s4nd_timm import S4ND
from s4nd_timm._io import safe_torch_load

CONVNEXT_2D = ['--model', 's4nd_convnext_micro', '--model-kwargs', 'depths=(1,1,1,1)', 'dims=(8,16,16,16)',
               'd_state=4', '--img-size', '32']
CONVNEXT_3D = ['--model', 's4nd_convnext_tiny_3d', '--model-kwargs', 'depths=(1,1,1,1)', 'dims=(8,16,16,16)',
               'd_state=4', '--img-size', '32', '--num-frames', '4']
ISO = ['--model', 's4nd_iso_cifar_small', '--model-kwargs', 'd_model=16', 'depth=2', 'd_state=4']
COMMON = ['-j', '0', '--log-interval', '1', '--warmup-epochs', '0', '--lr', '0.01']
SUBPROCESS_ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')


def _train(tmp_path, *argv, name='run'):
    return train_main(list(argv) + COMMON + ['--output', str(tmp_path), '--experiment', name])


def _checkpoint_state(path):
    return safe_torch_load(path)


def _assert_checkpoint_loads(run_dir, model_name, num_classes, **model_kwargs):
    """A fresh model takes the checkpoint through timm's loader and ends up with exactly its weights."""
    path = os.path.join(run_dir, 'last.pth.tar')
    model = timm.create_model(model_name, num_classes=num_classes, **model_kwargs)
    timm.models.load_checkpoint(model, path, use_ema=False)
    saved = _checkpoint_state(path)['state_dict']
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k


# --- optimizer groups ----------------------------------------------------------------------------------

def test_ssm_param_groups_own_lr_and_no_weight_decay():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = S4ND(8, ndim=2, d_state=4, ssm_lr=1e-3)
            self.mix_global_lr = S4ND(8, ndim=2, d_state=4)
            self.head = nn.Linear(8, 3)

    model = Tiny()
    opt = create_optimizer(model, opt='adamw', lr=0.01, weight_decay=0.05, momentum=0.9)
    group_of = {id(p): g for g in opt.param_groups for p in g['params']}
    assert len(group_of) == sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))
    for layer, lr in ((model.mix, 1e-3), (model.mix_global_lr, 0.01)):
        for kernel in layer.kernel:
            for name in ('inv_dt', 'A_real', 'A_imag', 'B'):
                g = group_of[id(getattr(kernel, name))]
                assert g['lr'] == lr and g['weight_decay'] == 0.0, name
            assert group_of[id(kernel.C)]['weight_decay'] == 0.05 and group_of[id(kernel.C)]['lr'] == 0.01
    assert group_of[id(model.head.bias)]['weight_decay'] == 0.0
    assert group_of[id(model.head.weight)]['weight_decay'] == 0.05


def test_ssm_param_groups_on_s4nd_model():
    model = timm.create_model('s4nd_iso_cifar_small', d_model=16, depth=2, d_state=4)
    opt = create_optimizer(model, opt='adamw', lr=0.01, weight_decay=0.05, momentum=0.9)
    hinted = [p for p in model.parameters() if hasattr(p, '_optim')]
    assert hinted
    for g in opt.param_groups:
        if any(hasattr(p, '_optim') for p in g['params']):
            assert all(hasattr(p, '_optim') for p in g['params'])
            assert g['weight_decay'] == 0.0 and g['lr'] == g['params'][0]._optim.get('lr', 0.01)
    assert sum(len(g['params']) for g in opt.param_groups if g['name'].startswith('ssm')) == len(hinted)


# --- one tiny epoch per dataset ------------------------------------------------------------------------

def test_train_epoch_image_folder(tmp_path):
    root = make_image_folder(str(tmp_path / 'data'), num_classes=3, per_class=4, size=40)
    out = _train(tmp_path, '--dataset', 'imagenet', '--data-dir', root, *CONVNEXT_2D, '-b', '4', '--epochs', '1',
                 '--mixup', '0.2', '--cutmix', '1.0', '--aa', 'rand-m9-mstd0.5-inc1', '--reprob', '0.25',
                 '--model-ema', '--drop-path', '0.1', '--amp', '--amp-dtype', 'bfloat16')
    row = out['history'][0]
    assert torch.isfinite(torch.tensor(row['train_loss'])) and 0 <= row['eval_top1'] <= 100 and 'ema_top1' in row
    _assert_checkpoint_loads(out['output_dir'], 's4nd_convnext_micro', 3, depths=(1, 1, 1, 1), dims=(8, 16, 16, 16),
                             d_state=4, img_size=32)
    assert {'summary.csv', 'metrics.json', 'args.yaml', 'log.txt', 'model_best.pth.tar'} <= set(
        os.listdir(out['output_dir']))


def test_train_epoch_cifar10(tmp_path):
    make_cifar10(str(tmp_path / 'data'), per_batch=4, test_size=8)
    out = _train(tmp_path, '--dataset', 'cifar10', '--data-dir', str(tmp_path / 'data'), *ISO, '--crop-pad', '4',
                 '-b', '8', '--epochs', '1', '--grad-accum-steps', '2', '--sched-on-updates', '--clip-grad', '1.0',
                 '--amp', '--amp-dtype', 'float16')
    assert torch.isfinite(torch.tensor(out['history'][0]['train_loss']))
    assert out['history'][0]['img_size'] == 32
    _assert_checkpoint_loads(out['output_dir'], 's4nd_iso_cifar_small', 10, d_model=16, depth=2, d_state=4)


def test_train_epoch_video_hmdb51(tmp_path, caplog):
    root = str(tmp_path / 'data')
    fold1 = make_hmdb51(root, videos_per_class=4)
    with open(os.path.join(root, 'videos', fold1['train'][0]), 'wb') as fh:
        fh.write(b'corrupt' * 20)
    with caplog.at_level('WARNING'):
        out = _train(tmp_path, '--dataset', 'hmdb51', '--data-dir', root, *CONVNEXT_3D, '-b', '2', '--epochs', '1',
                     '--aa', 'rand-m7-n1', '--mixup', '0.2', '--channels-last', '--grad-checkpointing')
    row = out['history'][0]
    assert torch.isfinite(torch.tensor(row['train_loss'])) and row['skipped_videos'] == 1
    assert any('skipped unreadable video' in r.message and fold1['train'][0] in r.message for r in caplog.records)
    _assert_checkpoint_loads(out['output_dir'], 's4nd_convnext_tiny_3d', 3, depths=(1, 1, 1, 1), dims=(8, 16, 16, 16),
                             d_state=4, img_size=32, num_frames=4)


# --- resolution ----------------------------------------------------------------------------------------

class _RateProbe(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.seen = []

    def forward(self, x, rate=None):
        self.seen.append((tuple(x.shape), rate))
        return self.fc(x.mean(dim=tuple(range(2, x.dim()))))


def test_rate_reaches_data_and_model():
    probe = _RateProbe()
    assert accepts_rate(probe) and not accepts_rate(nn.Linear(3, 2))
    x = torch.rand(2, 3, 32, 32)
    y = resize_for_rate(x, 4.0)
    assert y.shape == (2, 3, 8, 8) and resize_for_rate(x, 1.0) is x
    assert torch.allclose(resize_for_rate(torch.full((1, 3, 32, 32), 0.3), 4.0), torch.full((1, 3, 8, 8), 0.3))
    assert y.std() < 0.5 * x.std()  # antialiased: averages over the cell instead of sampling
    forward_at_rate(probe, y, 4.0, True)
    forward_at_rate(probe, resize_for_rate(torch.rand(2, 3, 5, 32, 32), 2.0), 2.0, True)
    assert probe.seen == [((2, 3, 8, 8), (4.0, 4.0)), ((2, 3, 5, 16, 16), (1.0, 2.0, 2.0))]
    discrete = timm.create_model('s4nd_iso_cifar_small', d_model=8, depth=1, d_state=4, s4nd_resolution='discrete')
    assert not accepts_rate(discrete)


def test_prog_res_schedule(tmp_path):
    assert parse_prog_res(['8:2', '16:1'], 3) == [(8, 2), (16, 1)]
    with pytest.raises(ValueError, match='cover 3 epochs but --epochs is 4'):
        parse_prog_res(['8:2', '16:1'], 4)
    with pytest.raises(ValueError, match='SIZE:EPOCHS'):
        parse_prog_res(['8x2'], 2)
    out = _train(tmp_path, '--dataset', 'synthetic', *ISO, '--img-size', '16', '--train-num-samples', '16',
                 '--val-num-samples', '8', '-b', '8', '--epochs', '2', '--prog-res', '8:1', '16:1')
    first, second = out['history']
    assert (first['img_size'], first['rate'], second['img_size'], second['rate']) == (8, 2.0, 16, 1.0)
    assert 'eval_top1@8' in first and 'eval_top1@16' not in second
    results = validate_main(['--dataset', 'synthetic', '--checkpoint', os.path.join(out['output_dir'], 'last.pth.tar'),
                             '--img-size', '8', '16', '32', '--val-num-samples', '8', '-j', '0'])
    assert [(r['img_size'], r['rate']) for r in results] == [(8, 2.0), (16, 1.0), (32, 0.5)]
    assert all(0 <= r['top1'] <= r['top5'] <= 100 and r['samples'] == 8 for r in results)


# --- errors --------------------------------------------------------------------------------------------

def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match='does not exist or is not a directory'):
        _train(tmp_path, '--dataset', 'imagenet', '--data-dir', str(tmp_path / 'missing'), *ISO)
    with pytest.raises(ValueError, match="unknown model 'no_such_model'.*s4nd_convnext_tiny"):
        _train(tmp_path, '--dataset', 'synthetic', '--model', 'no_such_model')
    with pytest.raises(ValueError, match="unknown --dataset 'mnist'"):
        _train(tmp_path, '--dataset', 'mnist', *ISO)
    with pytest.raises(SystemExit):
        _train(tmp_path, '--dataset', 'synthetic', *ISO, '--mixup', '0.2', '-b', '3')
    res = subprocess.run([sys.executable, '-m', 's4nd_timm.train.train', '--dataset', 'cifar10', '--data-dir',
                          str(tmp_path)], capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=120)
    assert res.returncode == 2 and 's4nd-train: error: CIFAR-10 batch file(s)' in res.stderr


def test_runs_without_pytorchvideo_and_pyav(tmp_path):
    """Both are optional at run time: imports are lazy, image training works, HMDB-51 says what to install."""
    make_hmdb51(str(tmp_path / 'hmdb'), videos_per_class=2)
    code = f"""
import sys
sys.modules['av'] = sys.modules['pytorchvideo'] = None  # as if not installed
from s4nd_timm.train import train, validate
out = train.main({ISO + COMMON + ['--dataset', 'synthetic', '--img-size', '8', '--train-num-samples', '8',
                                  '--val-num-samples', '4', '-b', '4', '--epochs', '1', '--output', str(tmp_path)]!r})
assert out['history'][0]['train_loss'] > 0
from s4nd_timm.train.video import HMDB51
try:
    HMDB51({str(tmp_path / 'hmdb')!r})
except ImportError as e:
    print('HMDB51 error:', e)
assert 'pytorchvideo' not in sys.modules or sys.modules['pytorchvideo'] is None
"""
    res = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'HMDB51 error: HMDB-51 needs PyAV and pytorchvideo' in res.stdout
    assert 'pip install av pytorchvideo' in res.stdout


# --- kill -9 and resume --------------------------------------------------------------------------------

RESUME_ARGS = ['--dataset', 'synthetic', *ISO, '--img-size', '16', '--train-num-samples', '48',
               '--val-num-samples', '8', '-b', '8', '--epochs', '3', '--model-ema', '--mixup', '0.4',
               '--drop-path', '0.1', '--recovery-interval', '2', '--sched-on-updates', '--warmup-epochs', '1',
               '--lr', '0.01', '-j', '0', '--log-interval', '1', '--amp', '--amp-dtype', 'float16']


def _cmd(out, name, *extra):
    return [sys.executable, '-m', 's4nd_timm.train.train', *RESUME_ARGS, '--output', str(out), '--experiment', name,
            *extra]


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    ref = subprocess.run(_cmd(tmp_path, 'ref'), capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = subprocess.Popen(_cmd(tmp_path, 'killed'), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=SUBPROCESS_ENV)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if 'Saved recovery checkpoint: epoch 1, batch 2' in line:
            os.kill(proc.pid, signal.SIGKILL)  # mid-epoch, possibly mid-write of the next checkpoint
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, ''.join(lines[-30:])
    run = tmp_path / 'killed'
    res = subprocess.run(_cmd(tmp_path, 'killed', '--resume', str(run)), capture_output=True, text=True,
                         env=SUBPROCESS_ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'Resuming from' in res.stderr and 'epoch 1, batch' in res.stderr
    a, b = _checkpoint_state(tmp_path / 'ref' / 'last.pth.tar'), _checkpoint_state(run / 'last.pth.tar')
    assert a['progress'] == b['progress'] == {'epoch': 3, 'batch': 0, 'num_updates': 18}
    assert a['amp_scaler'] == b['amp_scaler']
    for key in ('state_dict', 'state_dict_ema'):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a['scheduler'] == b['scheduler']
    assert [r['train_loss'] for r in a['history']] == [r['train_loss'] for r in b['history']]
    assert not any(f.startswith('recovery-') for f in os.listdir(run))


# --- torchrun ------------------------------------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_torchrun_two_cpu_ranks_stay_in_sync(tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_addr=127.0.0.1',
           f'--master_port={_free_port()}', '-m', 's4nd_timm.train.train', '--dataset', 'synthetic', *ISO,
           '--img-size', '16', '--train-num-samples', '32', '--val-num-samples', '8', '-b', '4', '--epochs', '1',
           '--drop-path', '0.1', '--grad-accum-steps', '2', '-j', '0', '--output', str(tmp_path), '--experiment', 'ddp']
    res = subprocess.run(cmd, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert 'Distributed training: 2 processes, backend gloo' in res.stderr
    assert 'Replicas in sync across 2 ranks: max |param - rank 0| = 0' in res.stderr
    state = _checkpoint_state(tmp_path / 'ddp' / 'last.pth.tar')
    assert state['progress']['num_updates'] == 2 and len(state['ranks']) == 2  # 32 / (2 x 4) = 4 batches: 2 updates
