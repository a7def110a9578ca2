"""2-D -> 3-D weight inflation for ConvNeXt-S4ND (ImageNet weights -> video model).

See docs/design.md §7.2 (reference: state-spaces/s4 ``convnext_timm.py`` inflation hook
and the README's HMDB-51 run).

Rules, for every tensor of the 2-D state dict:
    conv weight (O, I, kh, kw)       -> (O, I, kt, kh, kw): repeated kt times along the new time axis,
                                        not divided by kt (the reference's choice; ``normalize_stem=True``
                                        divides the stem by kt as I3D does)
    S4ND kernel.0 (H), kernel.1 (W)  -> kernel.1, kernel.2; the time kernel kernel.0 keeps the 3-D model's
                                        own init (``temporal_init`` / ``temporal_dt``, Δ = e^2 by default)
    head.fc (classifier)             -> not used: the 3-D model's fresh classifier (new classes)
    everything else (D, norms, MLP, layer scale, projections): copied, shapes must agree.
A 2-D tensor with no destination, or a 3-D tensor with no source (other than the time kernels and the
classifier), is an error: nothing is dropped or left at init silently.

What it preserves: on a temporally constant clip, the 3-D model computes the 2-D model on the frame at
every time step, exactly, if the time kernels are unit impulses and the stem is normalized
(``normalize_stem=True``): each S4ND-3D kernel is then δ(t) x the 2-D kernel, and every other layer
acts per frame or per channel. With the reference's settings (stem not normalized, a learned SSM time
kernel) this holds only approximately; fine-tuning starts from there.
"""
import re
from typing import Dict, Mapping

import torch.nn as nn
from torch import Tensor

from s4nd_timm.layers import S4ND

__all__ = ['inflate_2d_to_3d']

_CLASSIFIER = ('head.fc.weight', 'head.fc.bias')


def inflate_2d_to_3d(
        state_dict: Mapping[str, Tensor], model: nn.Module, normalize_stem: bool = False) -> Dict[str, Tensor]:
    """Build a state dict for a 3-D S4NDConvNeXt from the state dict of the matching 2-D one.

    Args:
        state_dict: 2-D model weights (e.g. ``s4nd_convnext_tiny``), same stem and downsample types.
        model: the 3-D model (e.g. ``s4nd_convnext_tiny_3d``); its own time kernels and classifier are used.
        normalize_stem: divide the inflated stem conv by its time patch (I3D) instead of repeating as is.
    Returns:
        A full state dict for ``model``: ``model.load_state_dict(inflate_2d_to_3d(sd2d, model))``.
    Raises:
        ValueError: the 2-D weights do not fit the 3-D model (names or shapes), with the offending keys.
    """
    if getattr(model, 'ndim', None) != 3:
        raise ValueError("model must be a 3-D S4NDConvNeXt (e.g. timm.create_model('s4nd_convnext_tiny_3d')); "
                         f"got {type(model).__name__} with ndim={getattr(model, 'ndim', None)}")
    target = model.state_dict()
    s4nd_names = [name for name, m in model.named_modules() if isinstance(m, S4ND)]
    kernel_key = re.compile(r'^(?P<mod>.+)\.kernel\.(?P<axis>\d+)\.(?P<rest>.+)$')
    out, unplaced, mismatched = {}, [], []
    for key, value in state_dict.items():
        if key in _CLASSIFIER:
            continue
        dest = key
        match = kernel_key.match(key)
        if match and match['mod'] in s4nd_names:
            dest = f"{match['mod']}.kernel.{int(match['axis']) + 1}.{match['rest']}"
        if dest not in target:
            unplaced.append(key)
            continue
        want = target[dest]
        if value.dim() == 4 and want.dim() == 5 and value.shape == want.shape[:2] + want.shape[3:]:
            kt = want.shape[2]
            value = value.unsqueeze(2).repeat(1, 1, kt, 1, 1)
            if normalize_stem and dest == 'stem.conv.weight':
                value = value / kt
        if value.shape != want.shape:
            mismatched.append(f"{key} {tuple(value.shape)} -> {dest} {tuple(want.shape)}")
            continue
        out[dest] = value.to(want.dtype)
    if unplaced or mismatched:
        raise ValueError(
            "2-D weights do not fit the 3-D model; build it with the 2-D model's stem_type, downsample_type, "
            f"depths and dims. No destination: {unplaced[:5]}{' ...' if len(unplaced) > 5 else ''}; "
            f"shape mismatch: {mismatched[:5]}{' ...' if len(mismatched) > 5 else ''}")
    time_kernels = tuple(f'{name}.kernel.0.' for name in s4nd_names)
    missing = [k for k in target if k not in out and not k.startswith(time_kernels) and k not in _CLASSIFIER]
    if missing:
        raise ValueError(f"3-D model tensors with no 2-D source: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for key in target:
        out.setdefault(key, target[key])
    return out
