"""``s4nd-demo``: the main job. Resolution transfer and progressive resizing on the embedded synthetic data.

After the paper's CIFAR-10 resolution experiments (paper §5; docs/design.md §5, §7.4, §7.5),
scaled down to run on a 2-core CPU in minutes with no downloads. Training is ``engine.train_one_epoch`` with
the SSM parameter groups of ``optim.py`` and timm's cosine schedule; evaluation is ``eval_resolution``.

1. Zero-shot resolution change: the isotropic S4ND model (bandlimited kernels) and its Conv2D twin (and, in
   the full run, the S4ND model without bandlimiting) are trained at low resolution (8 px) on
   ``SyntheticShapes``, then evaluated on held-out samples rendered at 8 to 64 px, S4ND in continuous and
   in discrete mode. Prints the table; writes results.md, results.json and resolution_transfer.png.
2. Progressive resizing: the same S4ND model at base resolution 32 px trained with a resolution schedule
   (16 px at rate 2 for 3/4 of the epochs, then 32 px) and with fixed 32 px training, for the same number of
   epochs; compares top-1 at 32 px and training wall time.
Trained weights are saved as Hub-format folders with model cards (``s4nd_timm.hub.save_pretrained``):
``<output>/weights/s4nd_iso_cifar_small.synthetic`` and ``..._conv2d_small.synthetic`` (the zero-shot pair; the
package ships the seed-0 full run's copies as those tags, ``s4nd_timm/weights/``),
``s4nd_iso_cifar_small_no_bandlimit``, ``..._32px_fixed`` / ``_progressive``; each loads with
``timm.create_model('local-dir:<folder>', pretrained=True)`` or ``s4nd-eval-resolution --model <folder>``.

``--quick`` runs a smaller version (fewer samples and epochs, test sizes 8-32 px, no unbandlimited model) in
under two minutes on 2 CPU cores.
A GPU is used when present.
"""
import argparse
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from .data import create_dataset, create_loader
from .engine import accepts_rate, format_seconds, run_cli, setup_console_logging, train_one_epoch
from .eval_resolution import evaluate_resolutions, format_table, machine_summary, write_results
from .optim import create_optimizer

__all__ = ['MODELS', 'PRESETS', 'get_args_parser', 'build_model', 'render_train_set', 'train_model', 'main', 'cli']

_logger = logging.getLogger('train')

# Zero-shot models, table label -> name (registered, with its weight tag), construction args, weights folder
# (default: the name), S4ND modes evaluated (default both). The '.synthetic' tags carry the paper's zero-shot S4ND
# settings that fit a CPU (bandlimit 0.2, Δ in [0.1, 1], 8 px; s4nd_timm.models.s4nd_iso.TAG_MODEL_ARGS), have
# model cards (model_cards/<name>.md) and ship their weights (s4nd_timm/weights/<name>, copied from this job's
# output). No block dropout, which at this size costs accuracy at every resolution. The unbandlimited S4ND (full
# run only) shows what bandlimiting does.
MODELS = {
    'S4ND': dict(name='s4nd_iso_cifar_small.synthetic', args=dict(block_drop_rate=0.0)),
    'S4ND, no bandlimit': dict(name='s4nd_iso_cifar_small', args=dict(bandlimit=None, block_drop_rate=0.0),
                               folder='s4nd_iso_cifar_small_no_bandlimit', modes=('continuous',)),
    'Conv2D': dict(name='s4nd_iso_cifar_conv2d_small.synthetic', args=dict(block_drop_rate=0.0)),
}
# Run sizes: full (default) and --quick. Progressive resizing: the schedule's last size is the base resolution;
# the fixed run trains at that size for as many epochs. (8 px holds too little of this dataset's texture
# information for an 8 px first stage to help; 16 px holds most of it, hence 16 -> 32 px, the paper's low -> base.)
PRESETS = {
    'full': dict(models=('S4ND', 'S4ND, no bandlimit', 'Conv2D'), train_samples=3000, test_samples=1000, epochs=20,
                 resolutions=(8, 16, 32, 64), prog_samples=1600, prog_schedule=((16, 6), (32, 2))),
    'quick': dict(models=('S4ND', 'Conv2D'), train_samples=2000, test_samples=400, epochs=15, resolutions=(8, 16, 32),
                  prog_samples=500, prog_schedule=((16, 2), (32, 1))),
}
LOW_RES = 8  # zero-shot training resolution
NUM_CLASSES = 10
EVAL_BATCH = 100  # a smaller batch is faster for large test sizes on CPU


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        's4nd-demo', description='Main job: train S4ND (bandlimited) and Conv2D at 8 px on the embedded synthetic '
        'data, evaluate at 8-64 px; compare progressive resizing with fixed-resolution training.')
    parser.add_argument('--quick', action='store_true', help='smaller run (under two minutes on 2 CPU cores)')
    parser.add_argument('--seed', type=int, default=0, metavar='S')
    parser.add_argument('--output', default='./out/main_job', metavar='DIR')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('-b', '--batch-size', type=int, default=50, metavar='N', help='training batch (paper: 50)')
    parser.add_argument('--lr', type=float, default=1e-2, help='AdamW lr (paper: 0.01; SSM tensors 1e-3)')
    parser.add_argument('--weight-decay', type=float, default=0.05)
    parser.add_argument('--epochs', type=int, default=None, metavar='N', help='zero-shot training epochs (preset)')
    parser.add_argument('--skip-progressive', action='store_true', help='only the zero-shot experiment')
    return parser


def build_model(label: str, img_size: int, seed: int) -> nn.Module:
    """One of ``MODELS`` at base resolution ``img_size``, initialized from ``seed``."""
    import timm
    torch.manual_seed(seed)
    spec = MODELS[label]
    return timm.create_model(spec['name'], img_size=img_size, num_classes=NUM_CLASSES, **spec['args'])


def render_train_set(model: nn.Module, num_samples: int, img_size: int, seed: int) -> TensorDataset:
    """The synthetic training split rendered once at ``img_size`` and normalized for ``model``:
    x (N, 3, img_size, img_size), y (N,)."""
    from timm.data import resolve_data_config
    config = resolve_data_config({}, model=model)
    ds = create_dataset('synthetic', 'train', True, dict(config, input_size=(3, img_size, img_size)), seed=seed,
                        num_classes=NUM_CLASSES, num_samples=num_samples)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


def train_model(model: nn.Module, train_set: TensorDataset, stages: Sequence[Tuple[int, int]], *, tag: str,
                device: torch.device, seed: int, batch_size: int = 50, lr: float = 1e-2,
                weight_decay: float = 0.05, warmup_epochs: int = 1) -> Dict[str, Any]:
    """Train with a resolution schedule; AdamW (SSM groups from ``optim.py``), timm cosine schedule per update.

    Args:
        train_set: images at the model's base resolution B, (N, 3, B, B).
        stages: ((size, epochs), ...); each epoch's batches are resized to ``size`` (rate B / size, passed to
            S4ND models), e.g. ((16, 10),) fixed or ((8, 6), (16, 4)) progressive.
        tag: name in the progress lines.
    Returns:
        {'seconds' (training wall time), 'epochs', 'final_loss', 'samples_per_sec' (last epoch)}.
    """
    from timm.scheduler import create_scheduler_v2
    base = train_set.tensors[0].shape[-1]
    sizes = [size for size, n in stages for _ in range(n)]
    model.to(device)
    optimizer = create_optimizer(model, opt='adamw', lr=lr, weight_decay=weight_decay)
    loader = create_loader(train_set, batch_size, True, seed)
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=len(sizes), warmup_epochs=warmup_epochs,
                                       warmup_lr=lr * 0.01, min_lr=lr * 0.01, updates_per_epoch=len(loader),
                                       step_on_epochs=False)
    pass_rate = accepts_rate(model)
    num_updates, start = 0, time.time()
    for epoch, size in enumerate(sizes):
        loader.sampler.set_epoch(epoch)
        if epoch == 0 or size != sizes[epoch - 1]:
            _logger.info(f'[{tag}] epochs {epoch + 1}-{epoch + sizes.count(size)} of {len(sizes)} at {size} px '
                         f'(rate {base / size:g}), {len(train_set)} images per epoch')
        metrics = train_one_epoch(epoch, model, loader, optimizer, nn.CrossEntropyLoss(), device=device,
                                  num_batches=len(loader), num_updates=num_updates, epochs=len(sizes),
                                  log_interval=len(loader),  # one progress line per epoch
                                  rate=base / size, pass_rate=pass_rate, lr_scheduler=scheduler,
                                  epochs_after=len(sizes) - epoch - 1)
        num_updates = metrics['num_updates']
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return {'seconds': time.time() - start, 'epochs': len(sizes), 'final_loss': metrics['loss'],
            'samples_per_sec': metrics['samples_per_sec']}


def _progressive_table(rows: List[Dict[str, Any]]) -> str:
    lines = [f"| training | schedule | epochs | top-1 @ {rows[0]['base_size']} px | train wall time | vs fixed |",
             '|---|---|---|---|---|---|']
    fixed = rows[0]['seconds']
    for row in rows:
        lines.append(f"| {row['name']} | {row['schedule']} | {row['epochs']} | {row['top1']:.1f} | "
                     f"{row['seconds']:.1f} s | {100 * (row['seconds'] / fixed - 1):+.0f}% |")
    return '\n'.join(lines)


def _model_results(row: Dict[str, Any], resolutions: Sequence[int], num_samples: int, seed: int) -> str:
    """Model-card markdown with one model's measured row of the zero-shot table."""
    mode = f", S4ND layers in {row['mode']} mode" if row['mode'] else ''
    head = ' | '.join(str(r) for r in resolutions)
    cells = ' | '.join(f"{row['top1'][r]:.1f}" for r in resolutions)
    return (f"Top-1 (%) on {num_samples} held-out `SyntheticShapes` samples (split 'val', seed {seed}) rendered at "
            f"each test size{mode}; trained at {row['train_size']} px by `s4nd-demo` (seed {seed}).\n\n"
            f"| test px | {head} |\n|{'---|' * (len(resolutions) + 1)}\n| top-1 | {cells} |")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the main job; returns the payload written to results.json."""
    from s4nd_timm.hub import save_pretrained
    args = get_args_parser().parse_args(argv)
    setup_console_logging(to='stdout')
    preset = dict(PRESETS['quick' if args.quick else 'full'])
    if args.epochs is not None:
        preset['epochs'] = args.epochs
    device = torch.device(args.device)
    weights_dir = os.path.join(args.output, 'weights')
    job_start = time.time()
    train_kwargs = dict(device=device, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                        weight_decay=args.weight_decay)
    provenance = (f"Trained by `s4nd-demo{' --quick' if args.quick else ''} --seed {args.seed}` on "
                  f"{machine_summary(device)}.")

    def step(msg: str) -> None:
        _logger.info(f'== {msg} (job time {format_seconds(time.time() - job_start)})')

    step(f"zero-shot resolution change: {', '.join(preset['models'])} trained at {LOW_RES} px on "
         f"{preset['train_samples']} synthetic images for {preset['epochs']} epochs; seed {args.seed}; "
         f"{machine_summary(device)}")
    train_set = render_train_set(build_model('S4ND', LOW_RES, args.seed), preset['train_samples'], LOW_RES, args.seed)
    entries, training = [], {}
    for label in preset['models']:
        model = build_model(label, LOW_RES, args.seed)
        training[label] = train_model(model, train_set, [(LOW_RES, preset['epochs'])], tag=label, **train_kwargs)
        step(f"{label} trained in {training[label]['seconds']:.1f} s")
        entries.append({'label': label, 'model': model, 'train_size': LOW_RES, 'architecture': MODELS[label]['name'],
                        **({'modes': MODELS[label]['modes']} if 'modes' in MODELS[label] else {})})
    data_args = argparse.Namespace(dataset='synthetic', data_dir=None, seed=args.seed,
                                   num_samples=preset['test_samples'], split=None)
    rows = evaluate_resolutions(entries, data_args, preset['resolutions'], batch_size=EVAL_BATCH, device=device)
    weights = {}
    for entry in entries:
        row = next(r for r in rows if r['label'] == entry['label'] and r['mode'] in (None, 'continuous'))
        folder = os.path.join(weights_dir, MODELS[entry['label']].get('folder', entry['architecture']))
        weights[entry['label']] = str(save_pretrained(
            entry['model'].cpu(), folder, overwrite=True, provenance=provenance,
            results=_model_results(row, preset['resolutions'], preset['test_samples'], args.seed)))

    progressive = []
    if not args.skip_progressive:
        prog_stages = [tuple(s) for s in preset['prog_schedule']]
        base, epochs = prog_stages[-1][0], sum(n for _, n in prog_stages)
        schedules = (('fixed', [(base, epochs)]), ('progressive', prog_stages))
        step(f"progressive resizing: S4ND at base {base} px, {epochs} epochs on {preset['prog_samples']} images, "
             + ' vs '.join(f"{name} {_schedule(stages)}" for name, stages in schedules))
        base_set = render_train_set(build_model('S4ND', base, args.seed), preset['prog_samples'], base, args.seed)
        for name, stages in schedules:
            model = build_model('S4ND', base, args.seed)
            stats = train_model(model, base_set, stages, tag=f'S4ND {name}', **train_kwargs)
            row, = evaluate_resolutions([{'label': f'S4ND {name}', 'model': model, 'train_size': base}], data_args,
                                        [base], modes=('continuous',), batch_size=EVAL_BATCH, device=device)
            top1 = row['top1'][base]
            progressive.append({'name': name, 'schedule': _schedule(stages), 'epochs': stats['epochs'],
                                'base_size': base, 'top1': top1, 'seconds': stats['seconds']})
            folder = os.path.join(weights_dir, f"{MODELS['S4ND']['name'].split('.')[0]}_{base}px_{name}")
            weights[f'S4ND {name}'] = str(save_pretrained(
                model.cpu(), folder, overwrite=True, provenance=provenance,
                results=f"Top-1 {top1:.1f}% at {base} px on {preset['test_samples']} held-out `SyntheticShapes` "
                        f"samples (split 'val', seed {args.seed}); training schedule {_schedule(stages)}."))
            step(f'{name}: top-1 @ {base} px {top1:.1f}% after {stats["seconds"]:.1f} s of training')

    payload = {
        'job': 's4nd-demo' + (' --quick' if args.quick else ''), 'seed': args.seed,
        'machine': machine_summary(device), 'seconds': time.time() - job_start,
        'created': time.strftime('%Y-%m-%d %H:%M:%S'), 'dataset': 'synthetic', 'num_classes': NUM_CLASSES,
        'models': {label: MODELS[label] for label in preset['models']},
        'preset': {k: list(v) if isinstance(v, tuple) else v for k, v in preset.items()},
        'optimizer': {'opt': 'adamw', 'lr': args.lr, 'ssm_lr': 1e-3, 'weight_decay': args.weight_decay,
                      'batch_size': args.batch_size, 'sched': 'cosine'},
        'training': training, 'progressive': progressive, 'weights': weights,
    }
    paths = write_results(args.output, rows, preset['resolutions'], payload, stem='resolution_transfer',
                          title=f'Trained at {LOW_RES} px, tested at other sizes (synthetic shapes, seed {args.seed})',
                          chance=100 / NUM_CLASSES,
                          extra_markdown=_progressive_table(progressive) if progressive else '')
    print(f"\nZero-shot resolution change (top-1 %, trained at {LOW_RES} px, * = training resolution):\n\n"
          f"{format_table(rows, preset['resolutions'])}")
    if progressive:
        print(f"\nProgressive resizing vs fixed-resolution training:\n\n{_progressive_table(progressive)}")
    print(f"\n{machine_summary(device)}, seed {args.seed}: {format_seconds(payload['seconds'])} in all. Wrote "
          f"{paths['table']}, {paths['json']}, {paths['plot']} and {weights_dir}/")
    return payload


def _schedule(stages: Sequence[Tuple[int, int]]) -> str:
    """((8, 6), (16, 2)) -> '8 px x 6 -> 16 px x 2'."""
    return ' -> '.join(f'{size} px x {n}' for size, n in stages)


def cli() -> None:
    """Console entry point ``s4nd-demo``."""
    run_cli(main, 's4nd-demo')


if __name__ == '__main__':
    cli()
