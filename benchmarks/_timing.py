"""Shared timers for the benchmarks: triton.testing.do_bench on CUDA, torch.utils.benchmark on CPU."""
import datetime
import math
import time
import importlib.metadata
import platform
from typing import Callable, Dict, Optional

import torch
import torch.utils.benchmark as benchmark
from s4nd_timm.kernels import HAS_TRITON

import s4nd_timm


def time_ms(fn: Callable[[], object], device: torch.device, min_run_time: float = 0.5) -> float:
    """Median wall time of fn() in milliseconds (CUDA: do_bench, which synchronizes and flushes L2; CPU: with
    torch's current thread count, the one ``header`` prints; torch.utils.benchmark's own default is 1 thread)."""
    if device.type == 'cuda':
        from triton.testing import do_bench  # benchmarks only run on CUDA with Triton installed
        return float(do_bench(fn, warmup=25, rep=100))
    fn()  # warm-up (allocator, lazy init)
    timer = benchmark.Timer('fn()', globals={'fn': fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def alternating_min_ms(fns: Dict[str, Callable[[], object]], rounds: int, min_s: float = 0.2) -> Dict[str, float]:
    """Min over ``rounds`` of each fn's mean wall time (ms per call, at least ``min_s`` of calls per round), the
    fns taking turns round by round (order reversed every other round), so load on a shared machine hits
    every fn alike; min-of-N keeps the least disturbed round. CPU timer (no device synchronization)."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: math.inf for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            calls, start = 0, time.perf_counter()
            while True:
                fns[name]()
                calls += 1
                elapsed = time.perf_counter() - start
                if elapsed >= min_s:
                    break
            best[name] = min(best[name], elapsed / calls * 1e3)
    return best


def peak_mib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak memory allocated during one fn() call above what was allocated before, MiB (CUDA only)."""
    if device.type != 'cuda':
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def copy_bandwidth(device: torch.device, mib: int = 256) -> float:
    """Measured device copy bandwidth in bytes/s (read + write of a `mib` MiB buffer)."""
    src = torch.empty(mib * 2 ** 20 // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * 4 / (ms * 1e-3)


def header(device: torch.device, **fields) -> str:
    """One line: date, device, versions, and the given fields (dtype, batch, ...)."""
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = f'{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads'
    triton = importlib.metadata.version('triton') if HAS_TRITON else 'n/a'
    extra = ', '.join(f'{k} {v}' for k, v in fields.items())
    return (f'{datetime.date.today()} | {name} | torch {torch.__version__} | triton {triton} | '
            f's4nd_timm {s4nd_timm.__version__} | {extra}')


def table(rows, columns) -> str:
    """Markdown table from dict rows."""
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '|'.join('---' for _ in columns) + '|']
    for r in rows:
        lines.append('| ' + ' | '.join(_fmt(r.get(c)) for c in columns) + ' |')
    return '\n'.join(lines)


def _fmt(v) -> str:
    if v is None:
        return '-'
    if isinstance(v, float):
        return f'{v:.3f}' if abs(v) < 10 else f'{v:.1f}'
    return str(v)
