"""The Triton kernels compile for real GPUs (sm_80, sm_89 and sm_90 cubins), checked on a machine without one.

The interpreter parity tests (test_kernels.py) run the kernels' Python semantics, so they cannot see what only
the compiler checks: types that must agree across branches, constexpr use, tl.dot shape and dtype rules, and
bf16 / fp16 tl.dot (which the interpreter cannot run at all). Here the launchers of kernels/ run on CPU tensors
with every ``@triton.jit`` kernel replaced by a recorder, in a subprocess without TRITON_INTERPRET, and each
recorded launch (the arguments and constexprs the launcher really passes) is compiled ahead of time with
``triton.compile`` for each target. This says nothing about speed or numerics on a GPU (test_kernels.py's cuda
tests and benchmarks/ do, on a GPU).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

triton = pytest.importorskip('triton')

# compute capability -> bytes of shared memory one block may use (opt-in maximum): A100, H100 / H200, and the
# 99 KiB of sm_86 / sm_89 GPUs (RTX 30xx / 40xx, A10, L4), where ``fits`` admits smaller tiles
TARGETS = {80: 166912, 90: 232448, 89: 101376}

SCRIPT = textwrap.dedent('''
    import json, sys, time
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from s4nd_timm.kernels import separable_conv_triton as conv, ssm_kernel_gen_triton as gen

    launches = {}

    class Recorder:
        """Stands in for a @triton.jit kernel: kernel[grid](*args, **constexprs) records instead of launching."""
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **constexprs):
                sig, consts = signature(self.kernel, args, constexprs)
                launches[(self.kernel.__name__, json.dumps(sig), json.dumps(consts))] = (self.kernel, sig, consts)
            return launch

    DTYPES = {torch.float32: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16', torch.int32: 'i32',
              torch.int64: 'i64'}

    def signature(kernel, args, constexprs):
        names = kernel.arg_names
        if len(args) + len(constexprs) != len(names) or any(n not in names[len(args):] for n in constexprs):
            raise TypeError(f"{kernel.__name__}: launched with {len(args)} args + {sorted(constexprs)}, "
                            f"kernel takes {names}")
        sig = {}
        for name, value in zip(names, args):
            if isinstance(value, torch.Tensor):
                sig[name] = '*' + DTYPES[value.dtype]
            elif isinstance(value, bool):
                sig[name] = 'i1'
            elif isinstance(value, int):
                sig[name] = 'i32' if -2 ** 31 <= value < 2 ** 31 else 'i64'
            elif isinstance(value, float):
                sig[name] = 'fp32'
            else:
                raise TypeError(f"{kernel.__name__}.{name}: unexpected argument {value!r}")
        sig.update({name: 'constexpr' for name in constexprs})
        return sig, dict(constexprs)

    for module in (conv, gen):
        for name, obj in list(vars(module).items()):
            if isinstance(obj, triton.runtime.jit.JITFunction) and name.endswith('_kernel'):
                setattr(module, name, Recorder(obj))

    def largest_admitted(rank, dtype, shared_limit):
        """(B, H, *spatial) with the largest power-of-two axes ``fits`` takes on such a GPU (3-D: T = 4)."""
        for n in (128, 64, 32, 16):
            shape = {1: (2, 6, n), 2: (1, 6, n, n), 3: (1, 6, 4, n, n)}[rank]
            ks = [(2, 6, 2 * k - 1) for k in shape[2:]]
            if conv.fits(torch.empty(shape, dtype=dtype), ks, 'channels_first', shared_limit):
                return shape

    def record_launches(shared_limit):
        """Run every launcher the layer uses; the recorders keep each distinct launch. Every code path at a small
        size: 1-D / 2-D / 3-D, float32 (ieee dot) and bf16 / fp16 (tensor-core dot), with and without D, both
        layouts, forward and backward; then, per rank and dtype, the largest tile ``fits`` admits on a GPU with
        ``shared_limit`` bytes per block (the shared-memory high-water mark)."""
        launches.clear()
        dtypes = (torch.float32, torch.bfloat16, torch.float16)
        cases = [(shape, dtype, layout, with_d) for shape in [(4, 6, 40), (2, 6, 12, 20), (2, 6, 5, 12, 20)]
                 for dtype in dtypes for layout in ('channels_first', 'channels_last') for with_d in (True, False)]
        for dtype in (torch.float32, torch.bfloat16):
            for rank in (1, 2, 3):
                cases.append((largest_admitted(rank, dtype, shared_limit), dtype, 'channels_first', True))
        for shape, dtype, layout, with_d in cases:
            ks = [torch.randn(2, 6, 2 * n - 1) for n in shape[2:]]
            u = torch.randn(shape, dtype=dtype)
            if layout == 'channels_last':
                u = u.movedim(1, -1).contiguous()
            D = torch.randn(2, 6) if with_d else None
            y = conv._separable_conv_fwd(u, ks, D, layout)
            conv._separable_conv_bwd(torch.randn_like(y), u, ks, D, layout)
        d, ck, h, m = 3, 2, 6, 8
        w = [torch.randn(d, ck, h, m) for _ in range(2)]
        s = [torch.randn(d, h, m) for _ in range(2)]
        lengths, taps = [5, 12, 20], [5, 12, 20]
        flat = gen._vandermonde_fwd(*w, *s, lengths, taps, 2)
        gen._vandermonde_bwd(torch.randn_like(flat), *w, *s, lengths, taps, 2)
        return sorted(launches.items(), key=lambda kv: kv[0])

    compiled = []
    for cap, shared_limit in json.loads(sys.argv[1]).items():
        for (name, _, _), (kernel, sig, consts) in record_launches(shared_limit):
            start = time.time()
            try:
                kernel_bin = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                                            target=GPUTarget('cuda', int(cap), 32))
            except Exception as e:
                raise SystemExit(f"sm_{cap} {name} {consts}: {type(e).__name__}: {e}")
            compiled.append({'kernel': name, 'sm': int(cap), 'constexprs': consts, 'signature': sig,
                             'cubin_bytes': len(kernel_bin.asm['cubin']), 'shared_bytes': kernel_bin.metadata.shared,
                             'num_warps': kernel_bin.metadata.num_warps, 'seconds': round(time.time() - start, 2)})
    print(json.dumps(compiled))
''')


def test_every_triton_launch_compiles_within_shared_memory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    env['TRITON_CACHE_DIR'] = str(tmp_path / 'triton_cache')  # compile for real, not from an earlier run's cache
    run = subprocess.run([sys.executable, '-c', SCRIPT, json.dumps(TARGETS)], env=env, capture_output=True,
                         text=True, timeout=1200)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-4000:])
    compiled = json.loads(run.stdout.strip().splitlines()[-1])
    kernels = {c['kernel'] for c in compiled}
    assert kernels == {'_separable_conv_fwd_kernel', '_separable_conv_bwd_dx_kernel', '_separable_conv_bwd_dk_kernel',
                       '_vandermonde_fwd_kernel', '_vandermonde_bwd_kernel'}, kernels
    for name in kernels:  # every kernel, every target, and the conv kernels in all three ranks and both precisions
        assert {c['sm'] for c in compiled if c['kernel'] == name} == set(TARGETS)
    fwd = [c for c in compiled if c['kernel'] == '_separable_conv_fwd_kernel']
    assert {(c['constexprs']['CONV0'], c['constexprs']['CONV1']) for c in fwd} == {
        (False, False), (False, True), (True, True)}
    assert {c['constexprs']['PRECISION'] for c in fwd} == {'ieee', 'tf32'}
    assert all(c['cubin_bytes'] > 0 for c in compiled)
    too_big = [c for c in compiled if c['shared_bytes'] > TARGETS[c['sm']]]
    assert not too_big, f'these launches would fail with out of shared memory: {too_big}'
    widest_1d = {sm: max(c['constexprs']['BW'] for c in fwd if c['sm'] == sm and not c['constexprs']['CONV1'])
                 for sm in TARGETS}
    assert widest_1d == {80: 128, 90: 128, 89: 64}, widest_1d  # fits shrinks the tiles where memory is short
