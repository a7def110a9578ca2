"""ConvNeXt-S4ND: ConvNeXt with S4ND in place of the 7x7 depthwise convolution, 2-D and 3-D (video).

Paper: "S4ND: Modeling Images and Videos as Multidimensional Signals Using State Spaces",
Nguyen et al., NeurIPS 2022 (arXiv 2210.06583); ConvNeXt: Liu et al., CVPR 2022 (arXiv 2201.03545).
See docs/design.md §7.1, §7.2 (reference: state-spaces/s4 ``convnext_timm.py``); file order and API of timm's ``convnext.py``. One set of classes serves images (``num_frames=None``,
input (B, C, H, W)) and video (``num_frames=T``, input (B, C, T, H, W), S4ND-3D).

Changes from the reference: unique ``s4nd_*`` names (the reference re-registers timm's
``convnext_*``); tensor outputs, no ``(y, None)``; the resolution rate is computed by the model from the
input size (``s4nd_resolution='continuous'``) or given as ``forward(x, rate=...)``, and passed to every
S4ND (the reference's ``rate``/``resolution`` name mismatch, docs/design.md §9.4, is gone); S4ND stem and
downsample are options (``stem_type='s4nd'``, ``downsample_type='s4nd'``) next to the ConvNeXt patch
stem and strided-conv downsample, which are the defaults; the 3-D stages reuse the 2-D classes.

Defaults: patch stem, conv downsample, S4ND only in the blocks ("ConvNeXt-T with S4ND
in place of the 7x7 depthwise conv", and the layout the reference's video run inflates from). The
reference's ImageNet config is ``stem_type='s4nd', downsample_type='s4nd'``.

Reference (state-spaces/s4) checkpoints load directly (``checkpoint_filter_fn``, ``REFERENCE_RULES``;
the key map is docs/design.md §8).
"""
import math
import re
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, register_notrace_function, to_2tuple, trunc_normal_
from timm.models import register_model
from timm.models._features import feature_take_indices
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from s4nd_timm.layers import S4ND, resolution_rates

from ._builder import build_s4nd_model
from ._common import IN1K_CFG, S4NDModelMixin, check_num_classes, s4nd_default_cfgs, s4nd_layer_args
from ._reference_keys import (
    S4ND_LAYER, ReferenceKeys, Rule, filter_reference, rename_reference)

__all__ = ['S4NDConvNeXt', 'checkpoint_filter_fn', 'reference_keys']

# Kernel family and init of every S4ND here: what the reference's ConvNeXt configs ran (docs/design.md §6).
_DEFAULT_MODE = 'dplr'
_DEFAULT_INIT = 'fourier'
# The reference video run's time kernel (docs/design.md §7.2): HiPPO (LegS + FouT halves), one set per feature.
_DEFAULT_TEMPORAL_INIT = 'hippo'
STEM_TYPES = ('patch', 's4nd')
DOWNSAMPLE_TYPES = ('conv', 's4nd')

Rate = Union[None, float, Tuple[float, ...]]


class LayerNormNd(nn.LayerNorm):
    """LayerNorm over the channel axis of a channels-first tensor (B, C, *spatial), any number of axes."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.movedim(1, -1), self.normalized_shape, self.weight, self.bias, self.eps).movedim(-1, 1)


def _conv_nd(ndim: int):
    return nn.Conv2d if ndim == 2 else nn.Conv3d


def _avg_pool_nd(ndim: int, kernel: Tuple[int, ...]) -> nn.Module:
    return nn.AvgPool2d(kernel) if ndim == 2 else nn.AvgPool3d(kernel)


def _s4nd(dim: int, ndim: int, l_max: Sequence[int], s4nd_args: Dict, temporal_args: Optional[Dict]) -> S4ND:
    """A linear (no activation / projection) depthwise S4ND; for 3-D, the time-axis kernel (kernel.0) has
    its own init and Δ (``temporal_args``: init, dt) and one SSM set per feature (n_ssm = dim)."""
    layer = S4ND(dim, ndim=ndim, l_max=tuple(l_max), activation=None, postact=None, **s4nd_args)
    if ndim == 3:
        time_args = dict(s4nd_args, init=temporal_args['init'], n_ssm=dim)
        if temporal_args['dt'] is not None:
            time_args.update(dt_min=temporal_args['dt'], dt_max=temporal_args['dt'])
        layer.kernel[0] = S4ND(dim, ndim=1, l_max=l_max[0], activation=None, postact=None, **time_args).kernel[0]
    return layer


class PatchStem(nn.Module):
    """ConvNeXt patch stem: non-overlapping conv (patch p, time patch p_t in 3-D) -> LayerNorm.

    (B, C_in, [T,] H, W) -> (B, C_out, [T // p_t,] H // p, W // p).
    """

    def __init__(self, in_chs: int, out_chs: int, patch: Tuple[int, ...]):
        super().__init__()
        self.conv = _conv_nd(len(patch))(in_chs, out_chs, kernel_size=patch, stride=patch)
        self.norm = LayerNormNd(out_chs, eps=1e-6)

    def forward(self, x: Tensor, rate: Rate = None) -> Tensor:
        return self.norm(self.conv(x))


class S4NDStem(nn.Module):
    """The reference's ``new_s4nd_patch`` stem: full S4ND conv C_in -> stem_chs on the input, average
    pool by the patch, Linear stem_chs -> 2 C_out, GLU, LayerNorm.

    (B, C_in, [T,] H, W) -> (B, C_out, [T // p_t,] H // p, W // p).

    The full (not depthwise) S4ND conv has one separable kernel per (out, in) channel pair,
    y_o = Σ_i K_{o,i} * u_i: the input is repeated ``stem_chs`` times and convolved depthwise by an S4ND
    of ``stem_chs * C_in`` channels (channel o * C_in + i), then summed over i. Compared with the
    reference (kernel channels (2 stem_chs, C_in), unused D), ``conv.kernel.*.inv_dt`` and ``conv.D`` are
    per pair: a converter repeats inv_dt over o and sets D = 0.
    """

    def __init__(
            self, in_chs: int, out_chs: int, patch: Tuple[int, ...], stem_chs: int, l_max: Sequence[int],
            s4nd_args: Dict, temporal_args: Optional[Dict]):
        super().__init__()
        self.in_chs, self.stem_chs, self.ndim = in_chs, stem_chs, len(patch)
        self.conv = _s4nd(in_chs * stem_chs, len(patch), l_max, s4nd_args, temporal_args)
        self.pool = _avg_pool_nd(len(patch), patch)
        self.proj = nn.Linear(stem_chs, 2 * out_chs)
        self.norm = LayerNormNd(out_chs, eps=1e-6)

    def forward(self, x: Tensor, rate: Rate = None) -> Tensor:
        y = self.conv(x.repeat((1, self.stem_chs) + (1,) * self.ndim), rate=rate)
        y = y.unflatten(1, (self.stem_chs, self.in_chs)).sum(2)
        y = self.pool(y).movedim(1, -1)
        return self.norm(F.glu(self.proj(y), dim=-1).movedim(-1, 1))


class ConvDownsample(nn.Module):
    """ConvNeXt downsample: LayerNorm -> conv with kernel = stride = (1,) 2, 2. (B, C_in, [T,] H, W) ->
    (B, C_out, [T,] H // 2, W // 2)."""

    def __init__(self, in_chs: int, out_chs: int, stride: Tuple[int, ...]):
        super().__init__()
        self.norm = LayerNormNd(in_chs, eps=1e-6)
        self.conv = _conv_nd(len(stride))(in_chs, out_chs, kernel_size=stride, stride=stride)

    def forward(self, x: Tensor, rate: Rate = None) -> Tensor:
        return self.conv(self.norm(x))


class S4NDDownsample(nn.Module):
    """The reference's ``s4nd`` downsample: LayerNorm -> S4ND (l_max = input size) -> average pool ->
    Linear C_in -> 2 C_out -> GLU. (B, C_in, [T,] H, W) -> (B, C_out, [T,] H // 2, W // 2)."""

    def __init__(
            self, in_chs: int, out_chs: int, stride: Tuple[int, ...], l_max: Sequence[int],
            s4nd_args: Dict, temporal_args: Optional[Dict]):
        super().__init__()
        self.norm = LayerNormNd(in_chs, eps=1e-6)
        self.conv = _s4nd(in_chs, len(stride), l_max, s4nd_args, temporal_args)
        self.pool = _avg_pool_nd(len(stride), stride)
        self.proj = nn.Linear(in_chs, 2 * out_chs)

    def forward(self, x: Tensor, rate: Rate = None) -> Tensor:
        y = self.pool(self.conv(self.norm(x), rate=rate)).movedim(1, -1)
        return F.glu(self.proj(y), dim=-1).movedim(-1, 1)


class S4NDConvNeXtBlock(nn.Module):
    """ConvNeXt block with S4ND as the spatial mixer: S4ND -> LayerNorm -> Linear 4x -> GELU -> Linear
    -> layer scale -> drop path -> residual. (B, C, [T,] H, W) -> same.

    Args:
        dim: C.
        l_max: base size of each spatial axis at this stage (the model's input size / stride).
        mlp_ratio: hidden width of the MLP / dim.
        ls_init_value: initial layer scale (None: no layer scale).
        drop_path: stochastic depth probability.
        s4nd_args: the model's S4ND settings (``s4nd_layer_args``).
        temporal_args: 3-D only, the time-axis kernel's init and Δ.
    """

    def __init__(
            self,
            dim: int,
            l_max: Sequence[int],
            mlp_ratio: float = 4.0,
            ls_init_value: Optional[float] = 1e-6,
            drop_path: float = 0.0,
            s4nd_args: Optional[Dict] = None,
            temporal_args: Optional[Dict] = None,
    ):
        super().__init__()
        self.conv_dw = _s4nd(dim, len(l_max), l_max, s4nd_args, temporal_args)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim)) if ls_init_value is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor, rate: Rate = None) -> Tensor:
        y = self.mlp(self.norm(self.conv_dw(x, rate=rate).movedim(1, -1)))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.movedim(-1, 1))


class S4NDConvNeXtStage(nn.Module):
    """Optional downsample, then ``depth`` blocks. (B, C_in, [T,] H, W) -> (B, C_out, [T,] H', W')."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            in_size: Tuple[int, ...],
            depth: int,
            downsample_type: Optional[str],
            drop_path_rates: Sequence[float],
            mlp_ratio: float,
            ls_init_value: Optional[float],
            s4nd_args: Dict,
            temporal_args: Optional[Dict],
    ):
        super().__init__()
        self.grad_checkpointing = False
        ndim = len(in_size)
        stride = (2, 2) if ndim == 2 else (1, 2, 2)
        if downsample_type is None:
            self.downsample = None
            size = in_size
        elif downsample_type == 'conv':
            self.downsample = ConvDownsample(in_chs, out_chs, stride)
            size = tuple(n // s for n, s in zip(in_size, stride))
        else:
            self.downsample = S4NDDownsample(in_chs, out_chs, stride, in_size, s4nd_args, temporal_args)
            size = tuple(n // s for n, s in zip(in_size, stride))
        self.out_size = size
        self.blocks = nn.Sequential(*[
            S4NDConvNeXtBlock(
                out_chs, size, mlp_ratio=mlp_ratio, ls_init_value=ls_init_value, drop_path=drop_path_rates[j],
                s4nd_args=s4nd_args, temporal_args=temporal_args)
            for j in range(depth)])

    def forward(self, x: Tensor, rate: Rate = None) -> Tensor:
        if self.downsample is not None:
            x = self.downsample(x, rate)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, rate, use_reentrant=False)
            else:
                x = block(x, rate)
        return x


class S4NDClassifierHead(nn.Module):
    """ConvNeXt head: global pool -> LayerNorm -> dropout -> Linear. (B, C, *spatial) -> (B, num_classes).

    ``pool_type=''`` keeps the spatial axes: LayerNorm over channels, output (B, C, *spatial); it needs
    ``num_classes=0``.
    """

    def __init__(self, in_features: int, num_classes: int, pool_type: str = 'avg', drop_rate: float = 0.0):
        super().__init__()
        self.in_features = self.num_features = in_features
        self.norm = nn.LayerNorm(in_features, eps=1e-6)
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, pool_type)

    def reset(self, num_classes: int, pool_type: Optional[str] = None) -> None:
        if pool_type is not None:
            if pool_type not in ('avg', 'max', ''):
                raise ValueError(f"global_pool={pool_type!r} is not supported; expected 'avg', 'max' or ''")
            self.pool_type = pool_type
        if not self.pool_type and num_classes > 0:
            raise ValueError(f"global_pool='' keeps the spatial axes and needs num_classes=0; got {num_classes}")
        self.fc = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        if self.pool_type == 'avg':
            x = self.norm(x.flatten(2).mean(-1))
        elif self.pool_type == 'max':
            x = self.norm(x.flatten(2).amax(-1))
        else:
            x = self.norm(x.movedim(1, -1)).movedim(-1, 1)
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


class S4NDConvNeXt(S4NDModelMixin, nn.Module):
    """ConvNeXt with S4ND-2D (images) or S4ND-3D (video, ``num_frames`` set) in the blocks.

    Input (B, in_chans, H, W), or (B, in_chans, T, H, W) for video; any H, W (T) of at least one
    output pixel (32 px, ``temporal_patch_size`` frames): ``img_size`` / ``num_frames`` is the base
    resolution that sets each S4ND's l_max, and in ``s4nd_resolution='continuous'`` mode other sizes are
    read as the same signal resampled (rate = base / size per axis, docs/design.md §5).

    Args:
        in_chans: input channels.
        num_classes: classifier outputs (0: no classifier, ``forward`` returns pooled features).
        global_pool: 'avg', 'max' or '' (no pooling; with num_classes=0).
        img_size: base image size, int or (H, W).
        num_frames: None for images; base clip length T for video.
        temporal_patch_size: frames per stem patch (video).
        depths, dims: blocks and channels per stage.
        mlp_ratio: block MLP width / dim.
        ls_init_value: layer-scale init (None: off).
        stem_type: 'patch' (conv + LayerNorm) or 's4nd' (the reference's S4ND stem).
        downsample_type: 'conv' (LayerNorm + strided conv) or 's4nd' (the reference's S4ND downsample).
        patch_size: stem patch (and pooling) size.
        stem_chs, stem_l_max: S4ND stem width and kernel length (base pixels per direction).
        drop_rate: head dropout. drop_path_rate: stochastic depth, linear 0 -> rate over all blocks.
        head_init_scale: classifier weight / bias init scale.
        d_state, dt_min, dt_max, bandlimit, ssm_lr: SSM settings of every S4ND (docs/design.md §3, §4).
        s4nd_mode, s4nd_init: S4ND kernel family and init.
        s4nd_backend: convolution path ('auto', 'fft', 'matmul', 'triton'); settable later.
        s4nd_resolution: 'continuous' or 'discrete'; settable later.
        temporal_init, temporal_dt: video, the time-axis kernel's init (None: 'hippo' for mode 'dplr', as the
            reference video run, else ``s4nd_init``) and fixed Δ (None: the [dt_min, dt_max] range); one SSM
            set per feature. Default Δ = e^2, the reference video run's effective value (docs/design.md §7.2, §3).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            img_size: Union[int, Tuple[int, int]] = 224,
            num_frames: Optional[int] = None,
            temporal_patch_size: int = 2,
            depths: Tuple[int, ...] = (3, 3, 9, 3),
            dims: Tuple[int, ...] = (96, 192, 384, 768),
            mlp_ratio: float = 4.0,
            ls_init_value: Optional[float] = 1e-6,
            stem_type: str = 'patch',
            downsample_type: str = 'conv',
            patch_size: int = 4,
            stem_chs: int = 32,
            stem_l_max: int = 16,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            head_init_scale: float = 1.0,
            d_state: int = 64,
            dt_min: float = 0.1,
            dt_max: float = 1.0,
            bandlimit: Optional[float] = None,
            ssm_lr: Optional[float] = 1e-3,
            s4nd_mode: str = _DEFAULT_MODE,
            s4nd_init: str = _DEFAULT_INIT,
            s4nd_backend: str = 'auto',
            s4nd_resolution: str = 'continuous',
            temporal_init: Optional[str] = None,
            temporal_dt: Optional[float] = math.exp(2.0),
    ):
        super().__init__()
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1; got {in_chans}")
        if stem_type not in STEM_TYPES:
            raise ValueError(f"stem_type={stem_type!r} is not supported; expected one of {STEM_TYPES}")
        if downsample_type not in DOWNSAMPLE_TYPES:
            raise ValueError(
                f"downsample_type={downsample_type!r} is not supported; expected one of {DOWNSAMPLE_TYPES}")
        if len(depths) != len(dims):
            raise ValueError(f"depths and dims need one entry per stage; got {depths} and {dims}")
        check_num_classes(num_classes)
        img_size = tuple(to_2tuple(img_size))
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_frames = num_frames
        self.ndim = 2 if num_frames is None else 3
        self.base_size = img_size if num_frames is None else (num_frames,) + img_size
        patch = (patch_size, patch_size) if num_frames is None else (temporal_patch_size, patch_size, patch_size)
        self.stem_stride = patch
        # smallest input with one output pixel: the stem patch times the spatial downsampling (time is not downsampled)
        self.min_size = tuple(
            p if (self.ndim == 3 and i == 0) else p * 2 ** (len(dims) - 1) for i, p in enumerate(patch))
        s4nd_args = s4nd_layer_args(
            d_state, dt_min, dt_max, bandlimit, ssm_lr, s4nd_mode, s4nd_init, s4nd_backend, s4nd_resolution)
        if temporal_init is None:
            temporal_init = _DEFAULT_TEMPORAL_INIT if s4nd_mode == 'dplr' else s4nd_init
        temporal_args = None if num_frames is None else dict(init=temporal_init, dt=temporal_dt)
        self._s4nd_resolution = s4nd_resolution

        if stem_type == 'patch':
            self.stem = PatchStem(in_chans, dims[0], patch)
        else:
            self.stem = S4NDStem(
                in_chans, dims[0], patch, stem_chs, (stem_l_max,) * self.ndim, s4nd_args, temporal_args)
        size = tuple(n // p for n, p in zip(self.base_size, patch))
        if min(size) < 1:
            raise ValueError(f"img_size / num_frames {self.base_size} is smaller than the stem patch {patch}")

        dp = torch.linspace(0, drop_path_rate, sum(depths)).split(list(depths))
        stages, self.feature_info = [], []
        reduction = patch_size
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            stage = S4NDConvNeXtStage(
                dims[i - 1] if i else dims[0], dim, size, depth, downsample_type if i else None,
                dp[i].tolist(), mlp_ratio, ls_init_value, s4nd_args, temporal_args)
            size = stage.out_size
            reduction = reduction * 2 if i else reduction
            stages.append(stage)
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f'stages.{i}'))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = dims[-1]
        self.head = S4NDClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.apply(partial(_init_weights, head_init_scale=head_init_scale))

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r'^stem',
            blocks=r'^stages\.(\d+)' if coarse else [
                (r'^stages\.(\d+)\.downsample', (0,)),
                (r'^stages\.(\d+)\.blocks\.(\d+)', None),
            ])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        check_num_classes(num_classes)
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def _rate(self, x: Tensor, rate: Rate) -> Rate:
        """Check the input; the per-axis rate every S4ND gets (the override, or the resolution mode's)."""
        return checked_rate(x, rate, self.in_chans, self.min_size, self.base_size, self.s4nd_resolution)

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
        """Stage outputs (and the final features).

        Args:
            x: (B, C, H, W) or (B, C, T, H, W).
            indices: stages to return: None all, int n the last n, or a list of indices.
            norm: unused (the final norm sits in the head, after pooling, as in ConvNeXt).
            stop_early: stop after the last requested stage.
            output_fmt: 'NCHW' (channels first; for video (B, C, T, H, W)).
            intermediates_only: return only the list.
            rate: resolution rate override (see ``forward``).
        Returns:
            list of (B, C_s, [T',] H_s, W_s), or (final features, that list).
        """
        if output_fmt != 'NCHW':
            raise ValueError(
                f"output_fmt={output_fmt!r} is not supported; S4NDConvNeXt returns 'NCHW' (channels first)")
        rate = self._rate(x, rate)
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[:max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x, rate)
        for i, stage in enumerate(stages):
            x = stage(x, rate)
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last of ``indices`` (and the classifier); returns the kept indices."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_head or prune_end:  # a head sized for the last stage cannot follow an earlier one
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.head = S4NDClassifierHead(self.num_features, 0, pool_type='')
            self.num_classes = 0
        return take

    def forward_features(self, x: Tensor, rate: Rate = None) -> Tensor:
        """(B, C, [T,] H, W) -> (B, num_features, [T / p_t,] H / 32, W / 32)."""
        rate = self._rate(x, rate)
        x = self.stem(x, rate)
        for stage in self.stages:
            x = stage(x, rate)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """(B, num_features, *spatial) -> (B, num_classes), or the pooled, normed features if pre_logits."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor, rate: Rate = None) -> Tensor:
        """(B, C, H, W) or (B, C, T, H, W) -> (B, num_classes).

        rate: None (the ``s4nd_resolution`` rule: base size / input size per axis, or 1 when
        discrete), a float, or one per axis (T, H, W), r = base / actual (docs/design.md §5).
        """
        return self.forward_head(self.forward_features(x, rate))


# a leaf under torch.fx (timm's tracer): the checks run on the real input; a public name (FX wraps no '_' names)
@register_notrace_function
def checked_rate(
        x: Tensor, rate: Rate, in_chans: int, min_size: Tuple[int, ...], base_size: Tuple[int, ...],
        resolution: str) -> Tuple[float, ...]:
    """Check a (B, in_chans, [T,] H, W) input; the per-axis rate of every S4ND: the override ``rate``, or the
    layer's rule for the resolution mode with the model's base size as l_max (``resolution_rates``)."""
    ndim = len(base_size)
    if x.dim() != ndim + 2 or x.shape[1] != in_chans:
        axes = 'H, W' if ndim == 2 else 'T, H, W'
        if x.dim() == ndim + 2:
            hint = f"Other channel count? create the model with in_chans={x.shape[1]}."
        elif ndim == 2:
            hint = "Video (B, C, T, H, W)? use s4nd_convnext_tiny_3d."
        else:
            hint = "Images? use the 2-D model (s4nd_convnext_tiny), or pass clips (B, C, T, H, W)."
        raise ValueError(
            f"S4NDConvNeXt ({ndim}-D) expects (B, {in_chans}, {axes}); got {tuple(x.shape)}. {hint}")
    spatial = tuple(x.shape[2:])
    if any(n < m for n, m in zip(spatial, min_size)):
        raise ValueError(
            f"input {spatial} is too small: each axis needs at least {min_size} (stem patch x 2^(stages-1)).")
    return resolution_rates(base_size, spatial, resolution, rate)


def _init_weights(module: nn.Module, head_init_scale: float = 1.0) -> None:
    """Conv and Linear: truncated normal (std 0.02), zero bias; classifier scaled by head_init_scale.
    S4ND parameters keep the layer's own init."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    if isinstance(module, S4NDClassifierHead) and isinstance(module.fc, nn.Linear):
        module.fc.weight.data.mul_(head_init_scale)
        module.fc.bias.data.mul_(head_init_scale)


# Reference (state-spaces/s4) key rules, docs/design.md §8: (regex on the key, -> our key | S4ND layer | drop).
REFERENCE_RULES: List[Rule] = [
    (r'stem\.stem\.([01])\.(weight|bias)', lambda m: f"stem.{'conv' if m[1] == '0' else 'norm'}.{m[2]}"),
    (r'stem\.stem\.(?P<inner>.+)', lambda m: (S4ND_LAYER, 'stem.conv.')),
    (r'stem\.post_stem\.1\.(weight|bias)', lambda m: f'stem.proj.{m[1]}'),
    (r'stem\.post_stem\.3\.(weight|bias)', lambda m: f'stem.norm.{m[1]}'),
    (r'stages\.(\d+)\.norm_layer\.(weight|bias)', lambda m: f'stages.{m[1]}.downsample.norm.{m[2]}'),
    (r'stages\.(\d+)\.downsample\.s4conv\.(?P<inner>.+)', lambda m: (S4ND_LAYER, f'stages.{m[1]}.downsample.conv.')),
    (r'stages\.(\d+)\.downsample\.fc\.(weight|bias)', lambda m: f'stages.{m[1]}.downsample.proj.{m[2]}'),
    (r'stages\.(\d+)\.downsample\.conv\.(weight|bias)', lambda m: m[0]),
    (r'stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.(?P<inner>.+)',
     lambda m: (S4ND_LAYER, f'stages.{m[1]}.blocks.{m[2]}.conv_dw.')),
    (r'stages\.(\d+)\.blocks\.(\d+)\.(norm|mlp\.fc1|mlp\.fc2)\.(weight|bias)', lambda m: m[0]),
    (r'stages\.(\d+)\.blocks\.(\d+)\.gamma', lambda m: m[0]),
    (r'head\.(norm|fc)\.(weight|bias)', lambda m: m[0]),
]
_REFERENCE_ONLY = r'^(model\.)?stem\.(stem|post_stem)\.|\.norm_layer\.|\.downsample\.(s4conv|fc)\.'


def reference_keys(state_dict: Dict[str, Tensor]) -> ReferenceKeys:
    """A reference ConvNeXt-S4ND (2-D or 3-D) state dict under our names (docs/design.md §8)."""
    keys = rename_reference(state_dict, REFERENCE_RULES)
    _expand_reference_stem(keys)
    return keys


def _expand_reference_stem(keys: ReferenceKeys) -> None:
    """Reference S4ND stem (full conv, kernel channels (2 S, C_in), inv_dt per input channel) -> our depthwise
    (out, in)-pair layer (``S4NDStem``): inv_dt repeated over the S out channels, C (2 S, C_in, M, 2) ->
    (2, S C_in, M, 2) (pair o C_in + i), D (unused by the reference) = 0."""
    out, origin = keys.tensors, keys.origin
    c_keys = sorted(k for k in out if re.fullmatch(r'stem\.conv\.kernel\.\d+\.C', k))
    if not c_keys:
        return
    ck, c_in = out[c_keys[0]].shape[:2]
    stem_chs = out['stem.proj.weight'].shape[1] if 'stem.proj.weight' in out else ck // 2
    if ck != 2 * stem_chs:
        keys.mismatched.append(
            f"{origin[c_keys[0]]} {tuple(out[c_keys[0]].shape)}: the S4ND stem needs 2 x stem channels = "
            f"{2 * stem_chs} kernel channels (bidirectional, one per output channel)")
        return
    for key in [k for k in out if k.startswith('stem.conv.')]:
        t, name = out[key], key.rsplit('.', 1)[-1]
        if name == 'inv_dt':
            out[key] = t.repeat(stem_chs, 1)
        elif name == 'C':
            out[key] = t.reshape(2, stem_chs * t.shape[1], *t.shape[2:])
        elif name == 'D':
            out[key] = torch.zeros(t.shape[0], t.shape[1] * stem_chs, dtype=t.dtype)
        elif name in ('A_real', 'B', 'P'):  # the (A, B, P) sets are tiled over channels h mod n_ssm
            n_ssm = t.shape[0] if name == 'A_real' else t.shape[1]
            if c_in % n_ssm:
                keys.mismatched.append(
                    f"{origin[key]} {tuple(t.shape)}: n_ssm={n_ssm} must divide the stem's {c_in} input channels "
                    f"for pair o C_in + i to keep input channel i's set")
    if 'stem.conv.D' in out:
        keys.notes.append(f"`{origin['stem.conv.D']}` is unused by the reference's full-conv stem; `stem.conv.D` = 0")


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: S4NDConvNeXt) -> Dict[str, Tensor]:
    """Our checkpoints load as they are; a 2-D checkpoint for a video model is inflated (``inflate_2d_to_3d``);
    a reference (state-spaces/s4) checkpoint is renamed by ``REFERENCE_RULES`` and must fit the model as built."""
    state_dict = filter_reference(state_dict, model, reference_keys, _REFERENCE_ONLY)
    stem_key = 'stem.conv.weight'
    if model.ndim == 3 and stem_key in state_dict and state_dict[stem_key].dim() == 4:
        from ._inflate import inflate_2d_to_3d
        return inflate_2d_to_3d(state_dict, model)
    return state_dict


# The registered sizes: each entrypoint below builds its entry (explicit kwargs win); s4nd-convert matches
# checkpoints against them.
MODEL_ARGS = {
    's4nd_convnext_micro': dict(depths=(3, 3, 3, 3), dims=(64, 128, 256, 512)),
    's4nd_convnext_tiny': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    's4nd_convnext_small': dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    's4nd_convnext_base': dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    's4nd_convnext_tiny_3d': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), num_frames=30),
}


def _create_s4nd_convnext(variant: str, pretrained: bool = False, **kwargs) -> S4NDConvNeXt:
    kwargs = dict(MODEL_ARGS[variant], **kwargs)
    return build_s4nd_model(
        S4NDConvNeXt, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls='getter'),
        **kwargs)


default_cfgs = s4nd_default_cfgs(
    dict(IN1K_CFG, pool_size=(7, 7), first_conv='stem.conv', classifier='head.fc'), {
        's4nd_convnext_micro.in1k': {},
        's4nd_convnext_tiny.in1k': {},
        's4nd_convnext_small.in1k': {},
        's4nd_convnext_base.in1k': {},
        # video: input_size is (C, T, H, W); timm's data config carries it unchanged, its transforms use the last two
        's4nd_convnext_tiny_3d.in1k_ft_hmdb51': dict(
            num_classes=51, input_size=(3, 30, 224, 224), test_input_size=(3, 30, 224, 224), pool_size=(15, 7, 7),
            crop_pct=1.0, notes=('video: input (B, 3, T, H, W), T = num_frames = 30 (15 after the stem)',)),
    })


@register_model
def s4nd_convnext_micro(pretrained: bool = False, **kwargs) -> S4NDConvNeXt:
    """ConvNeXt-Micro (the paper's Celeb-A size) with S4ND-2D in place of the 7x7 depthwise conv."""
    return _create_s4nd_convnext('s4nd_convnext_micro', pretrained=pretrained, **kwargs)


@register_model
def s4nd_convnext_tiny(pretrained: bool = False, **kwargs) -> S4NDConvNeXt:
    """ConvNeXt-T with S4ND-2D in place of the 7x7 depthwise conv."""
    return _create_s4nd_convnext('s4nd_convnext_tiny', pretrained=pretrained, **kwargs)


@register_model
def s4nd_convnext_small(pretrained: bool = False, **kwargs) -> S4NDConvNeXt:
    """ConvNeXt-S with S4ND-2D in place of the 7x7 depthwise conv."""
    return _create_s4nd_convnext('s4nd_convnext_small', pretrained=pretrained, **kwargs)


@register_model
def s4nd_convnext_base(pretrained: bool = False, **kwargs) -> S4NDConvNeXt:
    """ConvNeXt-B with S4ND-2D in place of the 7x7 depthwise conv."""
    return _create_s4nd_convnext('s4nd_convnext_base', pretrained=pretrained, **kwargs)


@register_model
def s4nd_convnext_tiny_3d(pretrained: bool = False, **kwargs) -> S4NDConvNeXt:
    """ConvNeXt-T with S4ND-3D for video, input (B, 3, T, H, W) (HMDB-51 setup, docs/design.md §7.2)."""
    return _create_s4nd_convnext('s4nd_convnext_tiny_3d', pretrained=pretrained, **kwargs)
