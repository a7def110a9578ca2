"""Model benchmarks: S4ND models next to the timm models they modify (docs/benchmarks.md "model", "CPU").

    python benchmarks/bench_models.py                         # CUDA: train + infer, batch 128, 224 px, bf16,
                                                              # channels-last, eager and torch.compile, per backend
    python benchmarks/bench_models.py --device cpu --sections latency      # CPU inference latency, batch 1, fp32
    python benchmarks/bench_models.py --sections flops        # params and analytic GFLOPs of every s4nd_* model
    python benchmarks/bench_models.py --device cpu            # CPU targets: S4ND / timm time ratios (``ratios``)

Pairs: s4nd_convnext_tiny vs convnext_tiny, s4nd_vit_small_patch16 vs vit_small_patch16_224.
train: img/s of one optimizer step (AdamW, fwd + bwd + step, bf16 autocast) and its peak memory;
infer: img/s of an inference-mode forward and its peak memory. The S4ND models run once per
``--backends`` entry (the layer's convolution path); the timm models once.
ratios (CPU, fp32, eager, the default section there): S4ND / timm time ratios in one run, alternating rounds,
min of ``--rounds``: s4nd_convnext_tiny / convnext_tiny inference at batch 1 and 8 and training step (fwd + bwd +
SGD step) at batch 8, s4nd_vit_small_patch16 / vit_small_patch16_224 inference at batch 8 (224 px); and the
ConvNeXt-T block's S4ND-2D (as the model builds it, kernel generation included) fwd+bwd / the 7x7 depthwise conv
at each stage shape, batch 16.
flops: parameters, and GFLOPs per image (multiply-add = 2) at the cfg input size, as
torch.utils.flop_counter counts everything but the S4ND convolutions (it misses FFTs) plus an analytic
count of each S4ND convolution for the input size it sees: Toeplitz (matmul path) 2 c H ΠL ΣL_i,
FFT path (sizes P_i = 2 L_i, N = ΠP_i, real FFT = 2.5 N log2 N) H FFTs in, c H out, d complex products
of N/2 points per channel, plus the D skip 2 c H ΠL. Kernel generation (per layer, not per image) is left out.
"""
import argparse
import json
import math
from typing import Dict, List, Optional

import timm
import torch
import torch.nn as nn
from _timing import alternating_min_ms, header, peak_mib, table, time_ms
from torch.utils.flop_counter import FlopCounterMode

import s4nd_timm  # noqa: F401  (registers the s4nd_* models)
from s4nd_timm.layers import S4ND

PAIRS = (('s4nd_convnext_tiny', 'convnext_tiny'), ('s4nd_vit_small_patch16', 'vit_small_patch16_224'))
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
COLUMNS = ['model', 'backend', 'compile', 'img/s', 'vs timm', 'peak MiB']
FLOP_COLUMNS = ['model', 'input', 'params (M)', 'GFLOPs (matmul path)', 'S4ND GFLOPs (matmul)', 'S4ND GFLOPs (FFT)']


def _model(name: str, backend: Optional[str], device: torch.device, channels_last: bool) -> nn.Module:
    model = timm.create_model(name).to(device)
    if backend is not None:
        model.s4nd_backend = backend
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _train_step(model: nn.Module, x: torch.Tensor, amp: Optional[torch.dtype]):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randint(0, 1000, (x.shape[0],), device=x.device)

    def step():
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _infer_step(model: nn.Module, x: torch.Tensor, amp: Optional[torch.dtype]):
    def step():
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            model(x)
    return step


def run_throughput(mode: str, args) -> List[dict]:
    """img/s and peak memory of train or inference steps, every pair, backend and compile setting."""
    device, amp = torch.device(args.device), DTYPES[args.dtype] if args.dtype != 'fp32' else None
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device).to(memory_format=fmt)
    rows = []
    for compiled in args.compile:
        for s4nd_name, timm_name in PAIRS:
            base = None
            for name, backends in ((timm_name, [None]), (s4nd_name, args.backends)):
                for backend in backends:
                    model = _model(name, backend, device, args.channels_last).train(mode == 'train')
                    if compiled == 'on':
                        model = torch.compile(model)
                    make = _train_step if mode == 'train' else _infer_step
                    step = make(model, x, amp)
                    ms = time_ms(step, device, args.min_time)
                    ips = args.batch / (ms * 1e-3)
                    base = ips if name == timm_name else base
                    rows.append({'model': name, 'backend': backend or '-', 'compile': compiled, 'img/s': ips,
                                 'vs timm': ips / base if base else None, 'peak MiB': peak_mib(step, device)})
                    del model, step
    return rows


def run_latency(args) -> List[dict]:
    """Batch-1 inference latency (ms) on the CPU, fp32, eager: every pair (``--img-size``), every S4ND backend;
    then each ``--latency-models`` entry alone at its cfg input size."""
    device = torch.device('cpu')
    x = torch.randn(1, 3, args.img_size, args.img_size)
    rows = []
    for s4nd_name, timm_name in PAIRS:
        base = None
        for name, backends in ((timm_name, [None]), (s4nd_name, args.backends)):
            for backend in backends:
                model = _model(name, backend, device, channels_last=False).eval()
                ms = time_ms(_infer_step(model, x, None), device, args.min_time)
                base = ms if name == timm_name else base
                rows.append({'model': name, 'input': f'{args.img_size}x{args.img_size}', 'backend': backend or '-',
                             'latency ms': ms, 'vs timm': ms / base})
    for name in args.latency_models:
        for backend in args.backends:
            model = _model(name, backend, device, channels_last=False).eval()
            size = model.pretrained_cfg['input_size']
            xm = torch.randn(1, *size)
            rows.append({'model': name, 'input': 'x'.join(map(str, size[1:])), 'backend': backend,
                         'latency ms': time_ms(_infer_step(model, xm, None), device, args.min_time)})
    return rows


RATIO_CASES = (  # (what, S4ND model, timm model, batch, mode)
    ('ConvNeXt-T inference b1', 's4nd_convnext_tiny', 'convnext_tiny', 1, 'infer'),
    ('ConvNeXt-T inference b8', 's4nd_convnext_tiny', 'convnext_tiny', 8, 'infer'),
    ('ConvNeXt-T training step b8', 's4nd_convnext_tiny', 'convnext_tiny', 8, 'train'),
    ('ViT-S inference b8', 's4nd_vit_small_patch16', 'vit_small_patch16_224', 8, 'infer'),
)
RATIO_TARGETS = {'ConvNeXt-T inference b1': 1.0, 'ConvNeXt-T inference b8': 1.0, 'ConvNeXt-T training step b8': 1.1,
                 'ViT-S inference b8': 1.0}
LAYER_TARGET = 1.5
RATIO_COLUMNS = ['case', 'S4ND ms', 'timm ms', 'ratio', 'target', 'met']


def _sgd_step(model: nn.Module, x: torch.Tensor):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    target = torch.randint(0, 1000, (x.shape[0],))

    def step():
        nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _ratio_row(case: str, s4nd_ms: float, timm_ms: float, target: float) -> dict:
    ratio = s4nd_ms / timm_ms
    return {'case': case, 'S4ND ms': s4nd_ms, 'timm ms': timm_ms, 'ratio': ratio, 'target': f'<= {target}',
            'met': 'yes' if ratio <= target else 'NO'}


def run_ratios(args) -> List[dict]:
    """The CPU targets (module docstring): every pair timed in the same alternating rounds."""
    torch.manual_seed(0)
    models = {name: timm.create_model(name) for _, s4nd_name, timm_name, _, _ in RATIO_CASES
              for name in (s4nd_name, timm_name)}
    fns, rows = {}, []
    for case, s4nd_name, timm_name, batch, mode in RATIO_CASES:
        x = torch.randn(batch, 3, args.img_size, args.img_size)
        for name in (s4nd_name, timm_name):
            model = models[name].train(mode == 'train')
            fns[(case, name)] = _sgd_step(model, x) if mode == 'train' else _infer_step(model, x, None)
    for case, s4nd_name, timm_name, batch, mode in RATIO_CASES:  # train/eval switches: one case at a time
        for name in (s4nd_name, timm_name):
            models[name].train(mode == 'train')
        best = alternating_min_ms({name: fns[(case, name)] for name in (s4nd_name, timm_name)}, args.rounds)
        rows.append(_ratio_row(case, best[s4nd_name], best[timm_name], RATIO_TARGETS[case]))
    block = models['s4nd_convnext_tiny'].stages[0].blocks[0].conv_dw  # the model's S4ND settings
    layer_fns = {}
    for name, (dim, n) in {'96x56x56': (96, 56), '192x28x28': (192, 28), '384x14x14': (384, 14),
                           '768x7x7': (768, 7)}.items():
        x = torch.randn(16, dim, n, n, requires_grad=True)
        layer = S4ND(dim, ndim=2, d_state=block.d_state, l_max=n, mode=block.mode, activation=None, postact=None,
                     backend=args.backends[0])
        conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        layer_fns[(name, 's4nd')], layer_fns[(name, 'dwconv7')] = _fwd_bwd(layer, x), _fwd_bwd(conv, x)
    best = alternating_min_ms(layer_fns, args.rounds)
    for name in ('96x56x56', '192x28x28', '384x14x14', '768x7x7'):
        rows.append(_ratio_row(f'S4ND-2D / dwconv7 fwd+bwd {name} b16', best[(name, 's4nd')],
                               best[(name, 'dwconv7')], LAYER_TARGET))
    return rows


def _fwd_bwd(module: nn.Module, x: torch.Tensor):
    grad = torch.randn_like(x)  # a dense output gradient, as in a model (sum().backward() would give a
    # stride-0 one, which sends CPU bmm backward into a per-matrix loop)

    def step():
        module(x).backward(grad)
    return step


def s4nd_flops(layer: S4ND, spatial) -> Dict[str, float]:
    """Analytic FLOPs of one S4ND convolution (per image) for an input of these spatial lengths."""
    c, h, points = layer.channels, layer.dim, math.prod(spatial)
    skip = 2 * c * h * points
    matmul = 2 * c * h * points * sum(spatial) + skip
    n = math.prod(2 * s for s in spatial)
    fft = 2.5 * n * math.log2(n) * (h + c * h) + 6 * (n / 2) * c * h * len(spatial) + skip
    return {'matmul': matmul, 'fft': fft}


def model_flops(name: str) -> dict:
    """Parameters and GFLOPs per image of a registered model at its cfg input size."""
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    size = tuple(cfg['input_size'])
    if getattr(model, 'num_frames', None) and len(size) == 3:
        size = (size[0], model.num_frames) + size[1:]
    spatial: Dict[str, tuple] = {}
    names = {m: n for n, m in model.named_modules()}

    def record(module, args, kwargs):
        x = args[0]
        spatial[names[module]] = tuple(x.shape[2:] if module.layout == 'channels_first' else x.shape[1:-1])

    hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in model.modules() if isinstance(m, S4ND)]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, *size))
    for hook in hooks:
        hook.remove()
    counts = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    root = type(model).__name__
    rest = counts['Global']
    s4nd = {'matmul': 0.0, 'fft': 0.0}
    for module_name, lengths in spatial.items():
        key = f'{root}.{module_name}'
        rest -= counts.get(key, 0) - counts.get(f'{key}.output_linear', 0)
        for path, flops in s4nd_flops(model.get_submodule(module_name), lengths).items():
            s4nd[path] += flops
    return {'model': name, 'input': 'x'.join(map(str, size)),
            'params (M)': sum(p.numel() for p in model.parameters()) / 1e6,
            'GFLOPs (matmul path)': (rest + s4nd['matmul']) / 1e9,
            'S4ND GFLOPs (matmul)': s4nd['matmul'] / 1e9, 'S4ND GFLOPs (FFT)': s4nd['fft'] / 1e9}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--sections', nargs='+', default=None,
                        choices=['train', 'infer', 'latency', 'ratios', 'flops'],
                        help='default: train infer on CUDA, ratios on CPU')
    parser.add_argument('-b', '--batch', type=int, default=128)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--dtype', default='bf16', choices=sorted(DTYPES), help='autocast dtype (train, infer)')
    parser.add_argument('--backends', nargs='+', default=['auto', 'fft', 'matmul', 'triton'],
                        help='S4ND convolution paths to run (triton: CUDA only)')
    parser.add_argument('--compile', nargs='+', default=['off', 'on'], choices=['off', 'on'])
    parser.add_argument('--no-channels-last', dest='channels_last', action='store_false')
    parser.add_argument('--latency-models', nargs='*', default=[],
                        help='latency: more s4nd_* models, alone, at their cfg input size (2-D models only)')
    parser.add_argument('--min-time', type=float, default=1.0, help='CPU timer: minimum measured seconds')
    parser.add_argument('--rounds', type=int, default=5, help='ratios: alternating rounds (min of N)')
    parser.add_argument('--json', default=None, help='also write the rows to this file')
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type != 'cuda':
        args.backends = [b for b in args.backends if b != 'triton']
    sections = args.sections or (['train', 'infer'] if device.type == 'cuda' else ['ratios'])
    results = {}
    for section in sections:
        if section in ('train', 'infer'):
            print(header(device, dtype=args.dtype, batch=args.batch, img=args.img_size,
                         channels_last=args.channels_last))
            rows, columns = run_throughput(section, args), COLUMNS
        elif section == 'ratios':
            print(header(torch.device('cpu'), dtype='fp32', img=args.img_size, rounds=args.rounds,
                         backend=args.backends[0]))
            rows, columns = run_ratios(args), RATIO_COLUMNS
        elif section == 'latency':
            print(header(torch.device('cpu'), dtype='fp32', batch=1, img=args.img_size))
            rows, columns = run_latency(args), ['model', 'input', 'backend', 'latency ms', 'vs timm']
        else:
            print(header(torch.device('cpu'), dtype='fp32', batch=1))
            rows, columns = [model_flops(name) for name in timm.list_models('s4nd_*')], FLOP_COLUMNS
        print(f'\n### {section}\n\n{table(rows, columns)}\n')
        results[section] = rows
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == '__main__':
    main()
