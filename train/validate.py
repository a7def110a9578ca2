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
from typing import Any, Dict, List, Optional, Sequence

import torch

from s4nd_timm._io import atomic_write_text

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
    load_weights,
    read_checkpoint,
    resolve_device,
    resolve_img_size,
    set_channels_last,
)
from .data import create_dataset, create_loader, dataset_kind, default_splits
from .engine import accepts_rate, evaluate, run_cli, setup_console_logging

__all__ = ['get_args_parser', 'main']

_logger = logging.getLogger('validate')

_INHERITED = ('model', 'model_kwargs', 'img_size', 'num_frames', 'num_classes', 'in_chans', 'gp')


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser('s4nd-validate', description='Evaluate a model at given resolutions.')
    parser.add_argument('--data-dir', metavar='DIR', default=None, help='dataset root (not needed for synthetic)')
    parser.add_argument('--dataset', '-d', metavar='NAME', default='imagenet',
                        help='imagenet, cifar10, hmdb51, synthetic, or a timm torch/ or hfds/ source')
    parser.add_argument('--split', metavar='NAME', default=None,
                        help='default: val (imagenet, synthetic), test (cifar10, hmdb51)')
    parser.add_argument('--model', default=None, metavar='MODEL', help='timm model name (default: the checkpoint\'s)')
    parser.add_argument('--checkpoint', default='', metavar='PATH', help='weights: s4nd-train or timm checkpoint')
    parser.add_argument('--pretrained', action='store_true', help='use the pretrained weights (no --checkpoint)')
    parser.add_argument('--use-ema', action='store_true', help='evaluate the checkpoint\'s EMA weights')
    parser.add_argument('--model-kwargs', nargs='*', default=None, action=ModelKwargs, help='key=value model kwargs')
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


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Evaluate; returns one result dict per size: {'model', 'img_size', 'rate', 'top1', 'top5', 'loss', ...}."""
    args = get_args_parser().parse_args(argv)
    setup_console_logging(to='stdout')
    check_positive([('--img-size', args.img_size), ('--base-size', args.base_size), ('--num-classes', args.num_classes),
                    ('--val-num-samples', args.val_num_samples), ('-b/--batch-size', args.batch_size),
                    ('--num-frames', args.num_frames)])
    if args.results_file:
        check_writable(args.results_file, '--results-file', folder=False)
    kind = dataset_kind(args.dataset)
    args.split = args.split or default_splits(args.dataset)[1]
    if not args.checkpoint and not args.pretrained:
        raise ValueError('no weights to evaluate: pass --checkpoint PATH (an s4nd-train or timm checkpoint) or '
                         '--pretrained (the model\'s released weights)')
    if args.checkpoint and not os.path.isfile(args.checkpoint):
        raise ValueError(f'--checkpoint {args.checkpoint!r} not found; pass an existing checkpoint file')
    if args.use_ema and not args.checkpoint:
        raise ValueError('--use-ema needs --checkpoint (a checkpoint saved with --model-ema)')
    state_dict, saved = read_checkpoint(args.checkpoint, use_ema=args.use_ema) if args.checkpoint else (None, None)
    device = resolve_device(args.device)
    eval_sizes, args.img_size = args.img_size, args.base_size  # from here on img_size is the base (model) size
    for name in _INHERITED:
        if getattr(args, name) is None and saved is not None:
            setattr(args, name, getattr(saved, name, None))
    if args.model is None:
        raise ValueError(f'no --model given and the checkpoint {args.checkpoint} does not name one; pass --model NAME')
    args.model_kwargs = args.model_kwargs or {}
    check_in_chans(args.dataset, args.in_chans)
    is_video = kind == 'hmdb51' or (kind == 'synthetic' and args.num_frames is not None)
    found = dataset_num_classes(args.dataset, args.data_dir, args.split, args.hmdb_split, args.num_classes)
    if args.num_classes is None:
        args.num_classes = found
    elif found is not None and found != args.num_classes:
        if found > args.num_classes:
            raise ValueError(f'{args.dataset}/{args.split} has {found} classes but the model has {args.num_classes} '
                             'outputs; evaluate it on the dataset it was trained for (or pass --num-classes)')
        _logger.warning(f'{args.dataset}/{args.split} has {found} classes, the model {args.num_classes} outputs: '
                        'labels are the indices of the sorted class folders of this split, so a missing class '
                        'folder shifts them')
    args.img_size = resolve_img_size(args.model, args.img_size, args.model_kwargs)
    model = build_model(args.model, num_classes=args.num_classes, pretrained=args.pretrained and not args.checkpoint,
                        model_kwargs=args.model_kwargs, img_size=args.img_size, num_frames=args.num_frames,
                        in_chans=args.in_chans, global_pool=args.gp)
    if state_dict is not None:
        load_weights(model, state_dict, args.checkpoint)
    if is_video and args.num_frames is None:
        args.num_frames = getattr(model, 'num_frames', None) or 16
    model.to(device).eval()
    if args.channels_last:
        set_channels_last(model, is_video)
    data_config = model_data_config(model, args.dataset, vars(args))
    base = data_config['input_size'][-1]
    dataset = create_dataset(args.dataset, args.split, False, data_config, data_dir=args.data_dir, seed=args.seed,
                             num_classes=args.num_classes, num_samples=args.val_num_samples,
                             num_frames=args.num_frames, clip_duration=args.clip_duration,
                             frame_stride=args.frame_stride, hmdb_split=args.hmdb_split)
    loader = create_loader(dataset, args.batch_size, False, args.seed, num_workers=args.workers)
    autocast = amp_autocast(device, args.amp, args.amp_dtype)
    pass_rate = accepts_rate(model)
    results = []
    for size in eval_sizes or [base]:
        rate = base / size
        m = evaluate(model, loader, device=device, distributed=False, rate=rate, pass_rate=pass_rate,
                     amp_autocast=autocast, channels_last=args.channels_last)
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
