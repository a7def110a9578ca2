"""``s4nd-demo``: the main job. Resolution transfer and progressive resizing on the embedded synthetic data.

After the paper's CIFAR-10 resolution experiments (paper §5; docs/design.md §5, §7.4, §7.5),
scaled down to run on a 2-core CPU in minutes with no downloads. Training is ``engine.train_one_epoch`` with
the SSM parameter groups of ``optim.py`` and timm's cosine schedule; evaluation is ``eval_resolution``.

1. Zero-shot resolution change: the isotropic S4ND model (bandlimited kernels) and its Conv2D twin (and, in
   the full run, the S4ND model without bandlimiting) are trained at low resolution (8 px) on
   ``SyntheticShapes``, then evaluated on held-out samples rendered at 8 to 64 px, S4ND in continuous and
   in discrete mode. Prints the table; writes results.md, results.json, resolution_transfer.png and
   kernels.png (one S4ND feature's kernel at 8-64 px in both modes beside a Conv2D 3x3 filter).
2. Progressive resizing: a narrower S4ND at base resolution 32 px trained on the same images three ways
   (``PRESETS[...]['prog_runs']``): fixed 32 px; 16 px at rate 2 for 3/4 of as many epochs, then 32 px (the
   paper's equal-epoch comparison); and a longer progressive schedule that takes about the fixed run's
   training time (the equal-time comparison). Top-1 at 32 px after every epoch (evaluation time not counted
   as training time); the table gives each run's training time, final top-1 and top-1 within the fixed run's
   time; progressive_resizing.png plots top-1 vs training time. One cosine learning-rate schedule runs over
   all epochs of all stages, without a restart at the resolution switch (``train_model``).
Trained weights are saved as Hub-format folders with model cards (``s4nd_timm.hub.save_pretrained``):
``<output>/weights/s4nd_iso_cifar_small.synthetic`` and ``..._conv2d_small.synthetic`` (the zero-shot pair; the
package ships the seed-0 full run's copies as those tags, ``s4nd_timm/weights/``),
``s4nd_iso_cifar_small_no_bandlimit``, ``..._32px_fixed`` / ``_progressive`` / ``_progressive_equal_time``;
each loads with ``timm.create_model('local-dir:<folder>', pretrained=True)`` or
``s4nd-eval-resolution --model <folder>``. ``--output`` is checked before anything is trained.

``--quick`` runs a smaller version (fewer samples and epochs, test sizes 8-32 px, no unbandlimited model) in
under two minutes on 2 CPU cores.
A GPU is used when present.
"""
import argparse
import logging
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from .data import create_dataset, create_loader
from .engine import accepts_rate, evaluate, format_seconds, run_cli, setup_console_logging, train_one_epoch
from .common import check_writable
from .eval_resolution import (
    evaluate_resolutions, format_table, machine_summary, save_figure, write_results)
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
# Run sizes: full (default) and --quick. Zero-shot: unchanged since the shipped '.synthetic' weights were trained
# (their cards' numbers come from the full run, seed 0). Progressive resizing: a narrower S4ND (prog_model_args)
# at base 32 px, so that the fixed run's accuracy has flattened within the time budget; prog_runs: (name,
# stages), the first is the fixed-resolution reference, the second has as many epochs (the paper's comparison),
# the third about as much training time as the fixed run. 16 -> 32 px, the paper's low -> base (8 px holds too
# little of this dataset's texture information for an 8 px first stage to help).
PRESETS = {
    'full': dict(models=('S4ND', 'S4ND, no bandlimit', 'Conv2D'), train_samples=3000, test_samples=1000, epochs=20,
                 resolutions=(8, 16, 32, 64), prog_model_args=dict(d_model=32), prog_samples=800,
                 prog_test_samples=300, prog_runs=(('fixed', ((32, 20),)), ('progressive', ((16, 15), (32, 5))),
                                                   ('progressive, equal time', ((16, 33), (32, 11))))),
    'quick': dict(models=('S4ND', 'Conv2D'), train_samples=2000, test_samples=400, epochs=15, resolutions=(8, 16, 32),
                  prog_model_args=dict(d_model=32), prog_samples=300, prog_test_samples=200,
                  prog_runs=(('fixed', ((32, 4),)), ('progressive', ((16, 3), (32, 1))),
                             ('progressive, equal time', ((16, 6), (32, 2))))),
}
LOW_RES = 8  # zero-shot training resolution
CURVE_POINTS = 24  # at most about this many evaluations per progressive-resizing run (every k-th epoch, and the last)
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
    parser.add_argument('--skip-zero-shot', action='store_true', help='only the progressive-resizing experiment')
    return parser


def build_model(label: str, img_size: int, seed: int, **kwargs) -> nn.Module:
    """One of ``MODELS`` at base resolution ``img_size``, initialized from ``seed``; ``kwargs`` override its
    construction args (e.g. d_model)."""
    import timm
    torch.manual_seed(seed)
    spec = MODELS[label]
    return timm.create_model(spec['name'], img_size=img_size, num_classes=NUM_CLASSES, **{**spec['args'], **kwargs})


def render_train_set(model: nn.Module, num_samples: int, img_size: int, seed: int,
                     split: str = 'train') -> TensorDataset:
    """A synthetic split (default the training split) rendered once at ``img_size`` and normalized for
    ``model``: x (N, 3, img_size, img_size), y (N,)."""
    from timm.data import resolve_data_config
    config = resolve_data_config({}, model=model)
    ds = create_dataset('synthetic', split, True, dict(config, input_size=(3, img_size, img_size)), seed=seed,
                        num_classes=NUM_CLASSES, num_samples=num_samples)
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    return TensorDataset(torch.stack(xs), torch.tensor(ys))


def train_model(model: nn.Module, train_set: TensorDataset, stages: Sequence[Tuple[int, int]], *, tag: str,
                device: torch.device, seed: int, batch_size: int = 50, lr: float = 1e-2,
                weight_decay: float = 0.05, warmup_epochs: int = 1,
                on_epoch: Optional[Callable[[int, float], None]] = None) -> Dict[str, Any]:
    """Train with a resolution schedule; AdamW (SSM groups from ``optim.py``), timm cosine schedule per update,
    one cosine over all epochs of all stages (no restart at a resolution switch).

    Args:
        train_set: images at the model's base resolution B, (N, 3, B, B).
        stages: ((size, epochs), ...); each epoch's batches are resized to ``size`` (rate B / size, passed to
            S4ND models), e.g. ((16, 10),) fixed or ((8, 6), (16, 4)) progressive.
        tag: name in the progress lines.
        on_epoch: called as on_epoch(epoch, training seconds so far) after every epoch (e.g. to evaluate); its
            own time is not counted as training time.
    Returns:
        {'seconds' (training wall time), 'epoch_seconds' (training time of each epoch), 'epochs', 'final_loss',
         'samples_per_sec' (last epoch)}.
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
    num_updates, epoch_seconds = 0, []
    for epoch, size in enumerate(sizes):
        start = time.time()
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
        epoch_seconds.append(time.time() - start)
        if on_epoch is not None:
            on_epoch(epoch, sum(epoch_seconds))
    return {'seconds': sum(epoch_seconds), 'epoch_seconds': epoch_seconds, 'epochs': len(sizes),
            'final_loss': metrics['loss'], 'samples_per_sec': metrics['samples_per_sec']}


def _progressive_table(runs: List[Dict[str, Any]]) -> str:
    """Markdown: one line per run (the first is the fixed-resolution reference), then each run's curve."""
    base, fixed = runs[0]['base_size'], runs[0]
    lines = [f"| training | schedule | epochs | train time | time vs fixed | top-1 @ {base} px | vs fixed | "
             f"top-1 within fixed's time |", '|---|---|---|---|---|---|---|---|']
    for run in runs:
        lines.append(f"| {run['name']} | {run['schedule']} | {run['epochs']} | {run['seconds']:.1f} s | "
                     f"{100 * (run['seconds'] / fixed['seconds'] - 1):+.0f}% | {run['top1']:.1f} | "
                     f"{run['top1'] - fixed['top1']:+.1f} | {_top1_within(run, fixed['seconds']):.1f} |")
    lines.append('')
    lines.append(f'Top-1 @ {base} px during training ({runs[0]["curve_samples"]} held-out images; epoch: top-1):')
    lines.append('')
    for run in runs:
        lines.append(f"- {run['name']}: " + ', '.join(f"{epoch}: {top1:.1f}" for epoch, _, top1 in run['curve']))
    return '\n'.join(lines)


def _top1_within(run: Dict[str, Any], seconds: float) -> float:
    """Top-1 after the last epoch that ended within ``seconds`` of training (1 % slack for timer noise)."""
    done = [top1 for _, t, top1 in run['curve'] if t <= 1.01 * seconds]
    return done[-1] if done else float('nan')


def plot_curves(runs: Sequence[Dict[str, Any]], path: str, title: Optional[str] = None) -> None:
    """PNG: top-1 at the base resolution vs training wall time, one line per run; hollow markers are epochs
    trained below the base resolution. Written atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    base = runs[0]['base_size']
    for i, run in enumerate(runs):
        t = [0.0] + [sec for _, sec, _ in run['curve']]
        acc = [100 / NUM_CLASSES] + [top1 for _, _, top1 in run['curve']]
        ax.plot(t, acc, '-', color=f'C{i}', label=f"{run['name']}: {run['schedule']}")
        for epoch, sec, top1 in run['curve']:
            ax.plot([sec], [top1], 'o', ms=4, color=f'C{i}', mfc=f'C{i}' if run['sizes'][epoch - 1] == base else 'white')
    ax.axvline(runs[0]['seconds'], color='0.6', lw=0.8, ls=':')
    ax.annotate("fixed run's time", (runs[0]['seconds'], 1.0), xycoords=('data', 'axes fraction'),
                xytext=(-3, -12), textcoords='offset points', ha='right', fontsize=8, color='0.4')
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.set_xlabel('training wall time (s)')
    ax.set_ylabel(f'top-1 accuracy @ {base} px (%)')
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc='lower right', framealpha=0.9)
    save_figure(fig, path)


def _first_s4nd(model: nn.Module):
    from s4nd_timm.layers import S4ND
    return next(m for m in model.modules() if isinstance(m, S4ND))


def plot_kernels(s4nd_model: nn.Module, conv_model: nn.Module, train_size: int, path: str,
                 sizes: Sequence[int] = (8, 16, 32, 64)) -> None:
    """PNG: one feature's 2-D kernel of the first S4ND layer (outer product of its two axis kernels, first
    channel) at each test size, in continuous mode (rate train_size / size: the same continuous kernel sampled
    more finely) and in discrete mode (rate 1: the training-size taps, in pixels), beside the first Conv2D
    mixer's 3x3 filter (one input-output pair). Every panel spans the same part of the image (offsets up to
    one image side), so a reader sees which kernels keep their extent when the resolution changes. The feature
    is the one whose continuous kernel spreads widest; the filter pair is the largest diagonal one. Written
    atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    layer = _first_s4nd(s4nd_model)
    conv = next(m for m in conv_model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    with torch.no_grad():
        def kernel2d(size: int, rate: float) -> torch.Tensor:  # (dim, 2 size - 1, 2 size - 1)
            k_h, k_w = layer.axis_kernels((size, size), rate=rate)
            return torch.einsum('hi,hj->hij', k_h[0].float().cpu(), k_w[0].float().cpu())
        ref = kernel2d(train_size, 1.0).abs()
        offsets = torch.arange(-(train_size - 1), train_size, dtype=torch.float32)
        spread = (ref * (offsets.view(-1, 1) ** 2 + offsets ** 2)).sum((1, 2)) / ref.sum((1, 2)).clamp_min(1e-12)
        feature = int(spread.argmax())
        weight = conv.weight.detach().float().cpu()
        pair = int(torch.stack([weight[i, i].norm() for i in range(min(weight.shape[:2]))]).argmax())
        rows = [('S4ND continuous', [kernel2d(n, train_size / n)[feature] for n in sizes]),
                ('S4ND discrete', [kernel2d(n, 1.0)[feature] for n in sizes]),
                (f'Conv2D {conv.kernel_size[0]}x{conv.kernel_size[1]}', [
                    torch.nn.functional.pad(weight[pair, pair], (n - 1 - conv.kernel_size[1] // 2,) * 2
                                            + (n - 1 - conv.kernel_size[0] // 2,) * 2) for n in sizes])]
    fig, axes = plt.subplots(len(rows), len(sizes), figsize=(2.1 * len(sizes), 2.2 * len(rows)), dpi=120,
                             squeeze=False)
    for r, (name, kernels) in enumerate(rows):
        for c, (size, k) in enumerate(zip(sizes, kernels)):
            ax = axes[r][c]
            lim = float(k.abs().max()) or 1.0
            half = (size - 0.5) / size
            ax.imshow(k.numpy(), cmap='RdBu_r', vmin=-lim, vmax=lim, extent=(-half, half, half, -half),
                      interpolation='nearest')
            ax.set_xlim(-1, 1)
            ax.set_ylim(1, -1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f'{size} px', fontsize=10)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(f'Kernels of a model trained at {train_size} px, shown over one image side in each direction\n'
                 f'(S4ND block 1, feature {feature}; Conv2D block 1, filter {pair}->{pair})', fontsize=9)
    save_figure(fig, path)


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
    args = get_args_parser().parse_args(argv)
    setup_console_logging(to='stdout')
    if args.skip_progressive and args.skip_zero_shot:
        raise ValueError('--skip-progressive and --skip-zero-shot together leave nothing to run; drop one')
    check_writable(args.output, '--output', folder=True)
    check_writable(os.path.join(args.output, 'weights'), '--output (its weights/ folder)', folder=True)
    os.makedirs(args.output, exist_ok=True)
    preset = dict(PRESETS['quick' if args.quick else 'full'])
    if args.epochs is not None:
        preset['epochs'] = args.epochs
    device = torch.device(args.device)
    job_start = time.time()
    job = dict(args=args, preset=preset, device=device, weights={}, plots={},
               provenance=(f"Trained by `s4nd-demo{' --quick' if args.quick else ''} --seed {args.seed}` on "
                           f"{machine_summary(device)}."),
               eval_data=dict(dataset='synthetic', seed=args.seed, num_samples=preset['test_samples']),
               train_kwargs=dict(device=device, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                                 weight_decay=args.weight_decay))

    def step(msg: str) -> None:
        _logger.info(f'== {msg} (job time {format_seconds(time.time() - job_start)})')

    rows, training = ([], {}) if args.skip_zero_shot else _zero_shot(job, step)
    progressive = [] if args.skip_progressive else _progressive(job, step)
    payload = {
        'job': 's4nd-demo' + (' --quick' if args.quick else ''), 'seed': args.seed,
        'machine': machine_summary(device), 'seconds': time.time() - job_start,
        'created': time.strftime('%Y-%m-%d %H:%M:%S'), 'dataset': 'synthetic', 'num_classes': NUM_CLASSES,
        'models': {label: MODELS[label] for label in preset['models']},
        'preset': {k: list(v) if isinstance(v, tuple) else v for k, v in preset.items()},
        'optimizer': {'opt': 'adamw', 'lr': args.lr, 'ssm_lr': 1e-3, 'weight_decay': args.weight_decay,
                      'batch_size': args.batch_size, 'sched': 'cosine over the whole run'},
        'training': training, 'progressive': progressive, 'weights': job['weights'], 'plots': job['plots'],
    }
    paths = write_results(args.output, rows, preset['resolutions'], payload, stem='resolution_transfer',
                          title=f'Trained at {LOW_RES} px, tested at other sizes (synthetic shapes, seed {args.seed})',
                          chance=100 / NUM_CLASSES,
                          extra_markdown=_progressive_table(progressive) if progressive else '', plot=bool(rows))
    if rows:
        print(f"\nZero-shot resolution change (top-1 %, trained at {LOW_RES} px, * = training resolution):\n\n"
              f"{format_table(rows, preset['resolutions'])}")
    if progressive:
        print(f"\nProgressive resizing vs fixed-resolution training:\n\n{_progressive_table(progressive)}")
    written = [paths['table'], paths['json'], *([paths['plot']] if rows else []), *job['plots'].values()]
    print(f"\n{machine_summary(device)}, seed {args.seed}: {format_seconds(payload['seconds'])} in all. Wrote "
          f"{', '.join(written)} and {os.path.join(args.output, 'weights')}/")
    return payload


def _save_weights(job: Dict[str, Any], key: str, model: nn.Module, folder: str, results: str) -> None:
    """Save ``model`` as the Hub folder ``<output>/weights/<folder>`` with a card carrying ``results``."""
    from s4nd_timm.hub import save_pretrained
    job['weights'][key] = str(save_pretrained(model.cpu(), os.path.join(job['args'].output, 'weights', folder),
                                              overwrite=True, provenance=job['provenance'], results=results))


def _zero_shot(job: Dict[str, Any], step: Callable[[str], None]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Experiment 1: train ``preset['models']`` at LOW_RES, evaluate at every test size, plot the kernels.
    Returns (evaluation rows, training stats per label)."""
    args, preset, device = job['args'], job['preset'], job['device']
    step(f"zero-shot resolution change: {', '.join(preset['models'])} trained at {LOW_RES} px on "
         f"{preset['train_samples']} synthetic images for {preset['epochs']} epochs; seed {args.seed}; "
         f"{machine_summary(device)}")
    train_set = render_train_set(build_model('S4ND', LOW_RES, args.seed), preset['train_samples'], LOW_RES, args.seed)
    entries, training = [], {}
    for label in preset['models']:
        model = build_model(label, LOW_RES, args.seed)
        training[label] = train_model(model, train_set, [(LOW_RES, preset['epochs'])], tag=label,
                                      **job['train_kwargs'])
        step(f"{label} trained in {training[label]['seconds']:.1f} s")
        entries.append({'label': label, 'model': model, 'train_size': LOW_RES, 'architecture': MODELS[label]['name'],
                        **({'modes': MODELS[label]['modes']} if 'modes' in MODELS[label] else {})})
    rows = evaluate_resolutions(entries, preset['resolutions'], **job['eval_data'], batch_size=EVAL_BATCH,
                                device=device)
    models = {entry['label']: entry['model'] for entry in entries}
    job['plots']['kernels'] = os.path.join(args.output, 'kernels.png')
    plot_kernels(models['S4ND'], models['Conv2D'], LOW_RES, job['plots']['kernels'])
    for entry in entries:
        row = next(r for r in rows if r['label'] == entry['label'] and r['mode'] in (None, 'continuous'))
        _save_weights(job, entry['label'], entry['model'], MODELS[entry['label']].get('folder', entry['architecture']),
                      _model_results(row, preset['resolutions'], preset['test_samples'], args.seed))
    return rows, training


def _progressive(job: Dict[str, Any], step: Callable[[str], None]) -> List[Dict[str, Any]]:
    """Experiment 2: ``preset['prog_runs']`` (the first: fixed base resolution) trained on the same images,
    top-1 at the base resolution after every epoch; plots top-1 vs training time. Returns one dict per run."""
    args, preset, device = job['args'], job['preset'], job['device']
    width = preset['prog_model_args']
    base = preset['prog_runs'][0][1][-1][0]
    step(f"progressive resizing: S4ND ({', '.join(f'{k}={v}' for k, v in width.items())}) at base {base} px on "
         f"{preset['prog_samples']} images; " + '; '.join(f'{name}: {_schedule(stages)}'
                                                        for name, stages in preset['prog_runs']))
    base_set = render_train_set(build_model('S4ND', base, args.seed, **width), preset['prog_samples'], base,
                                args.seed)
    test_set = render_train_set(build_model('S4ND', base, args.seed, **width), preset['prog_test_samples'], base,
                                args.seed, split='val')
    test_loader = create_loader(test_set, EVAL_BATCH, False, args.seed)
    runs = []
    for name, stages in preset['prog_runs']:
        model = build_model('S4ND', base, args.seed, **width)
        curve, epochs = [], sum(n for _, n in stages)
        every = -(-epochs // CURVE_POINTS)

        def on_epoch(epoch: int, seconds: float) -> None:
            if (epoch + 1) % every and epoch + 1 != epochs:
                return
            test_loader.sampler.set_epoch(0)
            top1 = evaluate(model, test_loader, device=device, distributed=False)['top1']
            curve.append((epoch + 1, round(seconds, 2), top1))
            _logger.info(f'[S4ND {name}] epoch {epoch + 1}: top-1 @ {base} px {top1:.1f}% after {seconds:.1f} s')

        stats = train_model(model, base_set, stages, tag=f'S4ND {name}', on_epoch=on_epoch, **job['train_kwargs'])
        run = {'name': name, 'schedule': _schedule(stages), 'epochs': stats['epochs'], 'base_size': base,
               'sizes': [size for size, n in stages for _ in range(n)], 'top1': curve[-1][2],
               'seconds': stats['seconds'], 'epoch_seconds': stats['epoch_seconds'], 'curve': curve,
               'curve_samples': len(test_set)}
        runs.append(run)
        _save_weights(job, f'S4ND {name}', model, f"{MODELS['S4ND']['name'].split('.')[0]}_{base}px_"
                      f"{name.replace(',', '').replace(' ', '_')}",
                      f"Top-1 {run['top1']:.1f}% at {base} px on {len(test_set)} held-out `SyntheticShapes` samples "
                      f"(split 'val', seed {args.seed}); training schedule {run['schedule']}.")
        step(f"{name}: top-1 @ {base} px {run['top1']:.1f}% after {stats['seconds']:.1f} s of training")
    job['plots']['curves'] = os.path.join(args.output, 'progressive_resizing.png')
    plot_curves(runs, job['plots']['curves'], title=f'S4ND at {base} px: progressive vs fixed resolution '
                f'(synthetic shapes, seed {args.seed})')
    return runs


def _schedule(stages: Sequence[Tuple[int, int]]) -> str:
    """((8, 6), (16, 2)) -> '8 px x 6 -> 16 px x 2'."""
    return ' -> '.join(f'{size} px x {n}' for size, n in stages)


def cli() -> None:
    """Console entry point ``s4nd-demo``."""
    run_cli(main, 's4nd-demo')


if __name__ == '__main__':
    cli()
