"""Pieces shared by the S4ND model families: S4ND argument bundle, model-wide S4ND settings, the tracing contract.

Every model passes the same SSM settings to each of its S4ND layers (docs/design.md §7: one kernel family,
init, d_state and Δ range per model). ``s4nd_layer_args`` validates them once and returns the
keyword bundle the model files hand to ``S4ND``; ``S4NDModelMixin`` gives every model the same
knobs on a built model: ``s4nd_resolution``, ``s4nd_backend`` and a ``no_weight_decay`` that
lists the SSM tensors (the layer marks them, docs/design.md §3 "Optimizer hooks").

torch.fx (timm's ``create_feature_extractor``, ``features_only=True, feature_cls='fx'``): ``S4ND`` is a leaf module
(``register_notrace_module``), so its shape checks and kernel generation run on the real input; the models' own
input checks are leaf functions (``register_notrace_function``). TorchScript is refused with one message
(``S4NDModelMixin.__prepare_scriptable__``): torch.export and ONNX are the export paths (docs/models.md).
"""
from typing import Any, Dict, Iterator, Mapping, Optional, Set

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_module
from timm.models import generate_default_cfgs

from s4nd_timm.layers import S4ND
from s4nd_timm.layers.s4nd import TORCHSCRIPT_UNSUPPORTED, check_resolution

from ._builder import HF_ORG

__all__ = [
    'IN1K_CFG', 'PAPER_CFG', 'check_num_classes', 's4nd_default_cfgs', 's4nd_layer_args', 'S4NDModelMixin']

register_notrace_module(S4ND)  # torch.fx leaf: shape-dependent kernel generation runs on the real input

# pretrained_cfg fields shared by every s4nd_* model
PAPER_CFG = {
    'license': 'apache-2.0',
    'paper_ids': 'arXiv:2210.06583',
    'paper_name': 'S4ND: Modeling Images and Videos as Multidimensional Signals Using State Spaces',
    'origin_url': 'https://github.com/state-spaces/s4',
}
# data fields of the ImageNet-1k tags (ConvNeXt-S4ND, ViT-S4ND): the reference's 224 px evaluation
IN1K_CFG = {
    'num_classes': 1000, 'input_size': (3, 224, 224), 'test_input_size': (3, 224, 224), 'crop_pct': 0.9,
    'interpolation': 'bicubic', 'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
}


def s4nd_default_cfgs(family: Mapping[str, Any], tags: Mapping[str, Mapping[str, Any]]):
    """timm ``default_cfgs`` for '<architecture>.<tag>' names: the ``family``'s fields (input size, normalization,
    ``first_conv``, ``classifier``, ...), any input size, PAPER_CFG and the Hub repo ``s4nd-timm/<name>``, then
    each tag's own overrides."""
    return generate_default_cfgs({
        name: {'fixed_input_size': False, **family, **PAPER_CFG, 'hf_hub_id': f'{HF_ORG}/{name}', **overrides}
        for name, overrides in tags.items()})


def s4nd_layer_args(
        d_state: int,
        dt_min: float,
        dt_max: float,
        bandlimit: Optional[float],
        ssm_lr: Optional[float],
        mode: str,
        init: str,
        backend: str,
        resolution: str,
) -> Dict:
    """Keyword arguments shared by every S4ND of one model (the per-site ones, dim, ndim, l_max,
    activation, postact, layout, are added where the layer is built)."""
    return dict(
        d_state=d_state, dt_min=dt_min, dt_max=dt_max, bandlimit=bandlimit, ssm_lr=ssm_lr,
        mode=mode, init=init, backend=backend, resolution=check_resolution(resolution, 's4nd_resolution'))


def check_num_classes(num_classes: int) -> None:
    """num_classes >= 0 (0: no classifier)."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: no classifier, pooled features); got {num_classes!r}")


class S4NDModelMixin:
    """Model-wide S4ND settings, for nn.Module subclasses that hold S4ND layers.

    ``s4nd_resolution``: 'continuous' (an input of another size is the same signal resampled:
    kernels keep their extent, docs/design.md §5) or 'discrete' (kernels stay in pixels); settable on a built
    model. ``s4nd_backend``: the convolution path of every S4ND ('auto', 'fft', 'matmul', 'triton');
    'matmul' is the one torch.export and ONNX export trace.
    """

    def s4nd_layers(self) -> Iterator[S4ND]:
        """Every S4ND layer of the model, in module order."""
        return (m for m in self.modules() if isinstance(m, S4ND))

    @property
    def s4nd_resolution(self) -> str:
        return self._s4nd_resolution

    @s4nd_resolution.setter
    def s4nd_resolution(self, value: str) -> None:
        check_resolution(value, 's4nd_resolution')
        self._s4nd_resolution = value
        for layer in self.s4nd_layers():
            layer.resolution = value

    @property
    def s4nd_backend(self) -> str:
        backends = {layer.backend for layer in self.s4nd_layers()}
        return backends.pop() if len(backends) == 1 else 'mixed'

    @s4nd_backend.setter
    def s4nd_backend(self, value: str) -> None:
        for layer in self.s4nd_layers():
            layer.backend = value

    def __prepare_scriptable__(self):
        """Called by ``torch.jit.script`` before compiling: refuse with the export paths that work."""
        raise RuntimeError(TORCHSCRIPT_UNSUPPORTED)

    def no_weight_decay(self) -> Set[str]:
        """Names of the SSM tensors (Δ, A, B and DPLR's P): no weight decay, as in the reference.

        The layer marks them with ``p._optim['weight_decay'] == 0``; C, D and projections decay.
        """
        return {
            name for name, p in self.named_parameters()
            if getattr(p, '_optim', {}).get('weight_decay', None) == 0.0}
