"""Isotropic CIFAR models of the S4ND resolution experiments: S4ND-2D and its Conv2D twin.

Paper: "S4ND: Modeling Images and Videos as Multidimensional Signals Using State Spaces",
Nguyen et al., NeurIPS 2022 (arXiv 2210.06583), §5 (zero-shot resolution change, progressive resizing).
See docs/design.md §7.4, §7.5 (reference: state-spaces/s4 CIFAR isotropic configs).

Architecture (channels-last throughout): per-pixel Linear(in_chans -> d) -> depth x [pre-LN -> mixer ->
dropout (tied over space) -> drop path -> residual] -> LayerNorm -> mean pool -> Linear. Mixers:
    's4nd':   S4ND-2D, l_max = img_size, bidirectional, GELU -> Linear -> GLU, d_state 64, Δ in [0.1, 1]
    'conv2d': full Conv2d(d, d, k, padding='same') -> GELU (the reference's baseline; ignores ``rate``)
``forward(x, rate=r)`` evaluates at another resolution the way the reference's loaders do
(r = base / actual, docs/design.md §5); without ``rate`` the S4ND layers use ``s4nd_resolution`` ('continuous':
r = img_size / input size per axis).

Registered sizes: the paper's (S4ND d=256, 6 layers, as in its zero-shot and progressive-resizing configs;
Conv2D d=128, 4 layers, k=3) and ``_small`` ones for CPU training (d=64, 4 layers).

Reference (state-spaces/s4) checkpoints load directly (``checkpoint_filter_fn``, ``REFERENCE_RULES``;
the key map is docs/design.md §8).
"""
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_function, to_2tuple, trunc_normal_
from timm.models import register_model
from timm.models._features import feature_take_indices
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from s4nd_timm.layers import S4ND

from ._builder import WEIGHTS_NAME, build_s4nd_model, packaged_weights_dir
from ._common import S4NDModelMixin, check_num_classes, s4nd_default_cfgs, s4nd_layer_args
from ._reference_keys import (
    S4ND_LAYER, ReferenceKeys, Rule, filter_reference, rename_reference)

__all__ = ['S4NDIsotropic', 'checkpoint_filter_fn', 'reference_keys']

# Kernel family and init of every S4ND here: what the reference's configs ran (docs/design.md §6; the CIFAR
# zero-shot config used 'diag-lin' with bandlimit 0.2).
_DEFAULT_MODE = 'dplr'
_DEFAULT_INIT = 'legs'
MIXERS = ('s4nd', 'conv2d')
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

Rate = Union[None, float, Tuple[float, float]]


class TiedDropout(nn.Module):
    """Dropout with one mask per (sample, channel), shared over space. (B, H, W, C) -> same."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1); got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = x.new_empty(x.shape[0], 1, 1, x.shape[-1]).bernoulli_(1.0 - self.p)
        return x * mask / (1.0 - self.p)


class Conv2dMixer(nn.Module):
    """Full Conv2d (padding 'same') -> GELU, channels-last. (B, H, W, C) -> same; ``rate`` is ignored."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding='same')

    def forward(self, x: Tensor, rate: Rate = None) -> Tensor:
        return F.gelu(self.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)


class IsoBlock(nn.Module):
    """pre-LN -> mixer -> tied dropout -> drop path -> residual. (B, H, W, C) -> same."""

    def __init__(self, dim: int, mixer: nn.Module, drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = mixer
        self.drop = TiedDropout(drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor, rate: Rate = None) -> Tensor:
        return x + self.drop_path(self.drop(self.mixer(self.norm(x), rate=rate)))


class S4NDIsotropic(S4NDModelMixin, nn.Module):
    """Isotropic (no downsampling) S4ND-2D or Conv2D classifier.

    Input (B, in_chans, H, W), any H, W; ``forward_features`` returns channels-last (B, H, W, d_model)
    (``output_fmt = 'NHWC'``).

    Args:
        in_chans: input channels.
        num_classes: classifier outputs (0: none).
        global_pool: 'avg' or '' (no pooling; with num_classes=0).
        img_size: base resolution (the S4ND l_max), int or (H, W).
        d_model: width. depth: number of blocks.
        mixer: 's4nd' or 'conv2d'.
        kernel_size: Conv2D mixer kernel (the reference: 3 isotropic, 5 progressive resizing).
        block_drop_rate: dropout after each mixer, tied over space (the reference: 0.1).
        drop_rate: dropout before the classifier. drop_path_rate: stochastic depth, linear over blocks.
        d_state, dt_min, dt_max, bandlimit, ssm_lr: SSM settings of every S4ND (docs/design.md §3, §4).
        s4nd_mode, s4nd_init: S4ND kernel family and init.
        s4nd_backend: convolution path ('auto', 'fft', 'matmul', 'triton'); settable later.
        s4nd_resolution: 'continuous' or 'discrete'; settable later.
    """
    output_fmt = 'NHWC'

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 10,
            global_pool: str = 'avg',
            img_size: Union[int, Tuple[int, int]] = 32,
            d_model: int = 256,
            depth: int = 6,
            mixer: str = 's4nd',
            kernel_size: int = 3,
            block_drop_rate: float = 0.1,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            d_state: int = 64,
            dt_min: float = 0.1,
            dt_max: float = 1.0,
            bandlimit: Optional[float] = None,
            ssm_lr: Optional[float] = 1e-3,
            s4nd_mode: str = _DEFAULT_MODE,
            s4nd_init: str = _DEFAULT_INIT,
            s4nd_backend: str = 'auto',
            s4nd_resolution: str = 'continuous',
    ):
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1; got {in_chans}")
        if mixer not in MIXERS:
            raise ValueError(f"mixer={mixer!r} is not supported; expected one of {MIXERS}")
        img_size = tuple(to_2tuple(img_size))
        s4nd_args = s4nd_layer_args(
            d_state, dt_min, dt_max, bandlimit, ssm_lr, s4nd_mode, s4nd_init, s4nd_backend, s4nd_resolution)
        self._s4nd_resolution = s4nd_resolution
        self.in_chans, self.num_classes, self.global_pool = in_chans, num_classes, global_pool
        self.mixer_type = mixer
        self.grad_checkpointing = False

        def make_mixer() -> nn.Module:
            if mixer == 'conv2d':
                return Conv2dMixer(d_model, kernel_size)
            return S4ND(
                d_model, ndim=2, l_max=img_size, activation='gelu', postact='glu', layout='channels_last', **s4nd_args)

        self.stem = nn.Conv2d(in_chans, d_model, 1)
        dp = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[IsoBlock(d_model, make_mixer(), block_drop_rate, dp[i]) for i in range(depth)])
        self.feature_info = [dict(num_chs=d_model, reduction=1, module=f'blocks.{i}') for i in range(depth)]
        self.norm = nn.LayerNorm(d_model)
        self.num_features = self.head_hidden_size = d_model
        self.head_drop = nn.Dropout(drop_rate)
        self.reset_classifier(num_classes, global_pool)
        self.apply(_init_weights)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r'^stem', blocks=[(r'^blocks\.(\d+)', None), (r'^norm', (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        check_num_classes(num_classes)
        if global_pool is not None:
            if global_pool not in ('avg', ''):
                raise ValueError(f"global_pool={global_pool!r} is not supported; expected 'avg' or ''")
            self.global_pool = global_pool
        if not self.global_pool and num_classes > 0:
            raise ValueError(f"global_pool='' keeps the spatial axes and needs num_classes=0; got {num_classes}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, H, W, d_model), after checking the input."""
        return self.stem(checked_images(x, self.in_chans)).permute(0, 2, 3, 1)

    def _block(self, block: IsoBlock, x: Tensor, rate: Rate) -> Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, rate, use_reentrant=False)
        return block(x, rate)

    def forward_intermediates(
            self,
            x: Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            rate: Rate = None,
    ) -> Union[List[Tensor], Tuple[Tensor, List[Tensor]]]:
        """Block outputs (and the final features).

        Args:
            x: (B, C, H, W).
            indices: blocks to return: None all, int n the last n, or a list of indices.
            norm: apply the final LayerNorm to the intermediates.
            stop_early: stop after the last requested block.
            output_fmt: 'NCHW' or 'NHWC' for the intermediates.
            intermediates_only: return only the list.
            rate: resolution rate override (see ``forward``).
        Returns:
            list of (B, d_model, H, W) ('NCHW') or (B, H, W, d_model), or (final features (B, H, W, d_model), list).
        """
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; expected 'NCHW' or 'NHWC'")
        take, max_index = feature_take_indices(len(self.blocks), indices)
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        intermediates = []
        x = self._embed(x)
        for i, block in enumerate(blocks):
            x = self._block(block, x, rate)
            if i in take:
                y = self.norm(x) if norm else x
                intermediates.append(y.permute(0, 3, 1, 2) if output_fmt == 'NCHW' else y)
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the blocks after the last of ``indices`` (and the final norm / classifier if asked)."""
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def forward_features(self, x: Tensor, rate: Rate = None) -> Tensor:
        """(B, C, H, W) -> (B, H, W, d_model) (channels-last)."""
        x = self._embed(x)
        for block in self.blocks:
            x = self._block(block, x, rate)
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, H, W, d_model) -> (B, num_classes), or the pooled features if pre_logits."""
        if self.global_pool == 'avg':
            x = x.mean((1, 2))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor, rate: Rate = None) -> Tensor:
        """(B, C, H, W) -> (B, num_classes).

        rate: None (each S4ND's ``s4nd_resolution`` rule), a float or (r_H, r_W), r = base / actual
        (docs/design.md §5); the Conv2D twin ignores it.
        """
        return self.forward_head(self.forward_features(x, rate))


# a leaf under torch.fx (timm's tracer): the check runs on the real input; a public name (FX wraps no '_' names)
@register_notrace_function
def checked_images(x: Tensor, in_chans: int) -> Tensor:
    """``x`` if it is (B, in_chans, H, W), else a ValueError saying what was expected."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError(
            f"S4NDIsotropic expects images (B, {in_chans}, H, W); got {tuple(x.shape)}. "
            + (f"Other channel count? create the model with in_chans={x.shape[1]}." if x.dim() == 4 else ''))
    return x


def _init_weights(module: nn.Module) -> None:
    """Conv and Linear (the S4ND output projections too): truncated normal (std 0.02), zero bias."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# Reference (state-spaces/s4) key rules, docs/design.md §8: (regex on the key, -> our key | S4ND layer).
REFERENCE_RULES: List[Rule] = [
    (r'encoder\.0\.(weight|bias)', lambda m: f'stem.{m[1]}'),
    (r'layers\.(\d+)\.norm(?:\.norm)?\.(weight|bias)', lambda m: f'blocks.{m[1]}.norm.{m[2]}'),
    (r'layers\.(\d+)\.layer\.(?P<inner>.+)', lambda m: (S4ND_LAYER, f'blocks.{m[1]}.mixer.')),
    (r'norm(?:\.norm)?\.(weight|bias)', lambda m: f'norm.{m[1]}'),
    (r'decoder\.0\.output_transform\.(weight|bias)', lambda m: f'head.{m[1]}'),
]
_REFERENCE_ONLY = r'^(model\.)?(layers\.\d+|encoder\.0|decoder\.0)\.'


def reference_keys(state_dict: Dict[str, Tensor]) -> ReferenceKeys:
    """A reference isotropic S4ND state dict under our names (docs/design.md §8); the per-pixel Linear encoder
    (d, C) becomes the 1x1 conv stem (d, C, 1, 1)."""
    keys = rename_reference(state_dict, REFERENCE_RULES)
    stem = keys.tensors.get('stem.weight')
    if stem is not None and stem.dim() == 2:
        keys.tensors['stem.weight'] = stem[:, :, None, None]
    return keys


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: S4NDIsotropic) -> Dict[str, Tensor]:
    """Our checkpoints load as they are; a reference (state-spaces/s4) checkpoint is renamed by ``REFERENCE_RULES``
    and must fit the model as built."""
    return filter_reference(state_dict, model, reference_keys, _REFERENCE_ONLY)


# The '.synthetic' weights are trained by the main job (s4nd-demo, train/main_job.py) at 8 px with these arguments,
# so the tag names this model: create_model('<name>.synthetic') builds it (arguments passed explicitly still win,
# and loading the weights into a model built otherwise is refused, ._builder). timm drops None-valued
# arguments, so bandlimit=None cannot undo the tag's bandlimit: build the bare architecture name for that.
TAG_MODEL_ARGS = {
    's4nd_iso_cifar_small.synthetic': dict(img_size=8, bandlimit=0.2),
    's4nd_iso_cifar_conv2d_small.synthetic': dict(img_size=8),
}


# The registered sizes: each entrypoint below builds its entry (explicit kwargs win); s4nd-convert matches
# checkpoints against them.
MODEL_ARGS = {
    's4nd_iso_cifar': dict(d_model=256, depth=6, mixer='s4nd'),
    's4nd_iso_cifar_small': dict(d_model=64, depth=4, mixer='s4nd'),
    's4nd_iso_cifar_conv2d': dict(d_model=128, depth=4, mixer='conv2d', kernel_size=3),
    's4nd_iso_cifar_conv2d_small': dict(d_model=64, depth=4, mixer='conv2d', kernel_size=3),
}


def _create_s4nd_iso(variant: str, pretrained: bool = False, **kwargs) -> S4NDIsotropic:
    kwargs = dict(MODEL_ARGS[variant], **kwargs)
    return build_s4nd_model(
        S4NDIsotropic, variant, pretrained, tag_model_args=TAG_MODEL_ARGS,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs)


def _synthetic_cfg(name: str) -> Dict:
    """A '.synthetic' tag: trained at 8 px on the embedded SyntheticShapes (10 classes). Its weights ship with the
    package (``s4nd_timm/weights/<name>/``, a save_pretrained folder), so ``pretrained=True`` loads them offline;
    the Hub copy under ``hf_hub_id``, once uploaded, is the same folder."""
    size = TAG_MODEL_ARGS[name]['img_size']
    return dict(file=str(packaged_weights_dir(name) / WEIGHTS_NAME), input_size=(3, size, size),
                test_input_size=(3, size, size), pool_size=(size, size),
                description=f'trained at {size} px on the embedded synthetic shapes')


default_cfgs = s4nd_default_cfgs(
    dict(num_classes=10, input_size=(3, 32, 32), pool_size=(32, 32), test_input_size=(3, 32, 32), crop_pct=1.0,
         interpolation='bilinear', mean=CIFAR10_MEAN, std=CIFAR10_STD, first_conv='stem', classifier='head'), {
        's4nd_iso_cifar.c10': {},
        's4nd_iso_cifar_small.c10': {},
        's4nd_iso_cifar_conv2d.c10': {},
        's4nd_iso_cifar_conv2d_small.c10': {},
        **{name: _synthetic_cfg(name) for name in TAG_MODEL_ARGS},
    })


@register_model
def s4nd_iso_cifar(pretrained: bool = False, **kwargs) -> S4NDIsotropic:
    """Isotropic S4ND-2D for CIFAR-10, the paper's resolution-experiment size (d=256, 6 blocks)."""
    return _create_s4nd_iso('s4nd_iso_cifar', pretrained=pretrained, **kwargs)


@register_model
def s4nd_iso_cifar_small(pretrained: bool = False, **kwargs) -> S4NDIsotropic:
    """Isotropic S4ND-2D for CIFAR-10, small enough to train on a CPU (d=64, 4 blocks)."""
    return _create_s4nd_iso('s4nd_iso_cifar_small', pretrained=pretrained, **kwargs)


@register_model
def s4nd_iso_cifar_conv2d(pretrained: bool = False, **kwargs) -> S4NDIsotropic:
    """The Conv2D twin of s4nd_iso_cifar, the paper's baseline size (d=128, 4 blocks, 3x3)."""
    return _create_s4nd_iso('s4nd_iso_cifar_conv2d', pretrained=pretrained, **kwargs)


@register_model
def s4nd_iso_cifar_conv2d_small(pretrained: bool = False, **kwargs) -> S4NDIsotropic:
    """The Conv2D twin of s4nd_iso_cifar_small (d=64, 4 blocks, 3x3)."""
    return _create_s4nd_iso('s4nd_iso_cifar_conv2d_small', pretrained=pretrained, **kwargs)
