"""Reference (state-spaces/s4) state dicts -> this package's layout: what every family's ``checkpoint_filter_fn`` shares.

The reference layout and the key map are docs/design.md §8. Each family keeps its own rules next to its model
(``REFERENCE_RULES`` in ``s4nd_convnext.py``, ``s4nd_vit.py``, ``s4nd_iso.py``); here are the S4ND layer's tensor
names (current and paper-era v3), the rule engine, and the step that fits renamed tensors to a built model. Both
``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...))`` / ``checkpoint_path=...`` (through
the filter) and ``s4nd-convert`` (``s4nd_timm.convert``) go through these functions, so they load the same weights.
"""
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch.nn as nn
from torch import Tensor

__all__ = [
    'ConversionError', 'ReferenceKeys', 'Rule', 'S4ND_LAYER', 'drop', 'strip_lightning', 'is_reference',
    'rename_reference', 'fit_reference', 'load_reference', 'filter_reference']

_KERNEL_NAMES = ('inv_dt', 'A_real', 'A_imag', 'B', 'C', 'P', 'l_kernel')
# keys only a reference state dict has, in every family: Lightning's prefix, v3 kernels, the GLU projection's '.0.'
_REFERENCE_ANY = r'^model\.|\.kernel\.\d+\.kernel\.|\.output_linear\.0\.'
S4ND_LAYER = 's4nd'  # a rule's result ('s4nd', our layer prefix): the rest of the key is an S4ND tensor name
_DROP = 'drop'

RuleResult = Union[None, str, Tuple[str, str]]
Rule = Tuple[str, Callable[[re.Match], RuleResult]]


def drop(why: str) -> Tuple[str, str]:
    """A rule's result for a reference tensor with no place here (reported with ``why``)."""
    return _DROP, why


class ConversionError(ValueError):
    """A reference checkpoint cannot be loaded as asked; the message lists what does not match and what to do."""


@dataclass
class ReferenceKeys:
    """Reference tensors under this package's names, and every key that did not map cleanly."""
    tensors: Dict[str, Tensor] = field(default_factory=dict)  # our key -> tensor
    origin: Dict[str, str] = field(default_factory=dict)  # our key -> checkpoint key
    layout: str = 'head'  # 'head' (current kernel names) or 'v3' (paper era)
    dropped: List[Tuple[str, str]] = field(default_factory=list)  # (checkpoint key, why)
    unmatched: List[Tuple[str, str]] = field(default_factory=list)  # (checkpoint key, why)
    missing: List[str] = field(default_factory=list)  # model keys without a source
    mismatched: List[str] = field(default_factory=list)  # 'src (shape) -> dest expects (shape)'
    notes: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unmatched or self.mismatched)

    def problems(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"missing: {len(self.missing)} model tensor(s) with no source in the checkpoint:")
            lines += [f"    {k}" for k in self.missing]
        if self.unmatched:
            lines.append(f"unmatched: {len(self.unmatched)} checkpoint tensor(s) with no place in the model:")
            lines += [f"    {k}{f'  ({why})' if why else ''}" for k, why in self.unmatched]
        if self.mismatched:
            lines.append(f"wrong shape: {len(self.mismatched)} tensor(s):")
            lines += [f"    {m}" for m in self.mismatched]
        return '\n'.join(lines)


def strip_lightning(key: str) -> str:
    """Reference name without Lightning's ``model.`` prefix (the backbone's attribute in the LightningModule)."""
    return key[len('model.'):] if key.startswith('model.') else key


def is_reference(state_dict: Mapping[str, Tensor], family_pattern: str) -> bool:
    """True if any key is in the reference layout: Lightning's prefix, v3 or GLU-projection S4ND names, or a name
    of ``family_pattern`` (a regex of names only the family's reference model has)."""
    pattern = re.compile(f'{_REFERENCE_ANY}|{family_pattern}')
    return any(pattern.search(k) for k in state_dict)


def _s4nd_inner(inner: str, t: Tensor) -> Optional[Tuple[str, Tensor, bool]]:
    """Reference S4ND tensor name (relative to the layer) -> (our name, tensor, is_v3), or None if unknown."""
    if inner == 'D':
        return 'D', t, False
    m = re.fullmatch(r'output_linear(?:\.0)?\.(weight|bias)', inner)
    if m:
        return f'output_linear.{m[1]}', t, False
    m = re.fullmatch(r'kernel\.(\d+)\.(\w+)', inner)
    if m and m[2] in _KERNEL_NAMES:
        return inner, (t.reshape(()).long() if m[2] == 'l_kernel' else t), False
    m = re.fullmatch(r'kernel\.(\d+)\.kernel\.(\w+)', inner)
    if not m:
        return None
    axis, name = m[1], m[2]
    if name == 'log_dt':
        return f'kernel.{axis}.inv_dt', (t.unsqueeze(-1) if t.dim() == 1 else t), True
    if name in ('inv_w_real', 'log_w_real', 'inv_A_real'):
        return f'kernel.{axis}.A_real', t, True
    if name in ('w_imag', 'A_imag'):
        return f'kernel.{axis}.A_imag', -t, True
    if name == 'L':
        return f'kernel.{axis}.l_kernel', t.reshape(()).long(), True
    if name == 'B':
        return f'kernel.{axis}.B', (t.unsqueeze(0) if t.dim() == 3 else t), True
    if name in ('C', 'P'):
        return f'kernel.{axis}.{name}', t, True
    return None


def rename_reference(state_dict: Mapping[str, Tensor], rules: Sequence[Rule]) -> ReferenceKeys:
    """Rename reference tensors with a family's rules (no model needed; docs/design.md §8).

    Args:
        state_dict: reference tensors, Lightning's ``model.`` prefix optional.
        rules: (regex matched against the whole key without the prefix, fn(match) -> our key | ('s4nd', our layer
            prefix) | ``drop(why)`` | None for no place), first match wins.
    Returns:
        ``ReferenceKeys`` with the renamed tensors, their origins, the dropped and the unmatched keys.
    """
    compiled = [(re.compile(p), fn) for p, fn in rules]
    keys = ReferenceKeys()
    for key, t in state_dict.items():
        dest: RuleResult = None
        for pattern, fn in compiled:
            m = pattern.fullmatch(strip_lightning(key))
            if m is None:
                continue
            dest = fn(m)
            if isinstance(dest, tuple) and dest[0] == S4ND_LAYER:
                inner = _s4nd_inner(m['inner'], t)
                dest = None if inner is None else dest[1] + inner[0]
                if inner is not None:
                    t = inner[1]
                    keys.layout = 'v3' if inner[2] else keys.layout
            break
        if isinstance(dest, tuple):
            keys.dropped.append((key, dest[1]))
        elif dest is None:
            keys.unmatched.append((key, 'no rule for this name'))
        elif dest in keys.tensors:
            keys.unmatched.append((key, f'maps to {dest}, already filled by {keys.origin[dest]}'))
        else:
            keys.tensors[dest], keys.origin[dest] = t, key
    return keys


def _tile_ssm_sets(key: str, t: Tensor, want: Tensor, notes: List[str]) -> Tensor:
    """(A, B, P) stored for S sets where the model keeps S' = k S (e.g. the 3-D time kernels: one set per
    feature): feature h uses set h mod S, so tiling the S sets k times is the same system, exactly."""
    name = key.rsplit('.', 1)[-1]
    axis = {'A_real': 0, 'A_imag': 0, 'B': 1, 'P': 1}.get(name)
    if axis is None or t.dim() != want.dim() or t.shape == want.shape:
        return t
    s, s_new = t.shape[axis], want.shape[axis]
    others = [i for i in range(t.dim()) if i != axis]
    if s_new <= s or s_new % s or any(t.shape[i] != want.shape[i] for i in others):
        return t
    reps = [1] * t.dim()
    reps[axis] = s_new // s
    note = f"n_ssm {s} -> {s_new} (the model keeps one (A, B, P) set per feature there): identical sets tiled"
    if note not in notes:
        notes.append(note)
    return t.repeat(*reps)


def _check_finite(keys: ReferenceKeys) -> None:
    bad = [f"{keys.origin[k]} ({int((~t.isfinite()).sum())} of {t.numel()})"
           for k, t in keys.tensors.items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise ConversionError(
            f"{len(bad)} checkpoint tensor(s) hold NaN or Inf values (non-finite of all): {', '.join(bad[:10])}"
            f"{' ...' if len(bad) > 10 else ''}. A model built from them computes NaN; nothing was loaded. If this "
            f"is intended, convert with s4nd-convert --allow-nonfinite.")


def fit_reference(
        keys: ReferenceKeys, model: nn.Module, raw_c: bool = False, allow_nonfinite: bool = False,
        adapt_classifier: bool = False,
) -> Dict[str, Tensor]:
    """Fit renamed reference tensors to a built model; every problem is recorded in ``keys``.

    Args:
        keys: from a family's ``reference_keys``.
        model: the model to load.
        raw_c: accept DPLR kernels with ``l_kernel = 0`` (a reference module never run forward: C is the raw C, and
            the layer builds C̃ for the model's own base size when loading, docs/design.md §1.2). Only when that
            base size is known to be the checkpoint's (s4nd-convert requires ``img_size`` then).
        allow_nonfinite: load NaN / Inf values instead of refusing.
        adapt_classifier: leave out a classifier of another shape (timm's pretrained loading then keeps the
            model's own, as for any pretrained weights with another class count), instead of reporting it.
    Returns:
        The tensors to load (``model.load_state_dict(..., strict=False)``); ``keys.missing`` / ``.unmatched`` /
        ``.mismatched`` say what is not covered.
    Raises:
        ConversionError: non-finite values, a DPLR checkpoint for diagonal kernels, or raw C without ``raw_c``.
    """
    if not allow_nonfinite:
        _check_finite(keys)
    target = model.state_dict()
    into_diag = sorted(k[:-2] for k in keys.tensors if re.search(r'\.kernel\.\d+\.P$', k)
                       and k not in target and k[:-2] + '.C' in target)
    if into_diag:
        raise ConversionError(
            f"{keys.origin[into_diag[0] + '.P']} is a DPLR (S4) kernel, but the model was built with diagonal kernels "
            f"(s4nd_mode='diag') at {into_diag[0]}: a DPLR checkpoint stores "
            f"C̃ = C(I - Ā^L) in C, which a diagonal kernel cannot use (docs/design.md §8). Build it with "
            f"s4nd_mode='dplr' (s4nd-convert: --model-kwargs s4nd_mode=dplr).")
    raw = [keys.origin[k] for k, t in keys.tensors.items() if k.endswith('.l_kernel') and int(t) == 0]
    if raw and not raw_c:
        raise ConversionError(
            f"{raw[0]} = 0{f' (and {len(raw) - 1} more)' if len(raw) > 1 else ''}: this reference checkpoint never "
            f"ran a forward, so its DPLR C is the raw C and the size it was trained at is not in the file "
            f"(docs/design.md §8). Convert it with the base size given: s4nd-convert CKPT OUT_DIR --model-kwargs "
            f"img_size=N.")
    classifier = (getattr(model, 'pretrained_cfg', None) or {}).get('classifier') if adapt_classifier else None
    load = {}
    for key, t in keys.tensors.items():
        src, want = keys.origin[key], target.get(key)
        if classifier and key.rsplit('.', 1)[0] == classifier and (want is None or want.shape != t.shape):
            keys.dropped.append((src, f"classifier of another shape than {classifier} (the model's own is kept)"))
            continue
        if want is None:
            keys.unmatched.append((src, f'-> {key}, not a tensor of the model'))
            continue
        t = _tile_ssm_sets(key, t, want, keys.notes)
        if tuple(t.shape) != tuple(want.shape):
            keys.mismatched.append(f"{src} {tuple(t.shape)} -> {key} expects {tuple(want.shape)}")
            continue
        if key.endswith('.l_kernel') and int(t) not in (0, int(want)):
            keys.mismatched.append(
                f"{src} = {int(t)} -> {key}: this model's kernel is built for {int(want)} taps (l_max from img_size / "
                f"num_frames / stem_l_max); build the model with the checkpoint's size")
            continue
        load[key] = t.to(want.dtype)
    dropped_classifier = classifier and any(w.startswith('classifier') for _, w in keys.dropped)
    keys.missing = [k for k in target if k not in keys.tensors
                    and not (dropped_classifier and k.rsplit('.', 1)[0] == classifier)]
    return load


def load_reference(keys: ReferenceKeys, model: nn.Module) -> Dict[str, Tensor]:
    """The reference branch of a ``checkpoint_filter_fn``: the state dict for ``model``, or a ConversionError
    listing every tensor that does not fit (the model must be built with the checkpoint's arguments)."""
    load = fit_reference(keys, model, adapt_classifier=True)
    if not keys.ok:
        raise ConversionError(
            f"this state-spaces/s4 reference checkpoint does not fit {type(model).__name__} as built:\n"
            f"{keys.problems()}\nBuild the model with the checkpoint's arguments, or let s4nd-convert read them from "
            f"the checkpoint: s4nd-convert CKPT OUT_DIR, then timm.create_model('local-dir:OUT_DIR', pretrained=True).")
    return load


def filter_reference(
        state_dict: Mapping[str, Tensor], model: nn.Module, reference_keys: Callable[..., ReferenceKeys],
        family_pattern: str) -> Mapping[str, Tensor]:
    """What every family's ``checkpoint_filter_fn`` does first: a reference state dict (``is_reference``) renamed by
    the family's ``reference_keys`` and fitted to ``model`` (``load_reference``); any other (our own checkpoints)
    unchanged, taken out of a ``state_dict`` / ``model`` entry if it is wrapped in one."""
    for key in ('state_dict', 'model'):
        if isinstance(state_dict.get(key), Mapping):
            state_dict = state_dict[key]
            break
    if is_reference(state_dict, family_pattern):
        return load_reference(reference_keys(state_dict), model)
    return state_dict

