"""Optimizer parameter groups honouring the S4ND ``_optim`` hints, handed to timm's ``create_optimizer_v2``.

As the S4ND reference's ``setup_optimizer`` (state-spaces/s4 ``train.py``), which gives every tensor
carrying ``p._optim`` its own group with those hyperparameters. Here (docs/design.md §3 "Optimizer hooks"): each S4ND
SSM tensor carries ``p._optim = {'lr': ssm_lr, 'weight_decay': 0.}`` or ``{'weight_decay': 0.}``; tensors
with equal hints share one group holding those values (an ``lr`` there is absolute, the global ``--lr``
does not scale it; timm's schedulers then scale every group's own initial lr by the same schedule). All
other parameters follow timm's rule: no weight decay for biases, 1-D tensors and the model's
``no_weight_decay()`` names, ``weight_decay`` for the rest.
"""
from typing import Any, Dict, List, Optional, Sequence

import torch.nn as nn

__all__ = ['param_groups', 'create_optimizer']


def param_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """Parameter groups: timm's decay / no-decay split plus one group per distinct ``_optim`` hint.

    Returns:
        list of dicts with 'params' and 'weight_decay' (and 'lr' for hints that set one), plus a 'name'
        ('decay', 'no_decay', 'ssm_lr=..._wd=...') for logging; empty groups are left out.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, 'no_weight_decay') else set()
    decay, no_decay, hinted = [], [], {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hint = getattr(p, '_optim', None)
        if hint is not None:
            if not isinstance(hint, dict) or not set(hint) <= {'lr', 'weight_decay'}:
                raise ValueError(f"parameter {name!r} has an _optim hint {hint!r}; expected a dict with keys "
                                 "'lr' and/or 'weight_decay'")
            hinted.setdefault(tuple(sorted(hint.items())), []).append(p)
        elif p.ndim <= 1 or name.endswith('.bias') or name in skip:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{'name': 'decay', 'params': decay, 'weight_decay': weight_decay},
              {'name': 'no_decay', 'params': no_decay, 'weight_decay': 0.0}]
    for key, params in hinted.items():
        hint = dict(key)
        group = {'name': 'ssm_' + '_'.join(f'{k}={v:g}' for k, v in key), 'params': params,
                 'weight_decay': hint.get('weight_decay', weight_decay)}
        if 'lr' in hint:
            group['lr'] = hint['lr']
        groups.append(group)
    return [g for g in groups if g['params']]


def create_optimizer(model: nn.Module, *, opt: str = 'adamw', lr: float = 1e-3, weight_decay: float = 0.05,
                     momentum: float = 0.9, eps: Optional[float] = None, betas: Optional[Sequence[float]] = None):
    """timm ``create_optimizer_v2`` over ``param_groups(model, weight_decay)``; ``eps`` / ``betas`` are passed
    only when given (else the optimizer's defaults)."""
    from timm.optim import create_optimizer_v2
    kwargs = {}
    if eps is not None:
        kwargs['eps'] = eps
    if betas is not None:
        kwargs['betas'] = tuple(betas)
    return create_optimizer_v2(param_groups(model, weight_decay), opt=opt, lr=lr, weight_decay=weight_decay,
                               momentum=momentum, **kwargs)
