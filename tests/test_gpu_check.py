"""benchmarks/gpu_check.py --dry-run: every section of the GPU check runs on CPU (tiny shapes, Triton in the
interpreter), so the script cannot rot; the time budget skips what does not fit and says so."""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / 'benchmarks' / 'gpu_check.py'


def _dry_run(out: Path, budget: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    run = subprocess.run([sys.executable, str(SCRIPT), '--dry-run', '--out', str(out), '--budget-s', str(budget)],
                         capture_output=True, text=True, timeout=900, env=env)
    report = json.loads((out / 'gpu_check.json').read_text())
    report['markdown'] = (out / 'gpu_check.md').read_text()
    report['returncode'], report['log'] = run.returncode, run.stdout[-3000:] + run.stderr[-3000:]
    return report


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    return _dry_run(tmp_path_factory.mktemp('gpu_check'), budget=600)


def test_dry_run_runs_every_section(dry_run):
    report = dry_run
    assert report['dry_run'] and {'torch', 'triton', 'timm', 'gpu', 'driver'} <= set(report['environment'])
    assert report['parity']['status'] == 'passed' and 'skipped' in report['parity']['summary']  # no GPU here
    layer = {(r['shape'], r['backend']) for r in report['layer'] if isinstance(r['fwd+bwd ms'], float)}
    assert {b for _, b in layer} == {'dwconv7', 'fft', 'matmul', 'triton'} and len(layer) == 8, report['log']
    assert {r['backend'] for r in report['kernel_gen']} == {'torch', 'triton'}
    assert 'models' in report  # rows, or the error that stopped the section (test below)
    assert report['skipped'] == ['compile: skipped in a dry run']
    text = report['markdown']
    assert '| 8x12x12 | triton |' in text and '### models' in text and 'compile: skipped' in text


def test_dry_run_model_benchmark_channels_last(dry_run):
    assert not dry_run['failures'], dry_run['failures']
    models = {(r['mode'], r['model']) for r in dry_run['models'] if r['img/s'] > 0}
    assert models == {(m, n) for m in ('train', 'infer') for n in (
        'convnext_tiny', 's4nd_convnext_tiny', 'vit_small_patch16_224', 's4nd_vit_small_patch16')}
    assert dry_run['returncode'] == 0, dry_run['log']


def test_budget_spent_skips_the_remaining_sections(tmp_path):
    report = _dry_run(tmp_path, budget=0)
    assert report['returncode'] == 0, report['log']
    assert [line.split(':')[0] for line in report['skipped']] == ['parity', 'layer', 'kernel_gen', 'models', 'compile']
    assert 'time budget spent' in report['skipped'][0] and 'layer' not in report
    assert 'parity: skipped, time budget spent' in report['markdown']


def test_parts_stop_when_the_budget_is_spent_and_failures_are_recorded():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    budget = gpu_check.Budget(100, {'x': 1, 'part': 50})

    def spend():
        budget.end = time.time() + 10  # the part took all but 10 s
        return [{'row': 1}]

    def broken():
        raise RuntimeError('no kernel')
    results, failures = {}, []
    gpu_check._section(results, failures, 'x', budget, [('a', broken), ('b', spend), ('c', lambda: [{'row': 3}])])
    assert results == {'x': [{'row': 1}]}
    assert failures == ['x a: FAILED: RuntimeError: no kernel'] and budget.log == ['x c and after: skipped, time budget spent']
