"""GPU check in one command: cuda parity tests, layer, kernel generation and model benchmarks (docs/benchmarks.md).

    python benchmarks/gpu_check.py                  # one CUDA GPU, about 8 minutes: writes gpu_check/gpu_check.md + .json
    python benchmarks/gpu_check.py --dry-run        # CPU, tiny shapes, Triton in the interpreter (CI, about a minute)

Sections, in order, each started only while the time budget (``--budget-s``, default 450 s) lasts, and run in parts
(one stage shape, one model backend) with the budget checked between parts; what would not fit is skipped and the
output says so. A part that fails is reported (exit status 1) and the rest goes on:
    parity      ``pytest -m cuda tests/`` (the cuda-marked parity tests; a subprocess, stopped at its time share)
    layer       S4ND-2D fwd+bwd at the four ConvNeXt-T stage shapes, batch 128, bf16 autocast, every backend,
                next to nn.Conv2d(C, C, 7, groups=C) and the memory floor (``bench_layer.run_layers``)
    kernel_gen  all axis kernels of each stage's layer, fwd+bwd, torch path and Triton generator
    models      s4nd_convnext_tiny vs convnext_tiny, s4nd_vit_small_patch16 vs vit_small_patch16_224: training and
                inference img/s and peak memory, bf16, channels-last, compile off (``bench_models.run_throughput``);
                the direct path (torch's depthwise conv per axis) for inference only, after the others
    compile     the same with torch.compile, backend 'auto' only, while time remains
The markdown starts with the GPU name, driver, torch, triton and timm versions; the JSON holds every row.
"""
import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
STAGES_DRY = {'8x12x12': (8, 12, 12), '16x6x6': (16, 6, 6)}
BACKENDS = ['fft', 'matmul', 'triton']
MODEL_BACKENDS = ['auto', 'fft', 'matmul', 'triton']
# seconds of budget a section needs to be started; None: never (compiling models on a CPU takes minutes)
# 'part': seconds left for a section's next part (one stage shape, one (mode, backend) of the models)
NEEDS = {'parity': 60, 'layer': 60, 'kernel_gen': 15, 'models': 120, 'compile': 150, 'part': 20}
NEEDS_DRY = {'parity': 5, 'layer': 5, 'kernel_gen': 2, 'models': 10, 'compile': None, 'part': 0}
PARITY_SHARE = 150  # the parity subprocess is stopped after this many seconds


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return 'n/a'


def environment(torch) -> Dict[str, str]:
    """GPU name, driver and library versions (CPU and 'n/a' driver on a dry run)."""
    env = {'torch': torch.__version__, 'triton': _version('triton'), 'timm': _version('timm'),
           's4nd_timm': _version('s4nd_timm'), 'python': sys.version.split()[0]}
    if torch.cuda.is_available():
        env['gpu'] = torch.cuda.get_device_name()
        env['cuda'] = str(torch.version.cuda)
        try:
            env['driver'] = subprocess.run(
                ['nvidia-smi', '--query-gpu=driver_version', '--format=csv,noheader'], capture_output=True,
                text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            env['driver'] = 'unknown (nvidia-smi not found)'
    else:
        env['gpu'], env['driver'] = 'none (CPU dry run)', 'n/a'
    return env


def run_parity(timeout: float, dry_run: bool) -> dict:
    """The cuda-marked tests in a subprocess (the dry run: those of test_kernels.py, skipped without a GPU)."""
    tests = ROOT / 'tests' / ('test_kernels.py' if dry_run else '')
    if not tests.exists():
        return {'status': 'skipped: tests/ not found next to benchmarks/ (run from a clone)'}
    cmd = [sys.executable, '-m', 'pytest', '-m', 'cuda', '-q', '-p', 'no:cacheprovider', str(tests)]
    start = time.time()
    try:
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        tail = e.stdout.decode(errors='replace') if isinstance(e.stdout, bytes) else (e.stdout or '')
        return {'status': f'incomplete: stopped after {timeout:.0f} s', 'output': tail[-2000:]}
    lines = run.stdout.strip().splitlines()
    return {'status': 'passed' if run.returncode in (0, 5) else f'FAILED (exit {run.returncode})',
            'summary': lines[-1] if lines else '', 'seconds': round(time.time() - start, 1),
            'output': run.stdout[-4000:] + run.stderr[-2000:] if run.returncode not in (0, 5) else ''}


def run_kernel_gen(stages: Dict[str, tuple], paths: Dict[str, str], device, d_state: int,
                   min_time: float) -> List[dict]:
    """All per-axis two-sided kernels of each stage's layer, fwd+bwd, per generator (``paths``: row name -> the
    backend whose generator ``S4ND.axis_kernels(backend=...)`` uses: 'fft' the torch path, 'triton' the Triton
    generator). Written here, not taken from bench_layer.run_kernel_gen, which calls the Triton generator with the
    layer object (its signature before the generator became tensor-in, tensor-out)."""
    from _timing import time_ms
    from bench_layer import _layer
    rows = []
    for name, shape in stages.items():
        layer = _layer(shape, 'auto', device, d_state)
        for path, backend in paths.items():
            def step(layer=layer, shape=shape, backend=backend):
                ks = layer.axis_kernels(shape[1:], backend=backend)
                sum(k.square().sum() for k in ks).backward()
            rows.append({'shape': name, 'backend': path, 'fwd+bwd ms': time_ms(step, device, min_time)})
    return rows


class Budget:
    """Wall-clock budget: ``fits(section)`` says whether a section may start (``needs``: seconds per section);
    every skip is logged."""

    def __init__(self, seconds: float, needs: Dict[str, Optional[float]]):
        self.end, self.needs, self.log = time.time() + seconds, needs, []

    def left(self) -> float:
        return self.end - time.time()

    def fits(self, section: str) -> bool:
        need = self.needs[section]
        if need is None:
            self.log.append(f'{section}: skipped in a dry run')
        elif self.left() >= need:
            return True
        else:
            self.log.append(f'{section}: skipped, time budget spent ({max(0.0, self.left()):.0f} s left, '
                            f'needs {need:.0f} s)')
        print(self.log[-1], flush=True)
        return False


def _section(results: dict, failures: List[str], name: str, budget: Budget,
             parts: List[Tuple[str, Callable[[], List[dict]]]], part_need: Optional[float] = None) -> None:
    """Run a section's parts (each returns rows) while the budget lasts: the section starts only when it has its
    ``needs``, each further part only while ``part_need`` (default ``needs['part']``) is left. A part that raises is recorded in
    ``failures`` (traceback printed) and the check goes on: one broken part must not cost the other figures."""
    if not budget.fits(name):
        return
    start, rows = time.time(), results.setdefault(name, [])
    print(f'{name}: running ({budget.left():.0f} s of budget left)', flush=True)
    for i, (label, fn) in enumerate(parts):
        if i and budget.left() < (budget.needs['part'] if part_need is None else part_need):
            budget.log.append(f'{name} {label} and after: skipped, time budget spent')
            print(budget.log[-1], flush=True)
            break
        try:
            rows += fn()
        except Exception as e:
            traceback.print_exc()
            failures.append(f'{name} {label}: FAILED: {type(e).__name__}: {e}')
    print(f'{name}: done in {time.time() - start:.1f} s', flush=True)


def _throughput_parts(run_throughput, args) -> List[Tuple[str, Callable[[], List[dict]]]]:
    """``bench_models.run_throughput`` per (mode, backend), rows marked with their mode; the timm baseline is timed
    again in each part (its row kept once per mode), so the budget is checked between backends."""
    seen = set()

    def part(mode, backend):
        rows = [dict(row, mode=mode) for row in run_throughput(mode, argparse.Namespace(
            **{**vars(args), 'backends': [backend]}))]
        keep = [r for r in rows if (r['mode'], r['model'], r['backend'], r['compile']) not in seen]
        seen.update((r['mode'], r['model'], r['backend'], r['compile']) for r in rows)
        return keep
    runs = [(mode, backend) for mode in ('train', 'infer') for backend in args.backends]
    runs += [('infer', backend) for backend in args.infer_backends]  # paths without a fast backward
    return [(f'{mode} {backend}', lambda mode=mode, backend=backend: part(mode, backend)) for mode, backend in runs]


def markdown(env: Dict[str, str], results: dict, notes: List[str], columns: Dict[str, List[str]]) -> str:
    from _timing import table
    lines = ['# GPU check', '', f"{time.strftime('%Y-%m-%d')} | {env['gpu']} | driver {env['driver']} | "
             f"torch {env['torch']} | triton {env['triton']} | timm {env['timm']} | s4nd_timm {env['s4nd_timm']}", '']
    for name, rows in results.items():
        if name == 'parity':
            lines += ['### cuda parity tests', '', f"{rows['status']} {rows.get('summary', '')}".strip(), '']
        else:
            lines += [f'### {name}', '', table(rows, columns[name]), '']
    lines += [f'- {s}' for s in notes]
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dry-run', action='store_true', help='CPU, tiny shapes, Triton in the interpreter')
    parser.add_argument('--budget-s', type=float, default=None,
                        help='wall-clock budget in s (default 450, which leaves the last part room within 8 min; dry run 60)')
    parser.add_argument('--out', default='gpu_check', help='folder for gpu_check.md and gpu_check.json')
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ['TRITON_INTERPRET'] = '1'  # before Triton is first imported
    budget = Budget(args.budget_s if args.budget_s is not None else (60 if args.dry_run else 450),
                    NEEDS_DRY if args.dry_run else NEEDS)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from bench_layer import COLUMNS, STAGES, run_layers
    from bench_models import COLUMNS as MODEL_COLUMNS, run_throughput
    if not args.dry_run and not torch.cuda.is_available():
        print('gpu_check needs a CUDA GPU; on a CPU-only machine use --dry-run (tiny shapes).')
        return 2
    from s4nd_timm.kernels import HAS_TRITON
    torch.manual_seed(0)
    device = torch.device('cpu' if args.dry_run else 'cuda')
    env = environment(torch)
    print(json.dumps(env), flush=True)
    backends = [b for b in BACKENDS if b != 'triton' or HAS_TRITON]
    layer_args = argparse.Namespace(
        device=str(device), dtype='fp32' if args.dry_run else 'bf16', batch=2 if args.dry_run else 128, d_state=64,
        min_time=0.01 if args.dry_run else 0.5, max_toeplitz_mib=2048)
    model_args = argparse.Namespace(
        device=str(device), dtype='fp32' if args.dry_run else 'bf16', batch=1 if args.dry_run else 128, img_size=224,
        channels_last=True, compile=['off'], min_time=0.01,
        backends=['auto'] if args.dry_run else [b for b in MODEL_BACKENDS if b != 'triton' or HAS_TRITON],
        infer_backends=[] if args.dry_run else ['direct'])
    stages = STAGES_DRY if args.dry_run else STAGES
    results: dict = {}
    failures: List[str] = []
    if budget.fits('parity'):
        results['parity'] = run_parity(min(PARITY_SHARE, budget.left()), args.dry_run)
        print(f"parity: {results['parity']['status']} {results['parity'].get('summary', '')}", flush=True)
        if results['parity']['status'].startswith(('FAILED', 'incomplete')):
            failures.append(f"parity: {results['parity']['status']}")
    _section(results, failures, 'layer', budget, [
        (name, lambda name=name, shape=shape: run_layers({name: shape}, backends, layer_args, dwconv=True))
        for name, shape in stages.items()])
    gen_paths = {'torch': 'fft', **({'triton': 'triton'} if HAS_TRITON else {})}
    _section(results, failures, 'kernel_gen', budget, [
        ('all', lambda: run_kernel_gen(stages, gen_paths, device, layer_args.d_state, layer_args.min_time))])
    _section(results, failures, 'models', budget, _throughput_parts(run_throughput, model_args))
    compiled = argparse.Namespace(**{**vars(model_args), 'compile': ['on'], 'backends': ['auto'], 'infer_backends': []})
    _section(results, failures, 'compile', budget, _throughput_parts(run_throughput, compiled), budget.needs['compile'])
    columns = {'layer': COLUMNS, 'kernel_gen': ['shape', 'backend', 'fwd+bwd ms'],
               'models': ['mode'] + MODEL_COLUMNS, 'compile': ['mode'] + MODEL_COLUMNS}
    from s4nd_timm._io import atomic_write_text
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {'environment': env, 'dry_run': args.dry_run, 'skipped': budget.log, 'failures': failures, **results}
    atomic_write_text(str(out / 'gpu_check.json'), json.dumps(report, indent=1, default=str))
    text = markdown(env, results, failures + budget.log, columns)
    atomic_write_text(str(out / 'gpu_check.md'), text)
    print(text)
    print(f'wrote {out / "gpu_check.md"} and {out / "gpu_check.json"}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
