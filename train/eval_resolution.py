"""``s4nd-eval-resolution``: accuracy of trained models across test resolutions (docs/design.md §5, paper §5).

After the paper's zero-shot resolution experiment (CIFAR-10 trained at low
resolution, tested at others); evaluation itself is ``engine.evaluate`` and the data is ``data.create_dataset``.

Each model is evaluated on one dataset at every ``--resolutions`` size; models holding S4ND layers are
evaluated in both resolution modes (``--modes``):
    continuous  an input of another size is the same continuous image sampled more or less densely: every
                S4ND layer scales its step by rate = train size / test size, so its kernels keep their
                extent in the image (and bandlimited kernels stay smooth enough to be resampled);
    discrete    kernels stay in pixels (rate 1), as a Conv2D's do.
Models without S4ND layers (the Conv2D twin, any timm model) have one row, mode 'pixels' (their kernels are
in pixels, as discrete mode's are).

Test images at size R: the synthetic dataset renders every sample directly at R (``synthetic.py``);
CIFAR-10 and ImageNet folders are resized to R with bilinear + antialias (timm's eval transform, crop_pct
1.0 for CIFAR-10, the model's for ImageNet).

Models (``--model``, one or more):
    DIR, local-dir:DIR  a Hub-format folder (config.json + weights, ``timm.models.save_for_hf``)
    hf-hub:ORG/NAME     a Hugging Face Hub model
    NAME                a registered name with its pretrained weights (``timm.create_model(pretrained=True)``)
    NAME=CKPT, CKPT     a checkpoint file (.pth, .pth.tar, .safetensors); an ``s4nd-train`` checkpoint carries
                        its model name, size and --model-kwargs, other files need NAME= and --model-kwargs
Rows and plot lines are labelled by ``--labels`` (one per model), else by NAME for NAME=CKPT, the checkpoint's
model name for an ``s4nd-train`` CKPT, the folder name for DIR; labels that still coincide get their parent
folder added (``name (run_a)``).

Outputs in ``--output``: results.md (the markdown table, also printed), results.json, resolution.png
(top-1 vs test resolution, one line per model and mode, training resolution marked); each file is written
to a temporary name and renamed, so a rerun replaces it whole. ``--output`` is checked before any model is
loaded (a folder, or a path where one can be created, that is writable).

Example::

    s4nd-eval-resolution --model out/main_job/weights/s4nd_iso_cifar_small.synthetic \\
        out/main_job/weights/s4nd_iso_cifar_conv2d_small.synthetic --dataset synthetic --resolutions 8 16 32 64
"""
import argparse
import json
import logging
import os
import platform
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from s4nd_timm._io import atomic_write, atomic_write_text
from s4nd_timm.layers.s4nd import RESOLUTIONS

from .common import check_local_dir, check_writable, dataset_num_classes, read_checkpoint
from .data import create_dataset, create_loader, dataset_kind, default_splits
from .engine import evaluate, run_cli, setup_console_logging

__all__ = ['MODES', 'get_args_parser', 'load_model', 'min_resolution', 'train_resolution', 'has_s4nd',
           'check_resolutions', 'evaluate_resolutions', 'format_table', 'plot_results', 'write_results',
           'machine_summary', 'save_figure', 'mode_name', 'main', 'cli']

_logger = logging.getLogger('train')
MODES = RESOLUTIONS  # the S4ND layer's resolution modes
NO_MODE = 'pixels'  # the mode word of models without S4ND layers, in tables, plots and progress lines
CHECKPOINT_EXTENSIONS = ('.pth', '.pth.tar', '.pt', '.bin', '.safetensors')
SYNTHETIC_MAX_CLASSES = 15


def get_args_parser() -> argparse.ArgumentParser:
    from timm.utils import ParseKwargs
    parser = argparse.ArgumentParser(
        's4nd-eval-resolution', description='Top-1 of models at several test resolutions (S4ND: continuous and '
        'discrete mode); writes results.md, results.json and resolution.png.')
    parser.add_argument('--model', nargs='+', required=True, metavar='MODEL',
                        help='Hub folder (DIR or local-dir:DIR), hf-hub:ID, registered NAME (pretrained weights), '
                        'NAME=CKPT or CKPT')
    parser.add_argument('--labels', nargs='+', default=None, metavar='LABEL',
                        help='row / plot-line label of each --model (default: NAME of NAME=CKPT, else the model name)')
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                        help='key=value construction args for models given by name (e.g. img_size=8 d_model=64)')
    parser.add_argument('--train-size', type=int, nargs='+', default=None, metavar='PX',
                        help='training resolution of each model (default: from the model or its checkpoint)')
    parser.add_argument('--resolutions', type=int, nargs='+', default=[8, 16, 32, 64], metavar='PX')
    parser.add_argument('--modes', nargs='+', default=list(MODES), choices=MODES, help='S4ND resolution modes')
    parser.add_argument('--dataset', '-d', default='synthetic', metavar='NAME', help='synthetic, cifar10 or imagenet')
    parser.add_argument('--data-dir', default=None, metavar='DIR', help='dataset root (cifar10, imagenet)')
    parser.add_argument('--split', default=None, metavar='NAME',
                        help='default: val (synthetic, imagenet), test (cifar10)')
    parser.add_argument('--num-samples', type=int, default=1000, metavar='N', help='synthetic: samples rendered')
    parser.add_argument('-b', '--batch-size', type=int, default=250, metavar='N')
    parser.add_argument('-j', '--workers', type=int, default=0, metavar='N', help='data loading processes')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--seed', type=int, default=0, metavar='S', help='synthetic samples (and loader) seed')
    parser.add_argument('--title', default=None, help='plot title')
    parser.add_argument('--output', default='./out/eval_resolution', metavar='DIR')
    return parser


# --- models --------------------------------------------------------------------------------------------------

def _unknown_model(name: str) -> ValueError:
    import timm
    return ValueError(f"unknown model {name!r}: not a registered timm name, a Hub folder or a checkpoint file. "
                      f"S4ND models: {timm.list_models('s4nd_*')}; any timm name (timm.list_models()) works too.")


def load_model(spec: str, model_kwargs: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build and load one ``--model`` entry (forms in the module docstring), in eval mode on the CPU.

    Returns:
        (model, info) with info {'label', 'model' (architecture), 'source', 'train_size' (int or None)}.
    Raises:
        ValueError for an unknown name, a missing checkpoint, a folder without config.json, weights that do
        not fit the architecture.
    """
    import timm
    model_kwargs = dict(model_kwargs or {})
    name, path = (spec.split('=', 1) if '=' in spec else (None, spec))
    if name is None and path.startswith('local-dir:'):
        path = path[len('local-dir:'):]
        if not os.path.isdir(path):
            raise ValueError(f"--model {spec!r}: folder {path!r} not found; local-dir: takes a Hub-format folder "
                             "(what save_pretrained / save_for_hf wrote).")
    looks_like_file = path.endswith(CHECKPOINT_EXTENSIONS) or os.sep in path or path.startswith('.')
    if name is None and os.path.isdir(path):
        check_local_dir(path)
        model = timm.create_model('local-dir:' + os.path.abspath(path), pretrained=True, **model_kwargs)
        return model.eval(), _info(model, os.path.basename(os.path.normpath(path)), path, None)
    if name is None and path.startswith('hf-hub:'):
        model = timm.create_model(path, pretrained=True, **model_kwargs)
        return model.eval(), _info(model, path.split('/')[-1], path, None)
    if name is None and not looks_like_file:
        if not timm.is_model(path):
            raise _unknown_model(path)
        model = timm.create_model(path, pretrained=True, **model_kwargs)
        return model.eval(), _info(model, path, 'pretrained', model_kwargs.get('img_size'))
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path!r} not found (--model {spec!r}); check the path, or give a Hub folder "
                         "or a registered model name.")
    state_dict, train_args = read_checkpoint(path)
    train_size = None
    if train_args is not None:
        name = name or getattr(train_args, 'model', None)
        model_kwargs = {**(getattr(train_args, 'model_kwargs', None) or {}), **model_kwargs}
        img_size, input_size = getattr(train_args, 'img_size', None), getattr(train_args, 'input_size', None)
        train_size = input_size[-1] if input_size else img_size
        if img_size and 'img_size' not in model_kwargs:
            model_kwargs['img_size'] = img_size
    if name is None:
        raise ValueError(f"checkpoint {path!r} does not name its model; pass NAME={path} (and its construction "
                         "args with --model-kwargs).")
    if not timm.is_model(name):
        raise _unknown_model(name)
    model = timm.create_model(name, **model_kwargs)
    classifier = model.pretrained_cfg.get('classifier')
    head = state_dict.get(f'{classifier}.weight') if isinstance(classifier, str) else None
    if head is not None and head.shape[0] != model.num_classes:
        model.reset_classifier(head.shape[0])
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise ValueError(f"checkpoint {path!r} does not fit {name} built with {model_kwargs}: "
                         f"{' '.join(first[:3])[:400]} ... Pass its construction args with --model-kwargs "
                         "(e.g. img_size=8 d_model=64).") from None
    label = spec.split('=', 1)[0] if '=' in spec else getattr(train_args, 'model', None) or os.path.basename(path)
    return model.eval(), _info(model, label, path, train_size or model_kwargs.get('img_size'))


def _info(model: nn.Module, label: str, source: str, train_size) -> Dict[str, Any]:
    return {'label': label, 'model': model.pretrained_cfg.get('architecture', type(model).__name__),
            'source': source, 'train_size': _side(train_size) if train_size else train_resolution(model)}


def _side(size) -> int:
    """An int or (H, W) / (C, H, W) size -> the width."""
    return int(size) if isinstance(size, int) else int(tuple(size)[-1])


def train_resolution(model: nn.Module) -> int:
    """The resolution a model was built for: its ``img_size`` argument, else its pretrained cfg's input size."""
    from timm.models import get_model_args
    size = get_model_args(model).get('img_size')
    return _side(size) if size else _side(model.pretrained_cfg['input_size'])


def min_resolution(model: nn.Module) -> int:
    """Smallest input side the model accepts: its total stride (largest ``feature_info`` reduction; a smaller
    input leaves an empty feature map) or its pretrained cfg's ``min_input_size``, whichever is larger."""
    strides = [f.get('reduction', 1) for f in getattr(model, 'feature_info', None) or []]
    floor = model.pretrained_cfg.get('min_input_size')
    return max([1, *strides] + ([_side(floor)] if floor else []))


def has_s4nd(model: nn.Module) -> bool:
    from s4nd_timm.layers import S4ND
    return any(isinstance(m, S4ND) for m in model.modules())


def _set_mode(model: nn.Module, mode: str) -> None:
    """Resolution mode of every S4ND layer (the model's setter when it has one)."""
    from s4nd_timm.layers import S4ND
    if hasattr(type(model), 's4nd_resolution'):
        model.s4nd_resolution = mode
        return
    for m in model.modules():
        if isinstance(m, S4ND):
            m.resolution = mode


def check_resolutions(entries: Sequence[Dict[str, Any]], resolutions: Sequence[int]) -> None:
    """ValueError when a test resolution is below a model's ``min_resolution`` (or not positive)."""
    if not resolutions:
        raise ValueError('--resolutions needs at least one size')
    for entry in entries:
        floor = min_resolution(entry['model'])
        low = [r for r in resolutions if r < floor]
        if low:
            raise ValueError(f"test resolution(s) {low} px are below the minimum of {entry['label']} ({floor} px: "
                             "its total stride / min_input_size); choose --resolutions of at least "
                             f"{floor} px for this model.")


# --- evaluation ----------------------------------------------------------------------------------------------

def _dataset_kwargs(dataset: str, data_dir: Optional[str], seed: int, num_samples: Optional[int],
                    num_classes: int) -> Dict[str, Any]:
    """``data.create_dataset`` keyword arguments, for evaluation."""
    kind = dataset_kind(dataset)
    if kind == 'synthetic' and not 1 <= num_classes <= SYNTHETIC_MAX_CLASSES:
        raise ValueError(f"the model has {num_classes} classes; the synthetic dataset has at most "
                         f"{SYNTHETIC_MAX_CLASSES}. Evaluate it on its own dataset (--dataset cifar10 / imagenet).")
    if kind not in ('synthetic', 'cifar10', 'imagenet'):
        raise ValueError(f"--dataset {dataset!r}: s4nd-eval-resolution reads synthetic, cifar10 or imagenet")
    if kind != 'synthetic' and not data_dir:
        raise ValueError(f"--dataset {dataset} reads files: pass --data-dir")
    return dict(data_dir=data_dir, seed=seed, num_classes=num_classes, num_samples=num_samples)


def evaluate_resolutions(
        entries: Sequence[Dict[str, Any]],
        resolutions: Sequence[int],
        *,
        dataset: str = 'synthetic',
        data_dir: Optional[str] = None,
        split: Optional[str] = None,
        seed: int = 0,
        num_samples: Optional[int] = None,
        modes: Sequence[str] = MODES,
        batch_size: int = 250,
        device: Optional[torch.device] = None,
        workers: int = 0,
) -> List[Dict[str, Any]]:
    """Top-1 / top-5 / loss of every model (and S4ND mode) at every resolution.

    Args:
        entries: dicts with 'model' (nn.Module), 'label', 'train_size', optionally 'modes' (this model's S4ND
            modes), and any other keys (copied to the rows).
        resolutions: test sizes in px (square images).
        dataset, data_dir, split (None: the dataset's eval split), seed, num_samples (synthetic): the data.
        modes: S4ND resolution modes to evaluate; models without S4ND get one row with mode None.
        device: where to evaluate (default CPU).
    Returns:
        one row per (model, mode): the entry's fields without 'model', 'mode', and 'top1', 'top5', 'loss',
        'seconds', each a dict {resolution: value}; 'samples'.
    """
    from timm.data import resolve_data_config
    check_resolutions(entries, resolutions)
    device = device or torch.device('cpu')
    split = split or default_splits(dataset)[1]
    expected = None if dataset_kind(dataset) == 'synthetic' else dataset_num_classes(dataset, data_dir, split)
    rows = []
    model_modes = [tuple(e.get('modes', modes)) if has_s4nd(e['model']) else (None,) for e in entries]
    runs = sum(len(m) for m in model_modes) * len(resolutions)
    done, start = 0, time.time()
    for entry, entry_modes in zip(entries, model_modes):
        model = entry['model']
        if expected is not None and model.num_classes != expected:
            raise ValueError(f"{entry['label']} has {model.num_classes} outputs but {dataset} has {expected} "
                             "classes; evaluate it on the dataset it was trained for.")
        ds_args = _dataset_kwargs(dataset, data_dir, seed, num_samples, model.num_classes)
        config = resolve_data_config({}, model=model)
        if dataset_kind(dataset) in ('cifar10', 'synthetic'):
            config['crop_pct'] = 1.0  # small, centred images: resize only
        model.to(device)
        previous = getattr(model, 's4nd_resolution', None)
        for mode in entry_modes:
            if mode is not None:
                _set_mode(model, mode)
            row = {k: v for k, v in entry.items() if k not in ('model', 'modes')}
            row.update(mode=mode, top1={}, top5={}, loss={}, seconds={})
            for res in resolutions:
                t0 = time.time()
                ds = create_dataset(dataset, split, False,
                                    dict(config, input_size=(config['input_size'][0], res, res)), **ds_args)
                loader = create_loader(ds, batch_size, False, seed, num_workers=workers)
                metrics = evaluate(model, loader, device=device, distributed=False, log_prefix=entry['label'])
                for key in ('top1', 'top5', 'loss'):
                    row[key][res] = metrics[key]
                row['seconds'][res] = time.time() - t0
                row['samples'] = metrics['samples']
                done += 1
                eta = (time.time() - start) / done * (runs - done)
                _logger.info(f"[eval {done}/{runs}] {entry['label']} ({mode or NO_MODE}) @ {res} px: top-1 "
                             f"{metrics['top1']:.1f}% ({metrics['samples']} images, {row['seconds'][res]:.1f} s, "
                             f"ETA {eta:.0f} s)")
            rows.append(row)
        if previous is not None:
            _set_mode(model, previous)
    return rows


# --- reporting -----------------------------------------------------------------------------------------------

def mode_name(row: Dict[str, Any]) -> str:
    """A row's resolution mode as printed: 'continuous', 'discrete', or NO_MODE for models without S4ND."""
    return row['mode'] or NO_MODE


def _row_name(row: Dict[str, Any]) -> str:
    return f"{row['label']} ({mode_name(row)})"


def format_table(rows: Sequence[Dict[str, Any]], resolutions: Sequence[int]) -> str:
    """Markdown table: one line per model and mode, top-1 (%) per test resolution; * marks the training size."""
    head = '| model | mode | train px | ' + ' | '.join(f'{r} px' for r in resolutions) + ' |'
    lines = [head, '|' + '---|' * (3 + len(resolutions))]
    for row in rows:
        cells = [f"{row['top1'][r]:.1f}" + ('*' if r == row['train_size'] else '') for r in resolutions]
        lines.append(f"| {row['label']} | {mode_name(row)} | {row['train_size']} | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot_results(rows: Sequence[Dict[str, Any]], resolutions: Sequence[int], path: str,
                 title: Optional[str] = None, chance: Optional[float] = None) -> None:
    """PNG: top-1 vs test resolution (log2 axis), one line per model and mode; a ring marks each line's
    training resolution, a dotted line ``chance`` (if given). Written atomically."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    styles = {'continuous': '-', 'discrete': '--', None: '-'}
    labels = list(dict.fromkeys(row['label'] for row in rows))  # one colour per model, one line style per mode
    for row in rows:
        color = f'C{labels.index(row["label"]) % 10}'
        ax.plot(resolutions, [row['top1'][r] for r in resolutions], styles[row['mode']], color=color, marker='o', ms=4,
                label=_row_name(row))
        if row['train_size'] in row['top1']:
            ax.plot([row['train_size']], [row['top1'][row['train_size']]], 'o', ms=11, mfc='none', mec=color, mew=1.5)
    for size in sorted({row['train_size'] for row in rows}):
        ax.axvline(size, color='0.6', lw=0.8, ls=':')
        ax.annotate(f'trained at {size} px', (size, 1.0), xycoords=('data', 'axes fraction'), xytext=(3, -12),
                    textcoords='offset points', fontsize=8, color='0.4')
    if chance is not None:
        ax.axhline(chance, color='0.3', lw=0.8, ls=':')
        ax.annotate(f'chance ({chance:g}%)', (0.0, chance), xycoords=('axes fraction', 'data'), xytext=(3, 3),
                    textcoords='offset points', fontsize=8, color='0.3')
    ax.set_xscale('log', base=2)
    ax.set_xticks(list(resolutions), [str(r) for r in resolutions])
    ax.set_xlim(min(resolutions) / 1.25, max(resolutions) * 1.25)
    ax.minorticks_off()
    ax.set_ylim(0, 100)
    ax.set_xlabel('test resolution (px)')
    ax.set_ylabel('top-1 accuracy (%)')
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc='upper right', framealpha=0.9)
    save_figure(fig, path)


def save_figure(fig, path: str) -> None:
    """Write a matplotlib figure as PNG through a temporary file beside ``path`` and a rename; close it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    try:
        atomic_write(path, lambda fh: fig.savefig(fh, format='png'))
    finally:
        plt.close(fig)


def machine_summary(device: torch.device) -> str:
    """One line: CPU / GPU, cores, torch version."""
    if device.type == 'cuda':
        what = torch.cuda.get_device_name(device)
    else:
        what = f'{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads'
    return f'{what}, torch {torch.__version__}, {platform.system()}'


def _jsonable(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows with resolution keys as strings (JSON object keys)."""
    return [{k: ({str(r): v for r, v in val.items()} if isinstance(val, dict) else val) for k, val in row.items()}
            for row in rows]


def write_results(output: str, rows: Sequence[Dict[str, Any]], resolutions: Sequence[int],
                  meta: Dict[str, Any], title: Optional[str] = None, chance: Optional[float] = None,
                  stem: str = 'resolution', extra_markdown: str = '', plot: bool = True) -> Dict[str, str]:
    """results.md (the table, then ``extra_markdown``), results.json (``meta`` + 'resolutions' + 'results')
    and (``plot``) ``<stem>.png`` in ``output``, each replaced atomically.

    Returns:
        {'table', 'json', 'plot'} paths.
    """
    os.makedirs(output, exist_ok=True)
    paths = {'table': os.path.join(output, 'results.md'), 'json': os.path.join(output, 'results.json'),
             'plot': os.path.join(output, f'{stem}.png')}
    extra = f'\n{extra_markdown}\n' if extra_markdown else ''
    table = format_table(rows, resolutions) + '\n' if rows else ''
    atomic_write_text(paths['table'], table + extra)
    payload = {**meta, 'resolutions': list(resolutions), 'results': _jsonable(rows)}
    atomic_write_text(paths['json'], json.dumps(payload, indent=1) + '\n')
    if plot:
        plot_results(rows, resolutions, paths['plot'], title=title, chance=chance)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Evaluate; returns {'rows', 'paths', 'table'}."""
    args = get_args_parser().parse_args(argv)
    setup_console_logging(to='stdout')
    if args.train_size is not None and len(args.train_size) != len(args.model):
        raise ValueError(f"--train-size needs one size per --model ({len(args.model)}); got {args.train_size}")
    if any(r < 1 for r in args.resolutions):
        raise ValueError(f"--resolutions must be positive sizes in px; got {args.resolutions}")
    if args.labels is not None and len(args.labels) != len(args.model):
        raise ValueError(f"--labels needs one label per --model ({len(args.model)}); got {args.labels}")
    dataset_kind(args.dataset)  # unknown names fail before any model is built
    check_writable(args.output, '--output', folder=True)
    device = torch.device(args.device)
    entries = []
    for i, spec in enumerate(args.model):
        model, info = load_model(spec, args.model_kwargs)
        if args.train_size is not None:
            info['train_size'] = args.train_size[i]
        entries.append({**info, 'model': model})
    _set_labels(entries, args.labels)
    start = time.time()
    rows = evaluate_resolutions(entries, args.resolutions, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                                seed=args.seed, num_samples=args.num_samples, modes=args.modes,
                                batch_size=args.batch_size, device=device, workers=args.workers)
    meta = {'dataset': args.dataset, 'split': args.split or default_splits(args.dataset)[1], 'seed': args.seed,
            'machine': machine_summary(device), 'seconds': time.time() - start,
            'created': time.strftime('%Y-%m-%d %H:%M:%S')}
    table = format_table(rows, args.resolutions)
    paths = write_results(args.output, rows, args.resolutions, meta, title=args.title)
    print(table)
    print(f"wrote {paths['table']}, {paths['json']}, {paths['plot']}")
    return {'rows': rows, 'paths': paths, 'table': table}


def _set_labels(entries: List[Dict[str, Any]], labels: Optional[Sequence[str]]) -> None:
    """Give each entry its ``--labels`` label, or make the default labels unique: a label shared by several
    models gets its source's parent folder added; ValueError (asking for --labels) when they still coincide."""
    if labels is not None:
        if len(set(labels)) != len(labels):
            raise ValueError(f"--labels must differ from each other; got {list(labels)}")
        for entry, label in zip(entries, labels):
            entry['label'] = label
        return
    names = [e['label'] for e in entries]
    for entry in entries:
        if names.count(entry['label']) > 1:
            parent = os.path.basename(os.path.dirname(os.path.abspath(entry['source'])))
            entry['label'] = f"{entry['label']} ({parent})"
    final = [e['label'] for e in entries]
    if len(set(final)) != len(final):
        raise ValueError(f"two --model entries get the same label ({final}); name them with --labels")


def cli() -> None:
    """Console entry point ``s4nd-eval-resolution``."""
    run_cli(main, 's4nd-eval-resolution')


if __name__ == '__main__':
    cli()
