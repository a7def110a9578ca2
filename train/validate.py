"""``s4nd-validate``: top-1 / top-5 of a model on a dataset at one or more resolutions.

Flags as timm's ``validate.py`` (``--model``, ``--checkpoint``, ``--use-ema``, ``--split``,
``--results-file``). Resolution (docs/design.md §5): images are prepared at the model's base
size, then resized to each ``--img-size`` (bilinear, antialiased) and S4ND models get rate = base / size,
e.g. ``--img-size 16 32`` for the CIFAR zero-shot experiment. A checkpoint written by ``s4nd-train``
carries its run's flags: model name, ``--model-kwargs``, base size, frames and class count default to them.

Example::

    s4nd-validate --dataset cifar10 --data-dir DIR --checkpoint output/train/RUN/model_best.pth.tar --img-size 16 32
"""
import argparse
import json
import logging
import os
from contextlib import nullcontext
from functools import partial
from typing import Any, Dict, List, Optional, Sequence

import torch

from .checkpoint import atomic_write_text
from .data import create_dataset, create_loader, dataset_kind, default_splits
from .engine import accepts_rate, evaluate, run_cli, setup_console_logging
from .train import build_model, dataset_num_classes, set_channels_last

__all__ = ['get_args_parser', 'main']

_logger = logging.getLogger('validate')

_INHERITED = ('model', 'model_kwargs', 'img_size', 'num_frames', 'num_classes', 'in_chans', 'gp')


def get_args_parser() -> argparse.ArgumentParser:
    from timm.utils import ParseKwargs
    parser = argparse.ArgumentParser('s4nd-validate', description='Evaluate a model at given resolutions.')
    parser.add_argument('--data-dir', metavar='DIR', default=None, help='dataset root (not needed for synthetic)')
    parser.add_argument('--dataset', '-d', metavar='NAME', default='imagenet',
                        help='imagenet, cifar10, hmdb51, synthetic, or a timm torch/ or hfds/ source')
    parser.add_argument('--split', metavar='NAME', default=None,
                        help='default: val (imagenet, synthetic), test (cifar10, hmdb51)')
    parser.add_argument('--model', default=None, metavar='MODEL', help='timm model name (default: the checkpoint\'s)')
    parser.add_argument('--checkpoint', default='', metavar='PATH', help='weights: s4nd-train or timm checkpoint')
    parser.add_argument('--pretrained', action='store_true', help='use the pretrained weights (no --checkpoint)')
    parser.add_argument('--use-ema', action='store_true', help='evaluate the checkpoint\'s EMA weights')
    parser.add_argument('--model-kwargs', nargs='*', default=None, action=ParseKwargs, help='key=value model kwargs')
    parser.add_argument('--num-classes', type=int, default=None, metavar='N')
    parser.add_argument('--in-chans', type=int, default=None, metavar='N')
    parser.add_argument('--gp', default=None, metavar='POOL')
    parser.add_argument('--base-size', type=int, default=None, metavar='N',
                        help='base image size (default: the checkpoint run\'s, else the model\'s)')
    parser.add_argument('--img-size', type=int, nargs='+', default=None, metavar='N',
                        help='evaluation sizes (default: the base size); rate = base / size')
    parser.add_argument('--crop-pct', default=None, type=float, metavar='PCT')
    parser.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    parser.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    parser.add_argument('--interpolation', default='', metavar='NAME')
    parser.add_argument('--num-frames', type=int, default=None, metavar='T', help='video frames per clip')
    parser.add_argument('--clip-duration', type=float, default=2.0, metavar='SEC')
    parser.add_argument('--frame-stride', type=int, default=None, metavar='S')
    parser.add_argument('--hmdb-split', type=int, default=1, choices=(1, 2, 3))
    parser.add_argument('--val-num-samples', type=int, default=None, metavar='N', help='synthetic size (1000)')
    parser.add_argument('--seed', type=int, default=42, help='synthetic dataset seed')
    parser.add_argument('-b', '--batch-size', type=int, default=256, metavar='N')
    parser.add_argument('-j', '--workers', type=int, default=4, metavar='N')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--amp', action='store_true')
    parser.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'))
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--results-file', default='', metavar='FILENAME', help='write results (.json or .csv)')
    return parser


def _checkpoint_args(path: str) -> Optional[argparse.Namespace]:
    """The training flags stored in an s4nd-train / timm checkpoint, if any."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    saved = ckpt.get('args') if isinstance(ckpt, dict) else None
    return saved if isinstance(saved, argparse.Namespace) else None


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Evaluate; returns one result dict per size: {'model', 'img_size', 'rate', 'top1', 'top5', 'loss', ...}."""
    from timm.data import resolve_data_config
    from timm.models import load_checkpoint
    args = get_args_parser().parse_args(argv)
    setup_console_logging(to='stdout')
    kind = dataset_kind(args.dataset)
    args.split = args.split or default_splits(args.dataset)[1]
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise ValueError(f'--checkpoint {args.checkpoint!r} does not exist')
    saved = _checkpoint_args(args.checkpoint) if args.checkpoint else None
    eval_sizes, args.img_size = args.img_size, args.base_size  # from here on img_size is the base (model) size
    for name in _INHERITED:
        if getattr(args, name) is None and saved is not None:
            setattr(args, name, getattr(saved, name, None))
    if args.model is None:
        raise ValueError('no --model given and the checkpoint does not name one')
    args.model_kwargs = args.model_kwargs or {}
    args.pretrained = args.pretrained and not args.checkpoint
    args.drop = 0.0
    args.is_video = kind == 'hmdb51' or (kind == 'synthetic' and args.num_frames is not None)
    if args.num_classes is None:
        args.num_classes = dataset_num_classes(argparse.Namespace(**vars(args), train_split=args.split))

    device = torch.device(args.device)
    model = build_model(args, args.num_classes)
    if args.checkpoint:
        load_checkpoint(model, args.checkpoint, use_ema=args.use_ema)
    if args.is_video and args.num_frames is None:
        args.num_frames = getattr(model, 'num_frames', None) or 16
    model.to(device).eval()
    if args.channels_last:
        set_channels_last(model, args.is_video)
    data_config = resolve_data_config(vars(args), model=model)
    if kind in ('cifar10', 'synthetic') and args.crop_pct is None:
        data_config['crop_pct'] = 1.0
    base = data_config['input_size'][-1]
    dataset = create_dataset(args, args.split, False, data_config)
    collate = None
    if kind == 'hmdb51':
        from .video import collate_video
        collate = collate_video
    loader = create_loader(dataset, args.batch_size, False, args.seed, num_workers=args.workers, collate_fn=collate)
    amp_dtype = torch.bfloat16 if args.amp_dtype == 'bfloat16' else torch.float16
    amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype) if args.amp else nullcontext
    pass_rate = accepts_rate(model)
    results = []
    for size in eval_sizes or [base]:
        rate = base / size
        m = evaluate(model, loader, device=device, distributed=False, rate=rate, pass_rate=pass_rate,
                     amp_autocast=amp_autocast, channels_last=args.channels_last)
        results.append({'model': args.model, 'checkpoint': args.checkpoint, 'dataset': args.dataset,
                        'split': args.split, 'img_size': size, 'base_size': base, 'rate': rate, 'top1': m['top1'],
                        'top5': m['top5'], 'loss': m['loss'], 'samples': m['samples'], 'skipped': m['skipped']})
        _logger.info(f"{args.model} on {args.dataset}/{args.split} at {size}px (rate {rate:g}): top-1 {m['top1']:.2f} "
                     f"top-5 {m['top5']:.2f} loss {m['loss']:.4f} ({m['samples']} samples"
                     + (f", {m['skipped']} skipped" if m['skipped'] else '') + ')')
    if args.results_file:
        _write_results(results, args.results_file)
    return results


def _write_results(results: List[Dict[str, Any]], path: str) -> None:
    if path.endswith('.csv'):
        import csv
        import io
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
        atomic_write_text(path, buf.getvalue())
    else:
        atomic_write_text(path, json.dumps(results, indent=1) + '\n')


def cli() -> None:
    """Console entry point ``s4nd-validate``."""
    run_cli(main, 's4nd-validate')


if __name__ == '__main__':
    cli()
