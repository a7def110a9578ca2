"""ViT-S4ND: Vision Transformer with a 1-D S4ND over the patch sequence in place of attention.

Paper: "S4ND: Modeling Images and Videos as Multidimensional Signals Using State Spaces",
Nguyen et al., NeurIPS 2022 (arXiv 2210.06583); ViT: Dosovitskiy et al., ICLR 2021 (arXiv 2010.11929).
See docs/design.md §7.3 (reference: state-spaces/s4 ViT-S4ND config); the trunk is
timm's ``VisionTransformer`` with ``S4NDViTBlock`` as its ``block_fn``.

Architecture (docs/design.md §7.3): 16x16 patch embedding -> depth x [pre-LN -> S4ND -> drop path -> residual;
pre-LN -> MLP -> drop path -> residual] -> LayerNorm -> mean pool -> Linear (LayerNorm eps 1e-5, the reference's
value; timm's ViT uses 1e-6). No class token, no position
embedding: the S4ND is 1-D over the row-major patch sequence (l_max = number of patches at ``img_size``),
bidirectional, channels=2, GELU -> Linear(2D -> 2D) -> GLU, d_state 64, Δ in [0.001, 0.1].

Changes from the reference: one axis kernel (the reference builds a second, unused ``kernel.1``);
any input size whose sides are multiples of the patch (``dynamic_img_pad=True`` pads other sizes): the
sequence is then longer or shorter than l_max, read at rate l_max / L in continuous mode.

Reference (state-spaces/s4) checkpoints load directly (``checkpoint_filter_fn``, ``REFERENCE_RULES``;
the key map is docs/design.md §8).
"""
import re
from functools import partial
from typing import Dict, List, Optional, Type

import torch.nn as nn
from timm.layers import DropPath, LayerScale, Mlp, register_notrace_function, to_2tuple
from timm.models import register_model
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from s4nd_timm.layers import S4ND

from ._builder import build_s4nd_model
from ._common import IN1K_CFG, S4NDModelMixin, check_num_classes, s4nd_default_cfgs, s4nd_layer_args
from ._reference_keys import (
    S4ND_LAYER, ReferenceKeys, Rule, drop, filter_reference, rename_reference)

__all__ = ['S4NDVisionTransformer', 'S4NDViTBlock', 'checkpoint_filter_fn', 'reference_keys']

# Kernel family and init of every S4ND here: what the reference's configs ran (docs/design.md §6).
_DEFAULT_MODE = 'dplr'
_DEFAULT_INIT = 'legs'
# LayerNorm of the blocks and the final norm: the reference's eps (timm's ViT default is 1e-6)
_LN_EPS = 1e-5


# a leaf under torch.fx (timm's tracer): the check runs on the real arguments; a public name (FX wraps no '_' names)
@register_notrace_function
def without_attention_mask(x: Tensor, attn_mask: Optional[Tensor], is_causal: bool) -> Tensor:
    """``x``; refuses a real ``attn_mask`` or ``is_causal=True`` (S4ND mixes every token with every token)."""
    if attn_mask is not None or is_causal:
        raise ValueError(
            f"S4NDViTBlock has no attention to mask: it takes attn_mask=None, is_causal=False (timm's default); got "
            f"attn_mask={'a tensor' if attn_mask is not None else None}, is_causal={is_causal}. The S4ND mixer is "
            f"bidirectional over the whole patch sequence; drop the mask (masked or causal token mixing has no "
            f"S4ND meaning in this model).")
    return x


class S4NDViTBlock(nn.Module):
    """Pre-norm ViT block with S4ND as the token mixer. (B, N, C) -> (B, N, C).

    Args:
        dim: C.
        mlp_ratio: MLP hidden width / dim.
        proj_drop: MLP dropout.
        init_values: layer-scale init (None: off).
        drop_path: stochastic depth probability.
        act_layer, norm_layer, mlp_layer: as in timm's ``Block``.
        l_max: base sequence length (patches at the model's img_size).
        channels: S4ND channels per feature.
        s4nd_args: the model's S4ND settings (``s4nd_layer_args``).
        **attention_args: what timm's VisionTransformer passes to attention blocks (num_heads, qkv_bias,
            attn_drop, attn_layer, depth, device, dtype, ... depending on the timm version); S4ND has no use
            for them.
    """

    def __init__(
            self,
            dim: int,
            mlp_ratio: float = 4.0,
            proj_drop: float = 0.0,
            init_values: Optional[float] = None,
            drop_path: float = 0.0,
            act_layer: Type[nn.Module] = nn.GELU,
            norm_layer: Type[nn.Module] = nn.LayerNorm,
            mlp_layer: Type[nn.Module] = Mlp,
            l_max: int = 196,
            channels: int = 2,
            s4nd_args: Optional[Dict] = None,
            **attention_args,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.mixer = S4ND(
            dim, ndim=1, l_max=l_max, channels=channels, activation='gelu', postact='glu',
            layout='channels_last', **s4nd_args)
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=proj_drop)
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        """(B, N, C) -> (B, N, C). ``attn_mask`` / ``is_causal``: timm's ``Block`` signature (timm >= 1.0.30
        passes them); only None / False are accepted."""
        x = without_attention_mask(x, attn_mask, is_causal)
        x = x + self.drop_path1(self.ls1(self.mixer(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class S4NDVisionTransformer(S4NDModelMixin, VisionTransformer):
    """timm VisionTransformer with S4ND token mixing, no class token, no position embedding, mean pool.

    Input (B, in_chans, H, W) with H, W multiples of ``patch_size`` (any, with ``dynamic_img_pad=True``);
    ``forward_features`` returns (B, N, embed_dim) tokens, N = (H / p)(W / p).

    Args:
        img_size: base image size (sets l_max = number of patches).
        patch_size, in_chans, num_classes, embed_dim, depth, mlp_ratio, init_values, drop_rate,
        proj_drop_rate, drop_path_rate, dynamic_img_pad, weight_init: as in timm's VisionTransformer.
        global_pool: 'avg' (the reference), 'max', 'avgmax' or ''.
        s4nd_channels: S4ND channels per feature (the reference: 2).
        d_state, dt_min, dt_max, bandlimit, ssm_lr: SSM settings of every S4ND (docs/design.md §3, §4).
        s4nd_mode, s4nd_init: S4ND kernel family and init.
        s4nd_backend: convolution path ('auto', 'fft', 'matmul', 'triton'); settable later.
        s4nd_resolution: 'continuous' or 'discrete'; settable later.
    """

    def __init__(
            self,
            img_size: int = 224,
            patch_size: int = 16,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            embed_dim: int = 768,
            depth: int = 12,
            mlp_ratio: float = 4.0,
            init_values: Optional[float] = None,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            dynamic_img_pad: bool = False,
            weight_init: str = '',
            s4nd_channels: int = 2,
            d_state: int = 64,
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            bandlimit: Optional[float] = None,
            ssm_lr: Optional[float] = 1e-3,
            s4nd_mode: str = _DEFAULT_MODE,
            s4nd_init: str = _DEFAULT_INIT,
            s4nd_backend: str = 'auto',
            s4nd_resolution: str = 'continuous',
    ):
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1; got {in_chans}")
        check_num_classes(num_classes)
        size = to_2tuple(img_size)
        if size[0] % patch_size or size[1] % patch_size:
            raise ValueError(f"img_size {size} must be a multiple of patch_size={patch_size} (it sets l_max)")
        l_max = (size[0] // patch_size) * (size[1] // patch_size)
        s4nd_args = s4nd_layer_args(
            d_state, dt_min, dt_max, bandlimit, ssm_lr, s4nd_mode, s4nd_init, s4nd_backend, s4nd_resolution)
        super().__init__(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
            global_pool=global_pool, embed_dim=embed_dim, depth=depth, mlp_ratio=mlp_ratio, init_values=init_values,
            class_token=False, pos_embed='none', fc_norm=False, dynamic_img_size=True, dynamic_img_pad=dynamic_img_pad,
            drop_rate=drop_rate, proj_drop_rate=proj_drop_rate, drop_path_rate=drop_path_rate, weight_init=weight_init,
            norm_layer=partial(nn.LayerNorm, eps=_LN_EPS),
            block_fn=partial(S4NDViTBlock, l_max=l_max, channels=s4nd_channels, s4nd_args=s4nd_args))
        self.in_chans = in_chans
        self._s4nd_resolution = s4nd_resolution

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        check_num_classes(num_classes)
        super().reset_classifier(num_classes, global_pool)


def _reference_norm(m: re.Match) -> str:
    """blocks.{2i}.norm.norm -> blocks.i.norm1 (before the S4ND), blocks.{2i+1}.norm.norm -> blocks.i.norm2."""
    return f'blocks.{int(m[1]) // 2}.norm{1 + int(m[1]) % 2}.{m[2]}'


def _reference_mlp(dest: str):
    """The reference's odd blocks hold the MLP: blocks.{2i+1}.layer.ff.* -> blocks.i.<dest>."""
    return lambda m: f'blocks.{int(m[1]) // 2}.{dest}.{m[2]}' if int(m[1]) % 2 else None


def _reference_mixer(m: re.Match):
    """The reference's even blocks hold the S4ND: blocks.{2i}.layer -> blocks.i.mixer, its second axis kernel
    dropped (a 1-D sequence layer built with two, docs/design.md §7.3)."""
    if int(m[1]) % 2:
        return None
    if re.match(r'kernel\.[1-9]\d*\.', m['inner']):
        return drop('second axis kernel of a 1-D sequence S4ND, unused by the reference (docs/design.md §7.3)')
    return S4ND_LAYER, f'blocks.{int(m[1]) // 2}.mixer.'


# Reference (state-spaces/s4) key rules, docs/design.md §8: (regex on the key, -> our key | S4ND layer | drop).
REFERENCE_RULES: List[Rule] = [
    (r'patch_embed\.proj\.(weight|bias)', lambda m: m[0]),
    (r'blocks\.(\d+)\.norm\.norm\.(weight|bias)', _reference_norm),
    (r'blocks\.(\d+)\.layer\.ff\.0\.0\.(weight|bias)', _reference_mlp('mlp.fc1')),
    (r'blocks\.(\d+)\.layer\.ff\.2\.(weight|bias)', _reference_mlp('mlp.fc2')),
    (r'blocks\.(\d+)\.layer\.(?P<inner>.+)', _reference_mixer),
    (r'norm\.norm\.(weight|bias)', lambda m: f'norm.{m[1]}'),
    (r'head\.(weight|bias)', lambda m: m[0]),
]
_REFERENCE_ONLY = r'^(model\.)?blocks\.\d+\.(layer|norm\.norm)\.|^(model\.)?norm\.norm\.'


def reference_keys(state_dict: Dict[str, Tensor]) -> ReferenceKeys:
    """A reference ViT-S4ND state dict under our names (docs/design.md §8)."""
    return rename_reference(state_dict, REFERENCE_RULES)


def checkpoint_filter_fn(state_dict: Dict[str, Tensor], model: S4NDVisionTransformer) -> Dict[str, Tensor]:
    """Our checkpoints load as they are; a reference (state-spaces/s4) checkpoint is renamed by ``REFERENCE_RULES``
    and must fit the model as built."""
    return filter_reference(state_dict, model, reference_keys, _REFERENCE_ONLY)


# The registered sizes: each entrypoint below builds its entry (explicit kwargs win); s4nd-convert matches
# checkpoints against them.
MODEL_ARGS = {
    's4nd_vit_tiny_patch16': dict(patch_size=16, embed_dim=192, depth=12),
    's4nd_vit_small_patch16': dict(patch_size=16, embed_dim=384, depth=12),
    's4nd_vit_base_patch16': dict(patch_size=16, embed_dim=768, depth=12),
}


def _create_s4nd_vit(variant: str, pretrained: bool = False, **kwargs) -> S4NDVisionTransformer:
    kwargs = dict(MODEL_ARGS[variant], **kwargs)
    out_indices = kwargs.pop('out_indices', 3)
    return build_s4nd_model(
        S4NDVisionTransformer, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs)


default_cfgs = s4nd_default_cfgs(
    dict(IN1K_CFG, pool_size=None, first_conv='patch_embed.proj', classifier='head'), {
        's4nd_vit_tiny_patch16.in1k': {},
        's4nd_vit_small_patch16.in1k': {},
        's4nd_vit_base_patch16.in1k': {},
    })


@register_model
def s4nd_vit_tiny_patch16(pretrained: bool = False, **kwargs) -> S4NDVisionTransformer:
    """ViT-Ti/16 with a 1-D S4ND over the patch sequence in place of attention."""
    return _create_s4nd_vit('s4nd_vit_tiny_patch16', pretrained=pretrained, **kwargs)


@register_model
def s4nd_vit_small_patch16(pretrained: bool = False, **kwargs) -> S4NDVisionTransformer:
    """ViT-S/16 with a 1-D S4ND over the patch sequence in place of attention."""
    return _create_s4nd_vit('s4nd_vit_small_patch16', pretrained=pretrained, **kwargs)


@register_model
def s4nd_vit_base_patch16(pretrained: bool = False, **kwargs) -> S4NDVisionTransformer:
    """ViT-B/16 with a 1-D S4ND over the patch sequence in place of attention (the paper's ViT-S4ND-B)."""
    return _create_s4nd_vit('s4nd_vit_base_patch16', pretrained=pretrained, **kwargs)
