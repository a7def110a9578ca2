"""S4ND layer benchmarks: every convolution path, fwd+bwd, against nn.Conv2d(C, C, 7, groups=C) and the
memory floor (docs/benchmarks.md). Prints one header line and a markdown table per section.

    python benchmarks/bench_layer.py                       # CUDA if available: every section, batch 128, bf16
    python benchmarks/bench_layer.py --device cpu --batch 2 --dtype fp32 --sections layer scaling

Sections: layer (ConvNeXt-T stage shapes, 2-D), kernel_gen (all axis kernels of a layer, fwd+bwd),
video (3-D), seq (1-D), auto (every layer shape of ConvNeXt-T, ViT-S and the 3-D ConvNeXt-T at batch
1, 8, 32: the convolution alone per path next to ``backend='auto'``'s choice, fwd+bwd and inference;
``--sections auto``), scaling (the convolution alone, given kernels, 2-D and 1-D as the size grows:
where matmul stops beating FFT; kernel generation is the same for every path and left out).
Memory floor: the bytes a fused fwd+bwd must move (read x, write y; read dy and x, write dx:
5 x numel x itemsize) over the measured copy bandwidth of the device.
"""
import argparse
import json
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from _timing import copy_bandwidth, header, peak_mib, table, time_ms
from s4nd_timm import S4ND
from s4nd_timm.kernels import HAS_TRITON, separable_conv

STAGES = {'96x56x56': (96, 56, 56), '192x28x28': (192, 28, 28), '384x14x14': (384, 14, 14), '768x7x7': (768, 7, 7)}
VIDEO = {'96x8x56x56': (96, 8, 56, 56)}
SEQ = {'384x196': (384, 196), '256x4096': (256, 4096)}
SCALING_2D = (32, 64, 128, 256, 512)
SCALING_1D = (64, 128, 256, 512, 1024, 2048, 4096)
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
COLUMNS = ['shape', 'backend', 'fwd+bwd ms', 'vs dwconv7', '% memory floor', 'peak MiB']


def _fwd_bwd(module: nn.Module, x: torch.Tensor, amp: Optional[torch.dtype]):
    def step():
        with torch.autocast(x.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            y = module(x)
        y.backward(torch.ones_like(y))
    return step


def _layer(shape: Sequence[int], backend: str, device, d_state: int) -> S4ND:
    """The S4ND of an S4ND-ConvNeXt block: linear (no activation / projection), bidirectional."""
    dim, spatial = shape[0], tuple(shape[1:])
    return S4ND(dim, ndim=len(spatial), d_state=d_state, l_max=spatial, activation=None, postact=None,
                backend=backend).to(device)


def run_layers(shapes: Dict[str, Sequence[int]], backends: List[str], args, dwconv: bool) -> List[dict]:
    """fwd+bwd of the S4ND layer (kernel generation included) per backend; dwconv7 next to it (2-D only)."""
    rows, device, amp = [], torch.device(args.device), DTYPES[args.dtype] if args.dtype != 'fp32' else None
    bandwidth = copy_bandwidth(device)
    itemsize = 2 if amp is not None else 4
    for name, shape in shapes.items():
        x = torch.randn(args.batch, *shape, device=device, requires_grad=True)
        floor_ms = 5 * x.numel() * itemsize / bandwidth * 1e3
        ref_ms = None
        if dwconv:
            conv = nn.Conv2d(shape[0], shape[0], 7, padding=3, groups=shape[0]).to(device)
            ref_ms = time_ms(_fwd_bwd(conv, x, amp), device, args.min_time)
            rows.append({'shape': name, 'backend': 'dwconv7', 'fwd+bwd ms': ref_ms, 'vs dwconv7': 1.0,
                         '% memory floor': 100 * floor_ms / ref_ms,
                         'peak MiB': peak_mib(_fwd_bwd(conv, x, amp), device)})
        for backend in backends:
            if backend == 'matmul' and _toeplitz_mib(shape) > args.max_toeplitz_mib:
                rows.append({'shape': name, 'backend': backend, 'fwd+bwd ms': 'skipped (Toeplitz too large)'})
                continue
            step = _fwd_bwd(_layer(shape, backend, device, args.d_state), x, amp)
            ms = time_ms(step, device, args.min_time)
            rows.append({'shape': name, 'backend': backend, 'fwd+bwd ms': ms,
                         'vs dwconv7': ms / ref_ms if ref_ms else None, '% memory floor': 100 * floor_ms / ms,
                         'peak MiB': peak_mib(step, device)})
    return rows


def run_conv(shapes: Dict[str, Sequence[int]], backends: List[str], args) -> List[dict]:
    """fwd+bwd of the convolution alone (given two-sided kernels, grads to input, kernels and D) per backend."""
    rows, device = [], torch.device(args.device)
    amp = DTYPES[args.dtype] if args.dtype != 'fp32' else None
    for name, shape in shapes.items():
        x = torch.randn(args.batch, *shape, device=device, requires_grad=True)
        ks = [torch.randn(1, shape[0], 2 * n - 1, device=device, requires_grad=True) for n in shape[1:]]
        D = torch.randn(1, shape[0], device=device, requires_grad=True)
        for backend in backends:
            if backend == 'matmul' and _toeplitz_mib(shape) > args.max_toeplitz_mib:
                rows.append({'shape': name, 'backend': backend, 'fwd+bwd ms': 'skipped (Toeplitz too large)'})
                continue

            def step(backend=backend, x=x, ks=ks, D=D):
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    y = separable_conv(x.to(amp) if amp else x, ks, D, backend=backend)
                y.backward(torch.ones_like(y))
            rows.append({'shape': name, 'backend': backend, 'fwd+bwd ms': time_ms(step, device, args.min_time),
                         'peak MiB': peak_mib(step, device)})
    return rows


AUTO_MODELS = ('s4nd_convnext_tiny', 's4nd_vit_small_patch16', 's4nd_convnext_tiny_3d')


def model_layer_shapes(names: Sequence[str]) -> Dict[str, tuple]:
    """{'c x H x L..': (c, H, *L)} of every S4ND in these registered models at their default input size
    (spatial = l_max, which the models set to the sizes their default input produces)."""
    import timm
    shapes = {}
    for name in names:
        model = timm.create_model(name, d_state=2)  # the layer shapes do not depend on d_state
        for layer in model.modules():
            if isinstance(layer, S4ND):
                shape = (layer.channels, layer.dim) + tuple(layer.l_max)
                shapes['x'.join(map(str, shape))] = shape
    return shapes


def run_auto(args) -> List[dict]:
    """Per model layer shape and batch, the convolution alone (given kernels, fp32) on each path next to the path
    ``select_backend`` picks: fwd+bwd (train: fft, matmul) and, with gradients off, the forward (infer: fft, matmul,
    direct) of an input stored channels innermost, as the models hand it over (ConvNeXt blocks: the NHWC-strided
    view; ViT: (B, N, C)). Shapes whose FFT buffers would exceed ``--max-fft-mib`` skip FFT."""
    from s4nd_timm.kernels import select_backend
    rows, device = [], torch.device(args.device)
    for name, (c, dim, *spatial) in model_layer_shapes(AUTO_MODELS).items():
        for batch in args.auto_batches:
            x = torch.randn(batch, *spatial, dim, device=device).movedim(-1, 1).requires_grad_()
            ks = [torch.randn(c, dim, 2 * n - 1, device=device, requires_grad=True) for n in spatial]
            D = torch.randn(c, dim, device=device, requires_grad=True)
            fft_mib = batch * c * dim * 2 ** len(spatial) * math.prod(spatial) * 8 / 2 ** 20
            if x.numel() * 4 / 2 ** 20 > args.max_input_mib:
                continue
            for mode, paths in (('train', ('fft', 'matmul')), ('infer', ('fft', 'matmul', 'direct'))):
                times = {}
                for backend in paths:
                    if backend == 'fft' and fft_mib > args.max_fft_mib:
                        continue

                    def step(backend=backend, mode=mode):
                        if mode == 'train':
                            separable_conv(x, ks, D, backend=backend).sum().backward()
                        else:
                            with torch.no_grad():
                                separable_conv(x, ks, D, backend=backend)
                    times[backend] = time_ms(step, device, args.min_time)
                with torch.set_grad_enabled(mode == 'train'):
                    auto = select_backend(x, ks)
                best = min(times, key=times.get)
                rows.append({'shape': name, 'batch': batch, 'mode': mode,
                             **{f'{b} ms': times.get(b, 'skipped') for b in paths},
                             'fastest': best, 'auto': auto, 'auto / fastest': times.get(auto, math.inf) / times[best]})
                print(rows[-1], flush=True)
    return rows


def _toeplitz_mib(shape: Sequence[int]) -> float:
    return shape[0] * sum(n * n for n in shape[1:]) * 4 / 2 ** 20


def run_kernel_gen(args) -> List[dict]:
    """All per-axis two-sided kernels of one layer, fwd+bwd: torch path, and the Triton generator on CUDA."""
    rows, device = [], torch.device(args.device)
    paths = {'torch': lambda layer, lengths: layer.axis_kernels(lengths)}
    if device.type == 'cuda' and HAS_TRITON:
        paths['triton'] = lambda layer, lengths: layer.axis_kernels(lengths, backend='triton')
    for name, shape in {**STAGES, **VIDEO}.items():
        layer = _layer(shape, 'auto', device, args.d_state)
        for path, generate in paths.items():

            def step(generate=generate, layer=layer, shape=shape):
                ks = generate(layer, shape[1:])
                sum(k.square().sum() for k in ks).backward()
            rows.append({'shape': name, 'backend': path, 'fwd+bwd ms': time_ms(step, device, args.min_time)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--backend', nargs='+', default=None, help='paths to time (default: fft matmul [triton])')
    parser.add_argument('--sections', nargs='+', default=['layer', 'kernel_gen', 'video', 'seq', 'scaling'],
                        choices=['layer', 'kernel_gen', 'video', 'seq', 'scaling', 'auto'])
    parser.add_argument('--auto-batches', type=int, nargs='+', default=[1, 8, 32], help='auto section batches')
    parser.add_argument('--max-fft-mib', type=float, default=1024, help='auto: skip FFT above this buffer size')
    parser.add_argument('--max-input-mib', type=float, default=512, help='auto: skip inputs larger than this')
    parser.add_argument('--shapes', nargs='+', default=None, help=f'subset of the layer shapes {list(STAGES)}')
    parser.add_argument('--dtype', default=None, choices=list(DTYPES), help='autocast dtype (default bf16 on CUDA)')
    parser.add_argument('-b', '--batch', type=int, default=128)
    parser.add_argument('--scaling-batch', type=int, default=None, help='scaling section batch (default --batch)')
    parser.add_argument('--d-state', type=int, default=64)
    parser.add_argument('--max-toeplitz-mib', type=float, default=2048, help='skip matmul above this Toeplitz size')
    parser.add_argument('--min-time', type=float, default=0.5, help='CPU: seconds per measurement')
    parser.add_argument('--json', default=None, help='also write all rows to this file')
    args = parser.parse_args()
    device = torch.device(args.device)
    args.dtype = args.dtype or ('bf16' if device.type == 'cuda' else 'fp32')
    backends = args.backend or ['fft', 'matmul'] + (['triton'] if device.type == 'cuda' and HAS_TRITON else [])
    torch.manual_seed(0)
    print(header(device, dtype=args.dtype, batch=args.batch, d_state=args.d_state))
    results = {}
    stages = {k: v for k, v in STAGES.items() if args.shapes is None or k in args.shapes}
    if 'layer' in args.sections:
        results['layer'] = run_layers(stages, backends, args, dwconv=True)
    if 'kernel_gen' in args.sections:
        results['kernel_gen'] = run_kernel_gen(args)
    if 'video' in args.sections:
        results['video'] = run_layers(VIDEO, backends, args, dwconv=False)
    if 'seq' in args.sections:
        results['seq'] = run_layers(SEQ, backends, args, dwconv=False)
    if 'scaling' in args.sections:
        scaled = argparse.Namespace(**{**vars(args), 'batch': args.scaling_batch or args.batch})
        shapes = {f'96x{n}x{n}': (96, n, n) for n in SCALING_2D}
        shapes.update({f'256x{n}': (256, n) for n in SCALING_1D})
        results['scaling'] = run_conv(shapes, [b for b in backends if b != 'triton'], scaled)
    if 'auto' in args.sections:
        results['auto'] = run_auto(args)
    for section, rows in results.items():
        print(f'\n### {section}\n')
        columns = {'kernel_gen': ['shape', 'backend', 'fwd+bwd ms'],
                   'scaling': ['shape', 'backend', 'fwd+bwd ms', 'peak MiB'],
                   'auto': ['shape', 'batch', 'mode', 'fft ms', 'matmul ms', 'direct ms', 'fastest', 'auto',
                            'auto / fastest']}
        print(table(rows, columns.get(section, COLUMNS)))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
