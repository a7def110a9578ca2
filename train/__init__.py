"""Training and evaluation through timm: ``s4nd-train`` (``train.py``), ``s4nd-validate`` (``validate.py``).

See train/README.md for the datasets, resume, torchrun launch lines and one command per paper experiment.
``SyntheticShapes`` (``synthetic.py``) is the embedded procedural dataset for demos, tests and resolution
experiments.
"""
from .synthetic import SyntheticShapes

__all__ = ['SyntheticShapes']
