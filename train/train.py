"""``s4nd-train``: train S4ND (or any timm) models with timm's components.

Flow and flag names as timm's ``train.py``. Uses timm for model creation, data config and transforms, Mixup/CutMix, label smoothing,
``create_optimizer_v2`` (with S4ND SSM parameter groups, ``optim.py``), ``create_scheduler_v2``,
``ModelEmaV3``, ``CheckpointSaver`` (``checkpoint.py``), ``NativeScaler`` and distributed setup.
Additions: datasets in their released formats plus a synthetic one (``data.py``), a resolution schedule
(``--prog-res``, docs/design.md §5), exact resume after a kill at any moment (``--resume``, ``--recovery-interval``)
with a per-flag policy for what a resumed run may change (``RESUME_MAY_CHANGE``), refusal to write a new run
over an old one (``--overwrite``), per-epoch summary lines and CSV / JSON metric logs.

Launch: ``s4nd-train --dataset cifar10 --data-dir DIR --model ...``; multi-GPU / multi-node:
``torchrun --nproc_per_node=8 -m s4nd_timm.train.train ...`` (see train/README.md).
"""
import argparse
import csv
import glob
import io
import json
import logging
import os
import sys
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.nn as nn

from s4nd_timm._io import TMP_MARK, atomic_link, atomic_write_text, remove_stale_temporaries

from .checkpoint import EXTENSION, ResumableSaver, gather_rank_states, load_resume_checkpoint, set_rng_state
from .common import (
    ArgumentParser,
    ModelKwargs,
    amp_autocast,
    build_model,
    check_in_chans,
    check_positive,
    check_writable,
    dataset_num_classes,
    model_data_config,
    resolve_device,
    resolve_img_size,
    set_channels_last,
)
from .data import check_image_folder, create_dataset, create_loader, dataset_classes, dataset_kind, default_splits
from .engine import accepts_rate, evaluate, format_seconds, run_cli, setup_console_logging, train_one_epoch
from .optim import create_optimizer

__all__ = ['get_args_parser', 'parse_args', 'main', 'parse_prog_res', 'RESUME_MAY_CHANGE']

# flags a resumed run may change (applied and logged; left out, they keep the run's value); every other flag
# must keep the run's value. The last group is where and how this process runs: always this command's.
RESUME_MAY_CHANGE = ('epochs', 'workers', 'pin_mem', 'log_interval', 'recovery_interval', 'checkpoint_hist',
                     'validation_batch_size', 'data_dir', 'torchcompile', 'torchcompile_mode')
RESUME_RUNTIME = ('resume', 'output', 'experiment', 'overwrite', 'device', 'dist_backend', 'dist_url')
RUN_FILES = ('last', 'model_best', 'checkpoint-*', 'recovery-*')  # + EXTENSION; with the logs below
RUN_LOGS = ('metrics.json', 'summary.csv', 'args.yaml', 'log.txt')

_logger = logging.getLogger('train')


def get_args_parser() -> argparse.ArgumentParser:
    """Flags; names follow timm's train.py wherever the same idea exists."""
    parser = ArgumentParser('s4nd-train', description='Train S4ND / timm models (timm flag names).')

    group = parser.add_argument_group('Dataset parameters')
    group.add_argument('--data-dir', metavar='DIR', default=None, help='dataset root (not needed for synthetic)')
    group.add_argument('--dataset', '-d', metavar='NAME', default='imagenet',
                       help='imagenet (class folders), cifar10, hmdb51, synthetic, or a timm torch/ or hfds/ source')
    group.add_argument('--train-split', metavar='NAME', default=None, help='default: train')
    group.add_argument('--val-split', metavar='NAME', default=None,
                       help='default: val (imagenet, synthetic), test (cifar10, hmdb51)')
    group.add_argument('--train-num-samples', type=int, default=None, metavar='N', help='synthetic train size (5000)')
    group.add_argument('--val-num-samples', type=int, default=None, metavar='N', help='synthetic val size (1000)')
    group.add_argument('--num-frames', type=int, default=None, metavar='T',
                       help='frames per clip (hmdb51, default 16; with synthetic: render clips)')
    group.add_argument('--clip-duration', type=float, default=2.0, metavar='SEC', help='hmdb51 clip length (2 s)')
    group.add_argument('--frame-stride', type=int, default=None, metavar='S',
                       help='hmdb51: clip spans T*S source frames (overrides --clip-duration)')
    group.add_argument('--hmdb-split', type=int, default=1, choices=(1, 2, 3), help='hmdb51 fold')

    group = parser.add_argument_group('Model parameters')
    group.add_argument('--model', default='s4nd_convnext_tiny', metavar='MODEL', help='timm model name')
    group.add_argument('--pretrained', action='store_true', help='start from pretrained weights')
    group.add_argument('--initial-checkpoint', default='', metavar='PATH', help='start from these weights')
    group.add_argument('--resume', default='', metavar='PATH',
                       help='continue a run: a checkpoint file or a run folder (newest of last / recovery-*)')
    group.add_argument('--num-classes', type=int, default=None, metavar='N', help='default: from the dataset')
    group.add_argument('--gp', default=None, metavar='POOL', help='global pool type (model default)')
    group.add_argument('--img-size', type=int, default=None, metavar='N', help='base image size (model default)')
    group.add_argument('--in-chans', type=int, default=None, metavar='N', help='input channels')
    group.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N', help='C H W')
    group.add_argument('--crop-pct', default=None, type=float, metavar='PCT', help='eval center-crop fraction')
    group.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    group.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    group.add_argument('--interpolation', default='', metavar='NAME', help='eval resize interpolation')
    group.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='per-process batch size')
    group.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')
    group.add_argument('--channels-last', action='store_true', help='channels_last memory format')
    group.add_argument('--grad-accum-steps', type=int, default=1, metavar='N', help='micro-batches per update')
    group.add_argument('--grad-checkpointing', action='store_true', help='activation checkpointing in the model')
    group.add_argument('--model-kwargs', nargs='*', default={}, action=ModelKwargs, help='key=value model kwargs')
    group.add_argument('--torchcompile', '--compile', nargs='?', type=str, default=None, const='inductor',
                       metavar='BACKEND', help='torch.compile the model (backend, default inductor)')
    group.add_argument('--torchcompile-mode', type=str, default=None, help='torch.compile mode')

    group = parser.add_argument_group('Device parameters')
    group.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    group.add_argument('--amp', action='store_true', help='mixed precision (autocast)')
    group.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'),
                       help='float16 uses a loss scaler')
    group.add_argument('--sync-bn', action='store_true', help='synchronized BatchNorm (distributed)')
    group.add_argument('--dist-backend', default=None, help='default: nccl on GPU, gloo on CPU')
    group.add_argument('--dist-url', default=None, help='default: env:// (torchrun)')
    group.add_argument('--find-unused-parameters', action='store_true',
                       help='DDP find_unused_parameters (models with parameters unused in forward)')

    group = parser.add_argument_group('Optimizer parameters')
    group.add_argument('--opt', default='adamw', metavar='OPTIMIZER', help='timm optimizer name')
    group.add_argument('--opt-eps', default=None, type=float, metavar='EPSILON')
    group.add_argument('--opt-betas', default=None, type=float, nargs='+', metavar='BETA')
    group.add_argument('--momentum', type=float, default=0.9, metavar='M')
    group.add_argument('--weight-decay', type=float, default=0.05, help='(SSM tensors: from their hints, 0)')
    group.add_argument('--clip-grad', type=float, default=None, metavar='NORM')
    group.add_argument('--clip-mode', type=str, default='norm', help='norm, value or agc')

    group = parser.add_argument_group('Learning rate schedule parameters')
    group.add_argument('--sched', type=str, default='cosine', metavar='SCHEDULER')
    group.add_argument('--sched-on-updates', action='store_true', help='step the schedule per update')
    group.add_argument('--lr', type=float, default=1e-3, metavar='LR',
                       help='learning rate (SSM tensors with an lr hint keep theirs)')
    group.add_argument('--warmup-lr', type=float, default=1e-5, metavar='LR')
    group.add_argument('--min-lr', type=float, default=1e-5, metavar='LR')
    group.add_argument('--epochs', type=int, default=300, metavar='N')
    group.add_argument('--decay-epochs', type=float, default=90, metavar='N')
    group.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+', metavar='MILESTONES')
    group.add_argument('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE')
    group.add_argument('--warmup-epochs', type=int, default=5, metavar='N')
    group.add_argument('--warmup-prefix', action='store_true', help='warmup outside the decay schedule')
    group.add_argument('--cooldown-epochs', type=int, default=0, metavar='N')
    group.add_argument('--patience-epochs', type=int, default=10, metavar='N')

    group = parser.add_argument_group('Augmentation and regularization parameters')
    group.add_argument('--no-aug', action='store_true', help='no training augmentation')
    group.add_argument('--train-crop-mode', type=str, default=None, help="timm's: rrc (default), rkrc, rkrr")
    group.add_argument('--crop-pad', type=int, default=0, metavar='N',
                       help='CIFAR crop: pad N (symmetric) and random-crop back, instead of random-resized-crop')
    group.add_argument('--scale', type=float, nargs='+', default=None, metavar='PCT')
    group.add_argument('--ratio', type=float, nargs='+', default=None, metavar='RATIO')
    group.add_argument('--hflip', type=float, default=0.5)
    group.add_argument('--vflip', type=float, default=0.)
    group.add_argument('--color-jitter', type=float, default=0.4, metavar='PCT')
    group.add_argument('--aa', type=str, default=None, metavar='NAME',
                       help="RandAugment etc., e.g. rand-m9-mstd0.5-inc1 (video: rand-m7-n1)")
    group.add_argument('--aug-repeats', type=float, default=0, help='repeated augmentation copies')
    group.add_argument('--reprob', type=float, default=0., metavar='PCT', help='random erase prob')
    group.add_argument('--remode', type=str, default='pixel')
    group.add_argument('--recount', type=int, default=1)
    group.add_argument('--mixup', type=float, default=0.0, help='mixup alpha')
    group.add_argument('--cutmix', type=float, default=0.0, help='cutmix alpha')
    group.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    group.add_argument('--mixup-prob', type=float, default=1.0)
    group.add_argument('--mixup-switch-prob', type=float, default=0.5)
    group.add_argument('--mixup-mode', type=str, default='batch')
    group.add_argument('--mixup-off-epoch', default=0, type=int, metavar='N')
    group.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    group.add_argument('--train-interpolation', type=str, default='random')
    group.add_argument('--drop', type=float, default=0.0, metavar='PCT', help='dropout rate')
    group.add_argument('--drop-path', type=float, default=None, metavar='PCT', help='drop path rate')
    group.add_argument('--prog-res', nargs='+', default=None, metavar='SIZE:EPOCHS',
                       help='resolution schedule, e.g. 8:50 16:25 32:25 (epochs sum to --epochs); rate = base / size')

    group = parser.add_argument_group('Model exponential moving average parameters')
    group.add_argument('--model-ema', action='store_true', help='track an EMA of the weights (ModelEmaV3)')
    group.add_argument('--model-ema-force-cpu', action='store_true', help='keep the EMA on CPU, no EMA eval')
    group.add_argument('--model-ema-decay', type=float, default=0.9998)
    group.add_argument('--model-ema-warmup', action='store_true')

    group = parser.add_argument_group('Miscellaneous parameters')
    group.add_argument('--seed', type=int, default=42, metavar='S')
    group.add_argument('--log-interval', type=int, default=50, metavar='N', help='batches between progress lines')
    group.add_argument('--recovery-interval', type=int, default=0, metavar='N',
                       help='batches between recovery checkpoints (0: only epoch checkpoints)')
    group.add_argument('--checkpoint-hist', type=int, default=10, metavar='N', help='epoch checkpoints kept')
    group.add_argument('-j', '--workers', type=int, default=4, metavar='N', help='data loading processes per rank')
    group.add_argument('--pin-mem', action='store_true')
    group.add_argument('--output', default='', metavar='PATH', help='runs folder (default ./output/train)')
    group.add_argument('--experiment', default='', metavar='NAME', help='run folder name (default: time-model-size)')
    group.add_argument('--overwrite', action='store_true',
                       help='start afresh in an existing run folder, deleting its checkpoints and logs')
    group.add_argument('--eval-metric', default='top1', choices=('top1', 'top5', 'loss'),
                       help='metric that ranks checkpoints')
    return parser


def parse_prog_res(spec: Optional[Sequence[str]], epochs: int) -> Optional[List[Tuple[int, int]]]:
    """['8:50', '16:25', '32:25'] -> [(8, 50), (16, 25), (32, 25)]; epochs must add up to ``epochs``."""
    if not spec:
        return None
    stages = []
    for item in spec:
        try:
            size, n = (int(v) for v in item.split(':'))
        except ValueError:
            raise ValueError(f"--prog-res entries are SIZE:EPOCHS (e.g. 16:25); got {item!r}") from None
        if size < 1 or n < 1:
            raise ValueError(f"--prog-res {item!r}: size and epochs must be positive")
        stages.append((size, n))
    if sum(n for _, n in stages) != epochs:
        raise ValueError(f"--prog-res stages cover {sum(n for _, n in stages)} epochs but --epochs is {epochs}; "
                         "make them equal")
    return stages


def check_args(args: argparse.Namespace) -> None:
    """Flag values and combinations (ValueError naming the flag and the fix)."""
    check_positive([('--epochs', args.epochs), ('--img-size', args.img_size), ('--input-size', args.input_size),
                    ('--train-num-samples', args.train_num_samples), ('--val-num-samples', args.val_num_samples),
                    ('-b/--batch-size', args.batch_size), ('-vb/--validation-batch-size', args.validation_batch_size),
                    ('--num-frames', args.num_frames), ('--num-classes', args.num_classes),
                    ('--grad-accum-steps', args.grad_accum_steps), ('--log-interval', args.log_interval),
                    ('--checkpoint-hist', args.checkpoint_hist)])
    kind = dataset_kind(args.dataset)
    mixup_active = args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None
    if mixup_active and args.batch_size % 2:
        raise ValueError(f'Mixup / CutMix need an even --batch-size; got {args.batch_size}')
    is_video = kind == 'hmdb51' or (kind == 'synthetic' and args.num_frames is not None)
    if is_video and (args.cutmix > 0 or args.cutmix_minmax is not None):
        raise ValueError('--cutmix works on images only; use --mixup for video')
    if kind in ('imagenet', 'cifar10', 'hmdb51', 'timm') and not args.data_dir:
        raise ValueError(f'--dataset {args.dataset} reads files: pass --data-dir')
    if kind == 'timm' and not args.num_classes:
        raise ValueError(f'--dataset {args.dataset}: pass --num-classes')
    check_in_chans(args.dataset, args.in_chans)
    parse_prog_res(args.prog_res, args.epochs)
    args.is_video = is_video


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse and check flag combinations (errors name the flag and the fix)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    train_split, val_split = default_splits(args.dataset)
    args.train_split = args.train_split or train_split
    args.val_split = args.val_split or val_split
    if not args.resume:  # a resumed run is checked once its own flags are merged in (main)
        try:
            check_args(args)
        except ValueError as e:
            parser.error(str(e))
    return args


def explicit_flags(argv: Optional[Sequence[str]]) -> Set[str]:
    """The destinations of the flags given on the command line (not left at their defaults)."""
    parser = get_args_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(sys.argv[1:] if argv is None else argv)))


def _flag(key: str) -> str:
    return '--' + key.replace('_', '-')


def merge_resume_args(args: argparse.Namespace, saved: argparse.Namespace, explicit: Set[str],
                      epochs_done: int) -> List[str]:
    """Make ``args`` the resumed run's flags; returns the changes ('--epochs 3 -> 5').

    A flag left out keeps the run's value. A flag given with another value is applied when it is in
    ``RESUME_MAY_CHANGE`` (``--epochs`` may extend or shorten what is left of the run) and refused otherwise,
    with the run's value and the new one; ``RESUME_RUNTIME`` flags always take this command's value.
    """
    refused, changes = [], []
    for key in vars(get_args_parser().parse_args([])):
        if key in RESUME_RUNTIME or not hasattr(saved, key):
            continue
        old, new = getattr(saved, key), getattr(args, key)
        if key not in explicit or new == old:
            setattr(args, key, old)
        elif key in RESUME_MAY_CHANGE:
            changes.append(f'{_flag(key)} {old} -> {new}')
        else:
            refused.append(f'{_flag(key)} {new} (the run has {old})')
    if refused:
        raise ValueError(f"--resume: {', '.join(refused)}: these flags cannot change when a run is resumed. Leave them "
                         "out to continue the run as it was, or start a new run with another --experiment.")
    if args.epochs < epochs_done:
        raise ValueError(f'--resume: --epochs {args.epochs} is below the {epochs_done} epochs the run has completed')
    check_args(args)
    return changes


# --- setup helpers ---------------------------------------------------------------------------------------

def augment_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """``data.train_transform`` keyword arguments from the augmentation flags."""
    return dict(no_aug=args.no_aug, scale=args.scale, ratio=args.ratio, hflip=args.hflip, vflip=args.vflip,
                color_jitter=args.color_jitter, auto_augment=args.aa, interpolation=args.train_interpolation,
                re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, crop_pad=args.crop_pad,
                crop_mode=args.train_crop_mode)


def _run_dir(args: argparse.Namespace, base_size: int) -> str:
    if args.resume and not args.output and not args.experiment:
        return args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.abspath(args.resume))
    from timm.models import safe_model_name
    name = args.experiment or '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model),
                                        str(base_size)])
    return os.path.join(args.output or './output/train', name)


def _run_files(folder: str) -> List[str]:
    """The checkpoints and logs of a run in ``folder`` (temporaries of a killed write included)."""
    if not os.path.isdir(folder):
        return []
    found = [p for n in RUN_FILES for p in glob.glob(os.path.join(glob.escape(folder), n + EXTENSION))]
    found += glob.glob(os.path.join(glob.escape(folder), f'.*{TMP_MARK}*'))
    return sorted(found + [os.path.join(folder, n) for n in RUN_LOGS if os.path.exists(os.path.join(folder, n))])


def check_run_dir(args: argparse.Namespace, folder: str) -> None:
    """The run folder can be written, and a new run (no --resume) does not write into a folder holding
    another run, unless --overwrite."""
    check_writable(folder, '--output/--experiment run folder', folder=True)
    existing = _run_files(folder)
    if args.resume or not existing or args.overwrite:
        return
    raise ValueError(f"run folder {folder!r} already holds a run ({', '.join(os.path.basename(p) for p in existing[:4])}"
                     f"{' ...' if len(existing) > 4 else ''}). Continue it with --resume {folder}, start a new run "
                     "with another --experiment, or pass --overwrite to delete it and start afresh.")


def _write_logs(history: List[Dict[str, Any]], output_dir: str) -> None:
    """summary.csv and metrics.json from the full history, each replaced atomically (one row per epoch)."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(os.path.join(output_dir, 'summary.csv'), buf.getvalue())
    atomic_write_text(os.path.join(output_dir, 'metrics.json'), json.dumps(history, indent=1) + '\n')


def check_replicas_in_sync(model: nn.Module, device: torch.device) -> float:
    """Largest |parameter - rank 0's| over all ranks (collective); 0.0 when DDP kept the replicas equal."""
    import torch.distributed as dist
    from timm.utils import unwrap_model
    flat = torch.cat([p.detach().reshape(-1).double() for p in unwrap_model(model).parameters()]).to(device)
    ref = flat.clone()
    dist.broadcast(ref, 0)
    diff = (flat - ref).abs().max()
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return diff.item()


# --- main --------------------------------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train; returns {'output_dir', 'history', 'best_metric', 'best_epoch', 'replica_max_diff'}."""
    args = parse_args(argv)
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs
    from timm.utils import ModelEmaV3, NativeScaler, init_distributed_device, random_seed, unwrap_model

    resolve_device(args.device)
    ckpt, resume_path, changes = None, None, []
    if args.resume:
        resume_path, ckpt = load_resume_checkpoint(args.resume)
        if isinstance(ckpt.get('args'), argparse.Namespace):
            changes = merge_resume_args(args, ckpt['args'], explicit_flags(argv), ckpt['progress']['epoch'])
        else:
            check_args(args)
    elif args.experiment:
        check_run_dir(args, _run_dir(args, 0))
    else:
        check_writable(args.output or './output/train', '--output', folder=True)
    device = init_distributed_device(args)
    args.primary = args.rank == 0
    setup_console_logging(logging.INFO if args.primary else logging.WARNING)
    if args.distributed:
        _logger.info(f'Distributed training: {args.world_size} processes, backend '
                     f'{torch.distributed.get_backend()}, device {device}.')
    random_seed(args.seed, args.rank)

    num_classes = dataset_num_classes(args.dataset, args.data_dir, args.train_split, args.hmdb_split, args.num_classes)
    if args.num_classes is not None and args.num_classes < num_classes:
        raise ValueError(f'--num-classes {args.num_classes} is below the {num_classes} classes of the training set')
    num_classes = args.num_classes or num_classes
    args.img_size = resolve_img_size(args.model, args.img_size, args.model_kwargs)
    model = build_model(args.model, num_classes=num_classes, pretrained=args.pretrained,
                        checkpoint_path=args.initial_checkpoint or None, model_kwargs=args.model_kwargs,
                        img_size=args.img_size, num_frames=args.num_frames, in_chans=args.in_chans,
                        global_pool=args.gp, drop_rate=args.drop, drop_path_rate=args.drop_path)
    if args.is_video and args.num_frames is None:
        args.num_frames = getattr(model, 'num_frames', None) or 16
    data_config = model_data_config(model, args.dataset, vars(args))
    base_size = data_config['input_size'][-1]
    args.img_size, args.num_classes = base_size, num_classes  # resolved values, saved with the checkpoints
    stages = parse_prog_res(args.prog_res, args.epochs) or [(base_size, args.epochs)]
    stage_sizes = [size for size, n in stages for _ in range(n)]

    data_kwargs = dict(data_dir=args.data_dir, seed=args.seed, num_classes=args.num_classes,
                       num_frames=args.num_frames, clip_duration=args.clip_duration, frame_stride=args.frame_stride,
                       hmdb_split=args.hmdb_split)
    train_ds = create_dataset(args.dataset, args.train_split, True, data_config, num_samples=args.train_num_samples,
                              augment=augment_kwargs(args), **data_kwargs)
    if ckpt is not None and ckpt.get('train_samples', len(train_ds)) != len(train_ds):
        raise ValueError(f"--resume: the training set now has {len(train_ds)} samples, the run had "
                         f"{ckpt['train_samples']}; resume on the same data or start a new run")
    class_map = None
    if dataset_kind(args.dataset) == 'imagenet':
        class_map = {c: i for i, c in enumerate(dataset_classes(train_ds))}
        val_classes = sorted(e.name for e in os.scandir(check_image_folder(args.data_dir, args.val_split))
                             if e.is_dir())
        if set(val_classes) != set(class_map):
            raise ValueError(f'class folders differ between {args.train_split}/ and {args.val_split}/: only in '
                             f'{args.train_split}: {sorted(set(class_map) - set(val_classes))[:5]}, only in '
                             f'{args.val_split}: {sorted(set(val_classes) - set(class_map))[:5]}')
    eval_ds = create_dataset(args.dataset, args.val_split, False, data_config, num_samples=args.val_num_samples,
                             class_map=class_map, **data_kwargs)

    if args.grad_checkpointing:
        if not hasattr(model, 'set_grad_checkpointing'):
            raise ValueError(f'{args.model} has no set_grad_checkpointing(); drop --grad-checkpointing')
        model.set_grad_checkpointing(enable=True)
    if args.sync_bn and args.distributed:
        from timm.layers import convert_sync_batchnorm
        model = convert_sync_batchnorm(model)
    model.to(device)
    if args.channels_last:
        set_channels_last(model, args.is_video)
    optimizer = create_optimizer(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                 momentum=args.momentum, eps=args.opt_eps, betas=args.opt_betas)
    if args.primary:
        _logger.info(f'Model {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; '
                     'optimizer groups: ' + ', '.join(f"{g['name']} ({len(g['params'])} tensors, lr {g['lr']:g}, "
                                                      f"wd {g['weight_decay']:g})" for g in optimizer.param_groups))

    autocast = amp_autocast(device, args.amp, args.amp_dtype)
    loss_scaler = NativeScaler(device=device.type) if args.amp and args.amp_dtype == 'float16' else None
    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                               device='cpu' if args.model_ema_force_cpu else None)

    if ckpt is not None:
        model.load_state_dict(ckpt['state_dict'])
        optimizer.load_state_dict(ckpt['optimizer'])
        if model_ema is not None:
            if 'state_dict_ema' not in ckpt:
                raise ValueError(f'{resume_path} has no EMA weights; resume without --model-ema or from a run with it')
            unwrap_model(model_ema).load_state_dict(ckpt['state_dict_ema'])
        if loss_scaler is not None and loss_scaler.state_dict_key in ckpt:
            loss_scaler.load_state_dict(ckpt[loss_scaler.state_dict_key])
        _logger.info(f"Resuming from {resume_path}: epoch {ckpt['progress']['epoch']}, batch "
                     f"{ckpt['progress']['batch']}, {ckpt['progress']['num_updates']} updates."
                     + (f" Changed: {', '.join(changes)}." if changes else ''))

    if args.distributed:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(model, device_ids=[device] if device.type == 'cuda' else None,
                                        find_unused_parameters=args.find_unused_parameters)
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
    pass_rate = accepts_rate(model)
    # evaluation runs each rank's own shard without DDP: DDP's forward is a collective (buffer broadcast), and
    # unpadded shards (exact metrics) give ranks different batch counts
    eval_model = unwrap_model(model)

    loader = create_loader(train_ds, args.batch_size, True, args.seed, args.rank, args.world_size,
                           repeats=int(args.aug_repeats), num_workers=args.workers, pin_memory=args.pin_mem)
    eval_loader = create_loader(eval_ds, args.validation_batch_size or args.batch_size, False, args.seed, args.rank,
                                args.world_size, num_workers=args.workers, pin_memory=args.pin_mem)
    num_batches = len(loader)
    updates_per_epoch = (num_batches + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, _ = create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)

    mixup_fn = None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        from timm.data import Mixup
        mixup_fn = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                         prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                         label_smoothing=args.smoothing, num_classes=num_classes)
        train_loss_fn = SoftTargetCrossEntropy()
    elif args.smoothing:
        train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss_fn = nn.CrossEntropyLoss()

    start_epoch, start_batch, num_updates, history = 0, 0, 0, []
    if ckpt is not None:
        progress = ckpt['progress']
        start_epoch, start_batch, num_updates = progress['epoch'], progress['batch'], progress['num_updates']
        history = list(ckpt['history'])
        if args.epochs == getattr(ckpt.get('args'), 'epochs', args.epochs):
            lr_scheduler.load_state_dict(ckpt['scheduler'])
        else:  # as timm: the schedule is laid out over the new --epochs
            _logger.warning(f'--epochs changed: the {args.sched} schedule now spans {args.epochs} epochs')
    lr_scheduler.step(start_epoch)
    lr_scheduler.step_update(num_updates)

    output_dir, saver = None, None
    extra: Dict[str, Any] = {}
    if args.primary:
        output_dir = _run_dir(args, base_size)
        check_run_dir(args, output_dir)
        for path in _run_files(output_dir) if args.overwrite and not args.resume else []:
            os.remove(path)
        os.makedirs(output_dir, exist_ok=True)
        remove_stale_temporaries(output_dir)
        saver = ResumableSaver(model=model, optimizer=optimizer, args=args, model_ema=model_ema,
                               amp_scaler=loss_scaler, checkpoint_dir=output_dir, recovery_dir=output_dir,
                               decreasing=args.eval_metric == 'loss', max_history=args.checkpoint_hist,
                               extra_state=lambda: dict(extra))
        if ckpt is not None:
            saver.restore(ckpt['saver'])
            last = os.path.join(output_dir, 'last' + EXTENSION)
            in_run = os.path.dirname(os.path.abspath(resume_path)) == os.path.abspath(output_dir)
            if in_run and start_batch == 0 and not (os.path.exists(last) and os.path.samefile(resume_path, last)):
                atomic_link(resume_path, last)  # resumed from an epoch file: it becomes `last` again
        atomic_write_text(os.path.join(output_dir, 'args.yaml'), _args_yaml(args))
        file_handler = logging.FileHandler(os.path.join(output_dir, 'log.txt'))
        file_handler.setFormatter(logging.Formatter('%(asctime)s %(message)s'))
        logging.getLogger().addHandler(file_handler)
    epoch_partial = None
    if ckpt is not None:
        ranks = ckpt['ranks']
        if len(ranks) == args.world_size:
            set_rng_state(ranks[args.rank]['rng'])
            epoch_partial = ranks[args.rank]['partial']
        elif start_batch:
            raise ValueError(f'the checkpoint was written mid-epoch by {len(ranks)} ranks; this run has '
                             f'{args.world_size}. Resume with {len(ranks)} ranks, or from an end-of-epoch checkpoint '
                             '(last.pth.tar of the run folder).')
        else:
            _logger.warning(f'checkpoint holds the RNG states of {len(ranks)} ranks, this run has {args.world_size}: '
                            'reseeding, so random draws differ from an uninterrupted run')
            random_seed(args.seed + start_epoch, args.rank)
    del ckpt

    def save_state(epoch_next: int, batch: int, updates: int, sums: Optional[Dict] = None) -> None:
        """Collect the resume state (every rank's RNG and epoch sums: a collective) for the primary's saver."""
        ranks = gather_rank_states(args.distributed, partial=sums)
        extra.clear()
        extra.update(progress={'epoch': epoch_next, 'batch': batch, 'num_updates': updates}, ranks=ranks,
                     scheduler=lr_scheduler.state_dict(), history=list(history), train_samples=len(train_ds))

    last_recovery = {'batch': start_batch}

    def on_update(batches_done: int, updates: int, get_partial) -> None:
        if not args.recovery_interval or batches_done >= num_batches:
            return
        if batches_done - last_recovery['batch'] >= args.recovery_interval:
            last_recovery['batch'] = batches_done
            save_state(epoch, batches_done, updates, get_partial())
            if saver is not None:
                saver.save_recovery(epoch, batches_done)
                _logger.info(f'Saved recovery checkpoint: epoch {epoch}, batch {batches_done}')

    skipped_key = 'skipped_videos' if args.is_video else 'skipped_images'
    loop_kwargs = dict(device=device, num_batches=num_batches, epochs=args.epochs,
                       grad_accum_steps=args.grad_accum_steps, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                       channels_last=args.channels_last, log_interval=args.log_interval,
                       distributed=args.distributed, world_size=args.world_size, primary=args.primary)
    try:
        for epoch in range(start_epoch, args.epochs):
            size = stage_sizes[epoch]
            rate = base_size / size
            if mixup_fn is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
                mixup_fn.mixup_enabled = False
            loader.sampler.set_epoch(epoch, start=start_batch * args.batch_size)
            last_recovery['batch'] = start_batch
            train_metrics = train_one_epoch(
                epoch, model, loader, optimizer, train_loss_fn, start_batch=start_batch, num_updates=num_updates,
                rate=rate, pass_rate=pass_rate, lr_scheduler=lr_scheduler, loss_scaler=loss_scaler,
                amp_autocast=autocast, model_ema=model_ema, mixup_fn=mixup_fn, on_update=on_update,
                partial=epoch_partial, epochs_after=args.epochs - epoch - 1, **loop_kwargs)
            num_updates, start_batch, epoch_partial = train_metrics['num_updates'], 0, None
            eval_kwargs = dict(device=device, distributed=args.distributed, amp_autocast=autocast,
                               channels_last=args.channels_last, pass_rate=pass_rate)
            row = {'epoch': epoch, 'img_size': size, 'rate': rate, 'lr': optimizer.param_groups[0]['lr'],
                   'train_loss': train_metrics['loss'], 'train_samples_per_sec': train_metrics['samples_per_sec'],
                   'train_time': train_metrics['time'], skipped_key: train_metrics['skipped']}
            eval_metrics = evaluate(eval_model, eval_loader, rate=1.0, **eval_kwargs)
            row.update({f'eval_{k}': eval_metrics[k] for k in ('loss', 'top1', 'top5')})
            row[skipped_key] += eval_metrics['skipped']
            if rate != 1:
                at_rate = evaluate(eval_model, eval_loader, rate=rate, **eval_kwargs)
                row.update({f'eval_{k}@{size}': at_rate[k] for k in ('loss', 'top1', 'top5')})
            if model_ema is not None and not args.model_ema_force_cpu:
                ema_metrics = evaluate(model_ema, eval_loader, rate=1.0, **eval_kwargs)
                row.update({f'ema_{k}': ema_metrics[k] for k in ('loss', 'top1', 'top5')})
            metric = row[f'ema_{args.eval_metric}' if f'ema_{args.eval_metric}' in row else f'eval_{args.eval_metric}']
            lr_scheduler.step(epoch + 1, metric)
            history.append(row)
            save_state(epoch + 1, 0, num_updates)
            if saver is not None:
                _write_logs(history, output_dir)  # before the checkpoint that holds this epoch
                best_metric, best_epoch = saver.save_checkpoint(epoch, metric=metric)
                saver.remove_recovery()
                _logger.info(
                    f"Epoch {epoch}/{args.epochs} done in {format_seconds(train_metrics['time'])} | size {size} "
                    f"(rate {rate:g}) | train loss {row['train_loss']:.4f}, "
                    f"{row['train_samples_per_sec']:.1f} samples/s | eval loss {row['eval_loss']:.4f} top-1 "
                    f"{row['eval_top1']:.2f} top-5 {row['eval_top5']:.2f}"
                    + (f" | @{size}: top-1 {row[f'eval_top1@{size}']:.2f}" if rate != 1 else '')
                    + (f" | EMA top-1 {row['ema_top1']:.2f}" if 'ema_top1' in row else '')
                    + f" | skipped {row[skipped_key]} | best {args.eval_metric} {best_metric:.4g} "
                    f"(epoch {best_epoch})")
        if saver is not None:  # also completes a run resumed after its last epoch was saved
            saver.remove_recovery()
            _write_logs(history, output_dir)
        replica_diff = None
        if args.distributed:
            replica_diff = check_replicas_in_sync(model, device)
            _logger.info(f'Replicas in sync across {args.world_size} ranks: max |param - rank 0| = {replica_diff:.3g}')
            if replica_diff > 0:
                _logger.warning('DDP replicas diverged; check for non-deterministic or rank-dependent code')
    finally:
        if output_dir is not None:
            for h in [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)
                      and h.baseFilename == os.path.abspath(os.path.join(output_dir, 'log.txt'))]:
                logging.getLogger().removeHandler(h)
                h.close()
        if args.distributed:
            torch.distributed.destroy_process_group()
    best_metric, best_epoch = (saver.best_metric, saver.best_epoch) if saver is not None else (None, None)
    return {'output_dir': output_dir, 'history': history, 'best_metric': best_metric, 'best_epoch': best_epoch,
            'replica_max_diff': replica_diff}


def _args_yaml(args: argparse.Namespace) -> str:
    import yaml
    return yaml.safe_dump(vars(args), default_flow_style=False, sort_keys=False)


def cli() -> None:
    """Console entry point ``s4nd-train``."""
    run_cli(main, 's4nd-train')


if __name__ == '__main__':
    cli()
