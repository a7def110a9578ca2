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
# 99 KiB of sm_86 / sm_89 GPUs (RTX 30xx / 40xx, A10, L4); the same tiles must fit all three
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

    def record_launches():
        """Run every launcher the layer uses; the recorders keep each distinct launch. Every code path: 1-D / 2-D /
        3-D, float32 (ieee dot) and bf16 / fp16 (tensor-core dot), with and without D, both layouts, forward and
        backward, at sizes where every pass takes the default 64 x 64 tiles (the shared-memory high-water mark) and
        loops over several blocks per axis (ViT-S4ND at 384 px: 576 tokens; a 96 x 96 ConvNeXt first stage; 3-D),
        and once with the smallest tiles (16)."""
        launches.clear()
        shapes = [(64, 6, 576), (1, 6, 96, 96), (1, 6, 64, 64, 96)]
        cases = [(shape, dtype, layout, with_d) for shape in shapes
                 for dtype in (torch.float32, torch.bfloat16, torch.float16)
                 for layout in ('channels_first', 'channels_last') for with_d in (True, False)]
        cases.append(((2, 6, 12), torch.float32, 'channels_first', True))
        for shape, dtype, layout, with_d in cases:
            ks = [torch.randn(2, 6, 2 * n - 1) for n in shape[2:]]
            u = torch.randn(shape, dtype=dtype)
            if layout == 'channels_last':
                u = u.movedim(1, -1).contiguous()
            D = torch.randn(2, 6) if with_d else None
            y = conv._separable_conv_fwd(u, ks, D, layout, conv.BLOCK)
            conv._separable_conv_bwd(torch.randn_like(y), u, ks, D, layout, conv.BLOCK)
        d, ck, h, m = 3, 2, 6, 8
        w = [torch.randn(d, ck, h, m) for _ in range(2)]
        s = [torch.randn(d, h, m) for _ in range(2)]
        lengths, taps = [5, 12, 20], [5, 12, 20]
        flat = gen._vandermonde_fwd(*w, *s, lengths, taps, 2)
        gen._vandermonde_bwd(torch.randn_like(flat), *w, *s, lengths, taps, 2)
        return sorted(launches.items(), key=lambda kv: kv[0])

    compiled = []
    recorded = record_launches()
    for cap in json.loads(sys.argv[1]):
        for (name, _, _), (kernel, sig, consts) in recorded:
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
    assert kernels == {'_pass_kernel', '_tap_grad_kernel', '_vandermonde_fwd_kernel', '_vandermonde_bwd_kernel'}, kernels
    for name in kernels:  # every kernel on every target
        assert {c['sm'] for c in compiled if c['kernel'] == name} == set(TARGETS)
    passes = [c for c in compiled if c['kernel'] == '_pass_kernel']
    assert {(c['constexprs']['ADJOINT'], c['constexprs']['HAS_SKIP']) for c in passes} == {
        (False, False), (False, True), (True, False), (True, True)}
    assert {c['constexprs']['PRECISION'] for c in passes} == {'ieee', 'tf32'}
    assert all(c['cubin_bytes'] > 0 for c in compiled)
    too_big = [c for c in compiled if c['shared_bytes'] > TARGETS[c['sm']]]
    assert not too_big, f'these launches would fail with out of shared memory: {too_big}'
    for name in ('_pass_kernel', '_tap_grad_kernel'):  # the largest tiles, in every dtype, on every target
        largest = {(c['sm'], c['signature']['in_ptr']) for c in compiled if c['kernel'] == name
                   and c['constexprs']['BR'] == c['constexprs']['BL'] == 64}
        assert largest == {(sm, t) for sm in TARGETS for t in ('*fp32', '*bf16', '*fp16')}, (name, largest)
    if os.environ.get('S4ND_COMPILE_REPORT'):  # the shared-memory table of docs/benchmarks.md
        with open(os.environ['S4ND_COMPILE_REPORT'], 'w') as f:
            json.dump(compiled, f, indent=1)
