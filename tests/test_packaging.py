"""The wheel installs `s4nd_timm.kernels` and `s4nd_timm.train`, never top-level `kernels` or `train`."""
import subprocess
import sys
import zipfile
from pathlib import Path

import s4nd_timm

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contents(tmp_path):
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w',
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel, = tmp_path.glob('s4nd_timm-*.whl')
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split('/')[0] for n in names}
    assert tops <= {'s4nd_timm', f'{wheel.name.split("-")[0]}-{s4nd_timm.__version__}.dist-info'}, tops
    for module in ('s4nd_timm/kernels/__init__.py', 's4nd_timm/kernels/separable_conv.py',
                   's4nd_timm/train/__init__.py', 's4nd_timm/layers/s4nd.py',
                   's4nd_timm/model_cards/_template.md', 's4nd_timm/model_cards/s4nd_convnext_tiny.in1k.md',
                   's4nd_timm/weights/s4nd_iso_cifar_small.synthetic/model.safetensors',
                   's4nd_timm/weights/s4nd_iso_cifar_conv2d_small.synthetic/config.json'):
        assert module in names

